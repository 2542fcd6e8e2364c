"""A file with problems is refused as a whole, every problem listed with its path; nothing applied."""

from __future__ import annotations

import pytest

from factory.models import ChangeSet, GpuType, Tenant
from platform_config import applying, loading, planning

from .conftest import declare

pytestmark = pytest.mark.django_db

BAD = """
gpu_types:
- {slug: h100, name: H100}
clusters:
- slug: ray
  name: Ray
  kind: ray
  connection: {address: "http://ray:8265", token: inline-token}
  pools:
  - {gpu_type: b200, capacity: 4}
tenants:
- slug: org
  name: Org
  quotas:
    h100: {nominal: 8}
- slug: team
  name: Team
  parent: org
  quotas:
    h100: {nominal: 12}
- slug: other
  name: Other
  parent: nowhere
  members:
  - {user: ghost}
- slug: typo
  name: Typo
  quotas:
    h100: {nominal: "8", borowing_limit: 2}
rate_cards:
- {gpu_type: h100, currency: EUR, price_per_gpu_hour: 2, effective_from: 2026-01-01}
- {gpu_type: h100, currency: EUR, price_per_gpu_hour: 3, effective_from: 2026-06-01}
"""
RAY = "clusters:\n- {slug: c, name: C, kind: ray, connection: {address: 'http://x', token: "
CARD = "rate_cards:\n- {gpu_type: h100, currency: EUR, "


def problems(text: str) -> dict[str, str]:
    with pytest.raises(loading.Invalid) as refused:
        planning.make_plan(declare(text))
    return {p.path: p.message for p in refused.value.problems}


def test_structural_problems_are_all_listed_with_their_paths():
    found = problems(BAD)
    assert found == {
        "tenants[3].quotas.h100.nominal": "Input should be a valid integer.",
        "tenants[3].quotas.h100.borowing_limit": "Unknown key.",
    }


def test_every_problem_of_a_well_formed_file_is_listed_with_its_path(db):
    found = problems(BAD.replace('nominal: "8", borowing_limit: 2', "nominal: 8"))
    assert found["clusters[0].connection.token"].startswith("A secret is never written inline")
    assert found["clusters[0].pools[0].gpu_type"] == "No GPU type 'b200' is declared or exists."
    assert found["tenants[1].quotas.h100.nominal"] == (
        "org has 8 h100 GPUs; the tenants under it, team among them, would have 12 together: "
        "a department's nominal quota bounds the sum of its projects'."
    )
    assert found["tenants[2].parent"] == "No tenant 'nowhere' is declared or exists."
    assert found["tenants[2].members[0].user"] == "No user 'ghost' exists."
    assert found["rate_cards[1].effective_from"] == (
        "Overlaps the rate card from 2026-01-01 for the same GPU type and cluster."
    )
    assert len(found) == 6


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("tenants: {slug: x}", "tenants", "Input should be a valid list."),
        ("colour: blue", "colour", "Unknown key."),
        ("version: 2", "version", "Input should be 1."),
        ("gpu_types:\n- {slug: H100, name: x}", "gpu_types[0].slug", "String should match pattern"),
        (
            "tenants:\n- {slug: a, name: A}\n- {slug: a, name: B}",
            "tenants[1]",
            "tenant a is already declared",
        ),
        ("tenants:\n- {slug: a, name: A, regions: [eu, '']}", "tenants[0].regions", "Give a list of region"),
        (
            "tenants:\n- {slug: a, name: A, quotas: {h100: {nominal: 1, lending_limit: 2}}}\n"
            "gpu_types:\n- {slug: h100, name: H}",
            "tenants[0].quotas.h100.lending_limit",
            "cannot exceed",
        ),
        (
            "tenants:\n- {slug: a, name: A, budget: {amount_per_month: 5}}",
            "tenants[0].budget.currency",
            "three-letter currency",
        ),
        (
            RAY + "{env: NOPE_X}}}",
            "clusters[0].connection.token",
            "NOPE_X is not set",
        ),
        (
            RAY + "{keep: true}}}",
            "clusters[0].connection.token",
            "holds no value to keep",
        ),
        (
            RAY + "{}}}",
            "clusters[0].connection.token",
            "exactly one of env, file or keep",
        ),
        (
            "clusters:\n- {slug: c, name: C, kind: slurm, connection: {partition: x}}",
            "clusters[0].connection",
            "Unknown connection setting(s): partition.",
        ),
        ("clusters:\n- {slug: c, name: C, kind: mainframe}", "clusters[0].kind", "Input should be"),
        (
            "tenants:\n- {slug: a, name: A, parent: b}\n- {slug: b, name: B, parent: a}",
            "tenants[0].parent",
            "cycle",
        ),
        (
            CARD + "price_per_gpu_hour: x, effective_from: 2026-01-01}",
            "rate_cards[0].price_per_gpu_hour",
            "Give a decimal number",
        ),
        (
            CARD + "price_per_gpu_hour: 1, effective_from: 2026-13-01}",
            "rate_cards[0].effective_from",
            "Give a date",
        ),
        ("tenants:\n- {slug: a, name: A}\n  slug: b", "line 3", "Not valid YAML"),
        ("tenants:\n- slug: a\n  slug: b\n  name: A", "line 3", "appears twice"),
    ],
)
def test_one_problem(text, path, message):
    found = problems(text)
    assert path in found, found
    assert message in found[path]


def test_a_refused_file_changes_nothing(platform_admin):
    GpuType.objects.create(slug="h100", name="H100")
    declaration = declare(BAD.replace('nominal: "8", borowing_limit: 2', "nominal: 8"))
    with pytest.raises(loading.Invalid):
        applying.apply(declaration, author=platform_admin)
    assert not Tenant.objects.exists()
    assert not ChangeSet.objects.exists()


def test_files_of_a_directory_are_named_in_problems(platform_file):
    good = platform_file("gpu_types:\n- {slug: h100, name: H100}\n", "a.yaml")
    platform_file("tenants:\n- {slug: a, name: A, quotas: {h200: {nominal: 1}}}\n", "b.yaml")
    with pytest.raises(loading.Invalid) as refused:
        planning.make_plan(loading.load(good.parent))
    assert [str(p) for p in refused.value.problems] == [
        "b.yaml: tenants[0].quotas.h200: No GPU type 'h200' is declared or exists."
    ]
