from __future__ import annotations

from unittest import mock

import pytest
from auditlog.models import LogEntry

from quotas.models import Budget, Quota
from tests.jobs.test_api import client_for
from tests.support import admit, trail, trail_changes

pytestmark = pytest.mark.django_db

URL = "/api/v1/quotas/"


def test_platform_admin_creates_and_edits_a_quota_with_an_audit_trail(
    platform_admin, tenant, h100, django_capture_on_commit_callbacks
):
    api = client_for(platform_admin)
    with (
        mock.patch("quotas.tasks.admit_pending.delay") as readmit,
        mock.patch("quotas.tasks.mirror_limits.delay") as mirror,
        django_capture_on_commit_callbacks(execute=True),
    ):
        created = api.post(URL, {"tenant": "demo-lab", "gpu_type": "h100", "nominal": 4}, format="json")
        assert created.status_code == 201, created.content
        quota_id = created.json()["id"]
        edited = api.patch(f"{URL}{quota_id}/", {"nominal": 6, "lending_limit": 2}, format="json")
    assert edited.status_code == 200, edited.content
    assert edited.json()["nominal"] == 6 and edited.json()["in_use"] == 0
    assert readmit.call_count == 2  # a quota change runs admission
    assert mirror.call_args_list == [mock.call([tenant.pk])] * 2  # and goes to the clusters' own limits
    changes = trail_changes(Quota, action=LogEntry.Action.UPDATE)
    assert changes == {("nominal", 4, 6), ("lending_limit", None, 2)}
    assert {entry.actor for entry in trail(Quota)} == {platform_admin}
    assert trail(Quota, action=LogEntry.Action.CREATE).get().changes["nominal"] == [None, 4]


def test_deleting_a_quota_is_audited_and_reaches_the_clusters(
    platform_admin, tenant, h100, django_capture_on_commit_callbacks
):
    quota = Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4)
    with (
        mock.patch("quotas.tasks.admit_pending.delay") as readmit,
        mock.patch("quotas.tasks.mirror_limits.delay") as mirror,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = client_for(platform_admin).delete(f"{URL}{quota.pk}/")
    assert response.status_code == 204
    assert not Quota.objects.filter(pk=quota.pk).exists()
    change = trail(Quota, action=LogEntry.Action.DELETE).get()
    assert (change.changes["nominal"], change.actor) == ([4, None], platform_admin)
    readmit.assert_called_once_with()
    mirror.assert_called_once_with([tenant.pk])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"nominal": -1}, "nominal"),
        ({"nominal": 2, "lending_limit": 3}, "lending_limit"),
        ({"max_gpus_per_job": 0}, "max_gpus_per_job"),
        ({"borrowing_limit": "lots"}, "borrowing_limit"),
        ({"gpu_type": "tpu"}, "gpu_type"),
    ],
)
def test_bad_quota_input_is_rejected_per_field(platform_admin, tenant, h100, payload, field):
    body = {"tenant": "demo-lab", "gpu_type": "h100", "nominal": 2, **payload}
    response = client_for(platform_admin).post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Quota.objects.exists() and not trail(Quota).exists()


def test_duplicate_quota_is_rejected(platform_admin, quotas):
    response = client_for(platform_admin).post(
        URL, {"tenant": "demo-lab", "gpu_type": "h100", "nominal": 1}, format="json"
    )
    assert response.status_code == 400


def test_members_read_their_own_tenants_quotas_only(owner, quotas, other_tenant, h100, make_job):
    Quota.objects.create(tenant=other_tenant, gpu_type=h100, nominal=9)
    job = make_job(gpu_count=2)
    admit(job, job.gpu_type.pools.first().cluster)
    make_job(gpu_count=3)
    api = client_for(owner)
    rows = api.get(URL).json()["results"]
    assert {(r["tenant"], r["gpu_type"]) for r in rows} == {("demo-lab", "h100"), ("demo-lab", "a100")}
    h100_row = next(r for r in rows if r["gpu_type"] == "h100")
    assert (h100_row["in_use"], h100_row["borrowed"], h100_row["pending_demand"]) == (2, 0, 3)
    assert api.patch(f"{URL}{h100_row['id']}/", {"nominal": 99}, format="json").status_code == 403
    other = Quota.objects.get(tenant=other_tenant)
    assert api.get(f"{URL}{other.pk}/").status_code == 404
    assert api.get(URL, {"tenant": "other-lab"}).json()["results"] == []


def test_budgets_by_api(platform_admin, owner, tenant):
    api = client_for(platform_admin)
    created = api.post(
        "/api/v1/budgets/",
        {"tenant": "demo-lab", "gpu_hours_per_month": "100.00", "hard": True},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["used_gpu_hours_this_month"] == "0.00"
    bad = api.patch("/api/v1/budgets/demo-lab/", {"gpu_hours_per_month": "-5"}, format="json")
    assert bad.status_code == 400 and "gpu_hours_per_month" in bad.json()
    assert Budget.objects.get().gpu_hours_per_month == 100
    member = client_for(owner)
    assert member.get("/api/v1/budgets/demo-lab/").status_code == 200
    assert member.patch("/api/v1/budgets/demo-lab/", {"hard": False}, format="json").status_code == 403
