from __future__ import annotations

from decimal import Decimal

import pytest
from auditlog.models import LogEntry

from factory.months import month_of
from quotas.models import Budget, Quota, Reservation
from tests.support import admit, trail, trail_changes

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_browser(client, platform_admin):
    client.force_login(platform_admin)
    return client


def test_quotas_page_is_for_platform_admins_and_auditors_only(client, owner, finance_user, quotas):
    for user in (owner, finance_user):
        client.force_login(user)
        assert client.get("/quotas/").status_code == 403


def test_quotas_page_shows_usage_bars(admin_browser, quotas, make_job):
    job = make_job(gpu_count=3)
    admit(job, job.gpu_type.pools.first().cluster)
    make_job(gpu_count=2)
    page = admin_browser.get("/quotas/").content.decode()
    assert "3 in use / 4 nominal · 2 pending" in page
    assert 'hx-get="/quotas/' in page


def test_inline_edit_saves_and_logs_who_changed_what(admin_browser, platform_admin, quotas):
    quota = quotas[0]
    form = admin_browser.get(f"/quotas/{quota.pk}/?edit=1", HTTP_HX_REQUEST="true")
    assert (
        form.status_code == 200 and "<form" in form.content.decode() and "<html" not in form.content.decode()
    )
    prefix = f"q{quota.pk}"
    data = {
        f"{prefix}-nominal": "6",
        f"{prefix}-borrowing_limit": "2",
        f"{prefix}-lending_limit": "",
        f"{prefix}-max_gpus_per_job": "4",
        f"{prefix}-max_gpus_per_user": "",
    }
    row = admin_browser.post(f"/quotas/{quota.pk}/", data, HTTP_HX_REQUEST="true")
    assert row.status_code == 200
    assert "<form" not in row.content.decode() and ">6<" in row.content.decode()
    quota.refresh_from_db()
    assert (quota.nominal, quota.borrowing_limit) == (6, 2)
    change = trail(Quota, action=LogEntry.Action.UPDATE).get()
    assert (change.changes["nominal"], change.actor) == ([4, 6], platform_admin)
    assert "nominal: 4 → 6" in admin_browser.get("/quotas/").content.decode()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nominal", "-1", "greater than or equal to 0"),
        ("lending_limit", "9", "cannot exceed the nominal quota"),
        ("max_gpus_per_job", "0", "greater than or equal to 1"),
    ],
)
def test_inline_edit_rejects_bad_values_with_a_message(admin_browser, quotas, field, value, message):
    quota = quotas[0]
    prefix = f"q{quota.pk}"
    data = {
        f"{prefix}-nominal": "4",
        f"{prefix}-borrowing_limit": "",
        f"{prefix}-lending_limit": "",
        f"{prefix}-max_gpus_per_job": "",
        f"{prefix}-max_gpus_per_user": "",
    }
    data[f"{prefix}-{field}"] = value
    row = admin_browser.post(f"/quotas/{quota.pk}/", data, HTTP_HX_REQUEST="true")
    assert message in row.content.decode()
    quota.refresh_from_db()
    assert quota.nominal == 4 and quota.lending_limit is None
    assert not trail(Quota, action=LogEntry.Action.UPDATE).exists()


def test_add_quota_form(admin_browser, tenant, h100):
    data = {"new-tenant": tenant.pk, "new-gpu_type": h100.pk, "new-nominal": "2"}
    assert admin_browser.post("/quotas/", data).status_code == 302
    assert Quota.objects.get().nominal == 2
    duplicate = admin_browser.post("/quotas/", data)
    assert duplicate.status_code == 400 and "already exists" in duplicate.content.decode()


def test_member_dashboard_shows_quota_and_budget_burn(client, owner, tenant, quotas, make_job):
    Budget.objects.create(tenant=tenant, gpu_hours_per_month=Decimal(100))
    job = make_job()
    Reservation.objects.create(
        job=job,
        attempt=0,
        tenant=tenant,
        gpu_type=job.gpu_type,
        gpus=1,
        month=month_of(),
        reserved_gpu_hours=Decimal("25"),
    )
    client.force_login(owner)
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response["Location"] == "/tenants/demo-lab/"
    page = client.get("/tenants/demo-lab/").content.decode()
    assert "25.0</strong> of 100 GPU-hours used (25.0%)" in page
    assert "<polyline" in page and "Save budget" not in page


def test_other_tenants_dashboard_is_a_404(client, outsider, tenant):
    client.force_login(outsider)
    assert client.get("/tenants/demo-lab/").status_code == 404


def test_platform_admin_sets_a_budget_with_audit(admin_browser, tenant):
    data = {"budget-gpu_hours_per_month": "500", "budget-hard": "on", "budget-max_priority": "5"}
    assert admin_browser.post("/tenants/demo-lab/", data).status_code == 302
    assert Budget.objects.get(tenant=tenant).gpu_hours_per_month == 500
    assert ("gpu_hours_per_month", None, "500") in trail_changes(Budget)
    bad = admin_browser.post("/tenants/demo-lab/", {**data, "budget-gpu_hours_per_month": "-1"})
    assert bad.status_code == 200 and "greater than or equal to 0" in bad.content.decode()


def test_the_priority_ceiling_is_the_platforms_a_tenant_admin_cannot_raise_it(client, tenant_admin, tenant):
    Budget.objects.create(tenant=tenant, max_priority=5)
    client.force_login(tenant_admin)
    page = client.get("/tenants/demo-lab/").content.decode()
    assert "Save priority limit" not in page and "Save budget" not in page
    client.post("/tenants/demo-lab/", {"budget-max_priority": "100"})
    assert Budget.objects.get(tenant=tenant).max_priority == 5
    assert not trail(Budget, action=LogEntry.Action.UPDATE).exists()
