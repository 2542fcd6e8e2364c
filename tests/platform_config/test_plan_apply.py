from __future__ import annotations

from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.core.management.base import CommandError

from billing.models import GridIntensity, RateCard
from factory.models import ChangeSet, Cluster, Identity, Membership, Pool, Tenant
from platform_config import applying, loading, planning
from quotas.models import Budget, Quota
from tests.support import trail, trail_changes

from .conftest import declare

pytestmark = pytest.mark.django_db

PLATFORM = """
gpu_types:
- {slug: h100, name: NVIDIA H100, memory_gb: 80, board_power_watts: 700}
- {slug: a100, name: NVIDIA A100, board_power_watts: 400}
clusters:
- slug: eu-slurm
  name: EU Slurm
  kind: slurm
  region: eu
  pue: "1.3"
  connection: {default_partition: gpu, account_prefix: aif-}
  pools:
  - {gpu_type: h100, capacity: 16, partition: gpu}
  - {gpu_type: a100, capacity: 8, partition: gpu-old}
- slug: us-ray
  name: US Ray
  kind: ray
  region: us
  connection:
    address: http://ray-head:8265
    token: {env: TEST_RAY_TOKEN}
  pools:
  - {gpu_type: h100, capacity: 4}
tenants:
- slug: research
  name: Research
  cost_center: CC-1
  members:
  - {user: researcher, role: admin}
  quotas:
    h100: {nominal: 8, borrowing_limit: 4}
    a100: {nominal: 4}
  budget: {gpu_hours_per_month: 1000, amount_per_month: "2500.00", currency: EUR, max_priority: 10}
- slug: vision
  name: Vision
  parent: research
  regions: [eu]
  members:
  - {user: teammate}
  quotas:
    h100: {nominal: 4, max_gpus_per_job: 2}
identities:
- {user: researcher, posix_username: aif-alice}
rate_cards:
- {gpu_type: h100, currency: EUR, price_per_gpu_hour: "2.50", effective_from: 2026-01-01,
   effective_until: 2026-07-01}
- {gpu_type: h100, currency: EUR, price_per_gpu_hour: 2.75, effective_from: 2026-07-01}
- {gpu_type: h100, cluster: us-ray, currency: USD, price_per_gpu_hour: "3.10", effective_from: 2026-01-01}
grid_intensities:
- {region: eu, grams_co2e_per_kwh: 250}
"""


@pytest.fixture
def users(django_user_model):
    from tests.conftest import make_user

    return {name: make_user(django_user_model, name) for name in ("researcher", "teammate")}


@pytest.fixture(autouse=True)
def ray_token(monkeypatch):
    monkeypatch.setenv("TEST_RAY_TOKEN", "s3cret-token")


def test_plan_of_a_fresh_file_creates_everything_field_by_field_and_changes_nothing(
    users, platform_file, run_platform
):
    status, out, _ = run_platform("plan", platform_file(PLATFORM))
    assert status == 2
    assert "+ tenant vision\n    name: 'Vision'\n    parent: 'research'" in out
    assert "+ quota research/h100\n    nominal: 8\n    borrowing_limit: 4" in out
    assert "+ pool eu-slurm/a100\n    capacity: 8\n    partition: 'gpu-old'" in out
    assert "connection.token: (secret)" in out
    assert "s3cret-token" not in out
    assert "Plan: 20 to create, 0 to change, 0 to delete (plan" in out
    assert not Tenant.objects.exists() and not Cluster.objects.exists()


def test_apply_creates_it_all_as_one_change_set_with_its_author(users, platform_file, run_platform):
    status, out, _ = run_platform("apply", platform_file(PLATFORM), "--author", "researcher")
    assert status == 0, out
    change_set = ChangeSet.objects.get()
    assert change_set.author == users["researcher"]
    assert change_set.summary == {"create": 20, "change": 0, "delete": 0}
    assert "s3cret-token" not in str(change_set.changes)
    vision = Tenant.objects.get(slug="vision")
    assert vision.parent.slug == "research" and vision.regions == ["eu"]
    assert Quota.objects.get(tenant=vision, gpu_type__slug="h100").max_gpus_per_job == 2
    assert Budget.objects.get(tenant__slug="research").amount_per_month == Decimal("2500.00")
    assert Membership.objects.get(tenant__slug="research").role == "admin"
    assert Identity.objects.get(user=users["researcher"]).posix_username == "aif-alice"
    ray = Cluster.objects.get(slug="us-ray")
    assert ray.connection == {"address": "http://ray-head:8265", "token": "s3cret-token"}
    assert Pool.objects.get(cluster__slug="eu-slurm", gpu_type__slug="a100").partition == "gpu-old"
    assert RateCard.objects.filter(gpu_type__slug="h100").count() == 3
    assert GridIntensity.objects.get(region="eu").grams_co2e_per_kwh == 250
    # Everything it made is in the audit trail, as the author's change in this change set.
    entries = LogEntry.objects.filter(additional_data__change_set=change_set.pk)
    assert entries.count() == 20
    assert {(e.actor, e.additional_data["via"]) for e in entries} == {(users["researcher"], "platform file")}
    quota = Quota.objects.get(tenant=vision, gpu_type__slug="h100")
    assert trail(Quota, object_id=quota.pk).get().changes["nominal"] == [None, 4]
    assert ("amount_per_month", None, "2500.00") in trail_changes(Budget)
    assert ("connection.token", None, "(secret)") in trail_changes(Cluster)
    assert "s3cret-token" not in str(list(entries.values_list("changes", flat=True)))


def test_applying_the_same_file_again_changes_nothing(
    users, platform_file, run_platform, django_assert_max_num_queries
):
    path = platform_file(PLATFORM)
    run_platform("apply", path)
    before = {t.slug: t.pk for t in Tenant.objects.all()}
    status, out, _ = run_platform("plan", path)
    assert status == 0 and "No changes" in out
    with django_assert_max_num_queries(20) as queries:
        plan, change_set = applying.apply(loading.load(path))
    assert change_set is None and not plan.has_changes
    assert not [q for q in queries.captured_queries if q["sql"].startswith(("INSERT", "UPDATE", "DELETE"))]
    assert ChangeSet.objects.count() == 1
    assert {t.slug: t.pk for t in Tenant.objects.all()} == before


def test_a_change_is_planned_and_applied_field_by_field(users, platform_file, run_platform):
    run_platform("apply", platform_file(PLATFORM))
    changed = (
        PLATFORM.replace("h100: {nominal: 8, borrowing_limit: 4}", "h100: {nominal: 10}")
        .replace("capacity: 16", "capacity: 32")
        .replace("name: Vision", "name: Vision Lab")
        .replace("  parent: research\n", "")
    )
    status, out, _ = run_platform("plan", platform_file(changed))
    assert status == 2
    assert "~ quota research/h100\n    nominal: 8 → 10\n    borrowing_limit: 4 → null" in out
    assert "~ pool eu-slurm/h100\n    capacity: 16 → 32" in out
    assert "~ tenant vision\n    name: 'Vision' → 'Vision Lab'\n    parent: 'research' → null" in out
    assert "Plan: 0 to create, 3 to change, 0 to delete (plan" in out
    run_platform("apply", platform_file(changed))
    quota = Quota.objects.get(tenant__slug="research", gpu_type__slug="h100")
    assert (quota.nominal, quota.borrowing_limit) == (10, None)
    assert Tenant.objects.get(slug="vision").parent is None
    latest = ChangeSet.objects.first()
    assert latest.summary == {"create": 0, "change": 3, "delete": 0}
    assert ("borrowing_limit", 4, None) in trail_changes(Quota, additional_data__change_set=latest.pk)
    assert quota.updated_at >= latest.applied_at


def test_a_changed_secret_is_planned_without_showing_it(users, platform_file, run_platform, monkeypatch):
    path = platform_file(PLATFORM)
    run_platform("apply", path)
    monkeypatch.setenv("TEST_RAY_TOKEN", "rotated-token")
    status, out, _ = run_platform("plan", path)
    assert status == 2
    assert "~ cluster us-ray\n    connection.token: (secret) → (secret)" in out
    assert "rotated" not in out and "s3cret" not in out


def test_secrets_come_from_files_or_are_kept(users, platform_file, run_platform, tmp_path):
    run_platform("apply", platform_file(PLATFORM))
    (tmp_path / "token").write_text("from-a-file\n")
    from_file = PLATFORM.replace("{env: TEST_RAY_TOKEN}", f"{{file: {tmp_path / 'token'}}}")
    run_platform("apply", platform_file(from_file))
    assert Cluster.objects.get(slug="us-ray").connection["token"] == "from-a-file"
    kept = PLATFORM.replace("{env: TEST_RAY_TOKEN}", "{keep: true}")
    status, out, _ = run_platform("plan", platform_file(kept))
    assert status == 0, out


def test_export_then_plan_shows_no_changes(users, platform_file, run_platform, tmp_path):
    run_platform("apply", platform_file(PLATFORM))
    exported = tmp_path / "exported.yaml"
    run_platform("export", "--output", exported)
    text = exported.read_text()
    assert "s3cret-token" not in text
    assert "token:\n      keep: true" in text
    status, out, _ = run_platform("plan", exported)
    assert (status, out.strip()) == (0, "No changes: the portal matches the file.")


def test_a_directory_of_files_is_one_declaration(users, platform_file, run_platform, tmp_path):
    head, tenants = PLATFORM.split("tenants:\n")
    tenants, tail = tenants.split("identities:\n")
    directory = tmp_path / "platform"
    directory.mkdir()
    (directory / "10-infra.yaml").write_text(head + "identities:\n" + tail)
    (directory / "20-tenants.yaml").write_text("tenants:\n" + tenants)
    status, out, _ = run_platform("plan", directory)
    assert status == 2 and "Plan: 20 to create" in out


def test_without_prune_what_the_file_leaves_out_stays(users, platform_file, run_platform):
    run_platform("apply", platform_file(PLATFORM))
    status, out, _ = run_platform("plan", platform_file("tenants:\n- {slug: extra, name: Extra}\n"))
    assert status == 2
    assert "Plan: 1 to create, 0 to change, 0 to delete (plan" in out


def test_prune_deletes_what_the_file_leaves_out(users, platform_file, run_platform):
    run_platform("apply", platform_file(PLATFORM))
    smaller = PLATFORM.replace("  - {gpu_type: a100, capacity: 8, partition: gpu-old}\n", "")
    smaller = smaller.replace("    a100: {nominal: 4}\n", "")
    status, out, _ = run_platform("plan", platform_file("prune: true\n" + smaller))
    assert status == 2
    assert "- pool eu-slurm/a100" in out and "- quota research/a100" in out
    run_platform("apply", platform_file("prune: true\n" + smaller))
    assert not Pool.objects.filter(gpu_type__slug="a100").exists()
    assert not Quota.objects.filter(gpu_type__slug="a100").exists()
    deleted = trail(Quota, action=LogEntry.Action.DELETE).get()
    assert deleted.object_repr.startswith("research/a100") and deleted.changes["nominal"] == [4, None]
    assert deleted.additional_data == {"via": "platform file", "change_set": ChangeSet.objects.first().pk}


def test_plan_json_lists_changes_with_keys(users):
    plan = planning.make_plan(declare(PLATFORM))
    data = plan.as_json()
    assert data["summary"] == {"create": 20, "change": 0, "delete": 0}
    quota = next(c for c in data["changes"] if c["kind"] == "quota" and c["key"] == "vision/h100")
    assert {"field": "max_gpus_per_job", "old": None, "new": 2} in quota["fields"]
    card = next(c for c in data["changes"] if c["key"] == "h100/*/2026-01-01")
    assert {"field": "price_per_gpu_hour", "old": None, "new": "2.50"} in card["fields"]


def test_a_refused_apply_says_every_problem_and_writes_nothing(users, platform_file):
    bad = PLATFORM.replace("nominal: 8", "nominal: eight").replace("name: Vision", "nmae: Vision")
    with pytest.raises(CommandError) as refused:
        from django.core.management import call_command

        call_command("platform", "apply", str(platform_file(bad)))
    assert "tenants[0].quotas.h100.nominal" in str(refused.value)
    assert "tenants[1].nmae: Unknown key." in str(refused.value)
    assert "tenants[1].name: Required." in str(refused.value)
    assert not Tenant.objects.exists() and not ChangeSet.objects.exists()


def test_apply_refuses_a_plan_other_than_the_one_reviewed(users, platform_file, run_platform):
    path = platform_file(PLATFORM)
    reviewed = planning.make_plan(loading.load(path)).digest
    Tenant.objects.create(slug="research", name="Made meanwhile")
    with pytest.raises(CommandError, match=f"not {reviewed}: the portal changed since"):
        from django.core.management import call_command

        call_command("platform", "apply", str(path), "--expect-plan", reviewed)
    assert not ChangeSet.objects.exists() and not Cluster.objects.exists()
    now = planning.make_plan(loading.load(path)).digest
    status, out, _ = run_platform("apply", path, "--expect-plan", now)
    assert status == 0 and f"(plan {now})" in out
    assert ChangeSet.objects.get().summary == {"create": 19, "change": 1, "delete": 0}


def test_the_readme_example_plans_cleanly(django_user_model, platform_file, run_platform, monkeypatch):
    from pathlib import Path

    from tests.conftest import make_user

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("## The platform as code")[1].split("```yaml\n")[1].split("```")[0]
    for name in ("alice", "bob"):
        make_user(django_user_model, name)
    monkeypatch.setenv("EU_RAY_TOKEN", "t")
    monkeypatch.setenv("EU_PROM_TOKEN", "p")
    status, out, _ = run_platform("plan", platform_file(example))
    assert status == 2 and "Plan: 17 to create, 0 to change, 0 to delete" in out
