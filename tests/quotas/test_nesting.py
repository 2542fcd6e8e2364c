"""A department's nominal GPUs bound the sum of its projects': in the quota form, the API, the
tenant tree and platform files; under concurrency too."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from factory.models import Tenant
from platform_config import loading, planning
from quotas import nesting
from quotas.editing import save_audited
from quotas.models import Quota
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def physics(db, h100):
    """physics (8 h100) → lattice (4), optics (2)."""
    physics = Tenant.objects.create(slug="physics", name="Physics")
    lattice = Tenant.objects.create(slug="lattice", name="Lattice", parent=physics)
    optics = Tenant.objects.create(slug="optics", name="Optics", parent=physics)
    Quota.objects.create(tenant=physics, gpu_type=h100, nominal=8)
    Quota.objects.create(tenant=lattice, gpu_type=h100, nominal=4)
    Quota.objects.create(tenant=optics, gpu_type=h100, nominal=2)
    return physics


def nominal(slug: str) -> int:
    return Quota.objects.get(tenant__slug=slug).nominal


def test_a_projects_quota_above_what_its_department_has_left_is_a_field_error_in_the_api(
    physics, platform_admin
):
    api = client_for(platform_admin)
    optics = Quota.objects.get(tenant__slug="optics")
    refused = api.patch(f"/api/v1/quotas/{optics.pk}/", {"nominal": 5}, format="json")
    assert refused.status_code == 400
    assert refused.json() == {
        "nominal": [
            "physics has 8 h100 GPUs; the tenants under it, optics among them, would have 9 together: "
            "a department's nominal quota bounds the sum of its projects'."
        ]
    }
    assert nominal("optics") == 2
    assert api.patch(f"/api/v1/quotas/{optics.pk}/", {"nominal": 4}, format="json").status_code == 200

    department = Quota.objects.get(tenant__slug="physics")
    lowered = api.patch(f"/api/v1/quotas/{department.pk}/", {"nominal": 7}, format="json")
    assert (
        lowered.status_code == 400 and "below the 8 that the tenants under it" in lowered.json()["nominal"][0]
    )
    assert nominal("physics") == 8

    Tenant.objects.create(slug="newcomer", name="N", parent=physics)
    created = api.post(
        "/api/v1/quotas/", {"tenant": "newcomer", "gpu_type": "h100", "nominal": 1}, format="json"
    )
    assert created.status_code == 400 and "nominal" in created.json()
    assert not Quota.objects.filter(tenant__slug="newcomer").exists()


def test_the_quota_form_says_so_on_the_field(client, platform_admin, physics, h100):
    client.force_login(platform_admin)
    newcomer = Tenant.objects.create(slug="newcomer", name="N", parent=physics)
    data = {"new-tenant": newcomer.pk, "new-gpu_type": h100.pk, "new-nominal": "3"}
    response = client.post("/quotas/", data)
    assert response.status_code == 400
    assert "the tenants under it, newcomer among them, would have 9 together" in response.content.decode()
    data["new-nominal"] = "2"
    assert client.post("/quotas/", data).status_code == 302


def test_a_tenant_without_a_quota_counts_its_projects_towards_the_next_one_above(physics, h100):
    group = Tenant.objects.create(slug="group", name="Group", parent=physics)  # no h100 quota of its own
    deep = Tenant.objects.create(slug="deep", name="Deep", parent=group)
    with pytest.raises(ValidationError, match="would have 9 together"):
        save_audited(Quota(tenant=deep, gpu_type=h100), {"nominal": 3}, None)
    save_audited(Quota(tenant=deep, gpu_type=h100), {"nominal": 2}, None)
    # The group takes a quota of its own: it must hold its project, and fit in the department.
    with pytest.raises(ValidationError, match="below the 2"):
        save_audited(Quota(tenant=group, gpu_type=h100), {"nominal": 1}, None)
    save_audited(Quota(tenant=group, gpu_type=h100), {"nominal": 2}, None)


def test_moving_a_project_into_a_department_that_cannot_hold_its_quota_is_refused(
    physics, h100, platform_admin
):
    chemistry = Tenant.objects.create(slug="chemistry", name="Chemistry")
    Quota.objects.create(tenant=chemistry, gpu_type=h100, nominal=1)
    api = client_for(platform_admin)
    refused = api.patch("/api/v1/tenants/optics/", {"parent": "chemistry"}, format="json")
    assert refused.status_code == 400
    assert "chemistry has 1 h100 GPUs; the tenants under it, optics among them" in refused.json()["parent"][0]
    assert Tenant.objects.get(slug="optics").parent == physics
    Quota.objects.filter(tenant=chemistry).update(nominal=2)
    assert api.patch("/api/v1/tenants/optics/", {"parent": "chemistry"}, format="json").status_code == 200


def test_an_overrun_the_data_already_has_does_not_block_other_changes(physics, h100):
    Quota.objects.filter(tenant__slug="physics").update(nominal=5)  # as an old row might be
    optics = Quota.objects.get(tenant__slug="optics")
    save_audited(optics, {"nominal": 1}, None)  # shrinks the overrun: fine
    with pytest.raises(ValidationError):
        save_audited(Quota.objects.get(pk=optics.pk), {"nominal": 3}, None)  # grows it


def test_platform_files_nest_quotas_the_same_way(db, h100):
    text = """
gpu_types:
- {slug: h100, name: H100}
tenants:
- {slug: uni, name: Uni, quotas: {h100: {nominal: 8}}}
- {slug: physics, name: Physics, parent: uni, quotas: {h100: {nominal: 6}}}
- {slug: chemistry, name: Chemistry, parent: uni, quotas: {h100: {nominal: 4}}}
"""
    with pytest.raises(loading.Invalid) as refused:
        planning.make_plan(loading.from_texts([("", text)]))
    found = {p.path: p.message for p in refused.value.problems}
    assert set(found) == {"tenants[1].quotas.h100.nominal", "tenants[2].quotas.h100.nominal"}
    assert found["tenants[2].quotas.h100.nominal"].startswith(
        "uni has 8 h100 GPUs; the tenants under it, chemistry among them, would have 10 together"
    )
    plan = planning.make_plan(loading.from_texts([("", text.replace("nominal: 4", "nominal: 2"))]))
    assert plan.summary()["create"] == 3 + 1 + 3 - 1  # tenants, GPU type (exists), quotas


@pytest.mark.django_db(transaction=True)
def test_two_projects_raised_at_once_cannot_together_outgrow_their_department(h100, monkeypatch):
    """Each raise fits alone (7 ≥ 4 + 2), not both (4 + 4 > 7). The first holds its
    transaction open after its check; the second waits for it, then sees it, and is refused."""
    assert connection.vendor == "postgresql"
    physics = Tenant.objects.create(slug="physics", name="Physics")
    Quota.objects.create(tenant=physics, gpu_type=h100, nominal=7)
    lattice = Tenant.objects.create(slug="lattice", name="Lattice", parent=physics)
    optics = Tenant.objects.create(slug="optics", name="Optics", parent=physics)
    quotas = [Quota.objects.create(tenant=t, gpu_type=h100, nominal=2) for t in (lattice, optics)]
    real_check = nesting.check_quota
    checked = threading.Event()

    def slow_check(quota, **kwargs):
        real_check(quota, **kwargs)
        checked.set()
        time.sleep(0.3)  # between the check and the commit: an unlocked check would race here

    monkeypatch.setattr(nesting, "check_quota", slow_check)
    outcome: dict[str, str] = {}

    def raise_to_four(quota, wait):
        if wait:
            checked.wait(5)
        try:
            save_audited(Quota.objects.get(pk=quota.pk), {"nominal": 4}, None)
            outcome[quota.tenant.slug] = "saved"
        except ValidationError:
            outcome[quota.tenant.slug] = "refused"
        finally:
            connection.close()

    threads = [threading.Thread(target=raise_to_four, args=(q, i == 1)) for i, q in enumerate(quotas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert outcome == {"lattice": "saved", "optics": "refused"}
    assert sum(Quota.objects.filter(tenant__parent=physics).values_list("nominal", flat=True)) == 6


def test_the_quotas_page_lists_a_department_before_its_projects(client, platform_admin, physics, h100):
    Tenant.objects.create(slug="aardvark", name="A")  # first by name, last in no tree
    Quota.objects.create(tenant=Tenant.objects.get(slug="aardvark"), gpu_type=h100, nominal=1)
    client.force_login(platform_admin)
    page = client.get("/quotas/").content.decode()
    order = [page.index(f">{slug}</a>") for slug in ("aardvark", "physics", "lattice", "optics")]
    assert order == sorted(order)
    assert "lattice</a> <small>in physics</small>" in page
