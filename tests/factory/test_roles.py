"""Explicit roles: platform admin, finance and auditor across the platform; tenant (department or
project) admin and member in a tenant. Each role on each surface, in the browser and in the API;
nothing decides by `is_staff`."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from billing.models import MonthClose, RateCard
from factory import roles
from factory.choices import PlatformRole
from factory.models import Cluster, GpuType, Membership, Tenant
from factory.months import month_of
from jobs.models import Job
from quotas.models import Quota
from tests.conftest import make_user
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db

ROLES = ("member", "tenant_admin", "platform_admin", "finance", "auditor")


@pytest.fixture
def people(owner, tenant_admin, platform_admin, finance_user, auditor) -> dict:
    return {
        "member": owner,
        "tenant_admin": tenant_admin,
        "platform_admin": platform_admin,
        "finance": finance_user,
        "auditor": auditor,
    }


@pytest.fixture
def price(h100) -> RateCard:
    return RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.00"), effective_from=date(2026, 1, 1)
    )


def last_month() -> str:
    return f"{month_of() - timedelta(days=1):%Y-%m}"


def browser(client, user):
    client.force_login(user)
    return client


# --- the API ------------------------------------------------------------------------------------

CLUSTER = {"slug": "new-cluster", "name": "New", "kind": "local", "region": "local"}
# (method, path, body, the roles allowed; everyone else gets a 403)
API_WRITES = [
    ("post", "/api/v1/clusters/", CLUSTER, {"platform_admin"}),
    ("patch", "/api/v1/clusters/local/", {"draining": True}, {"platform_admin"}),
    ("post", "/api/v1/gpu-types/", {"slug": "b200", "name": "B200"}, {"platform_admin"}),
    ("patch", "/api/v1/gpu-types/h100/", {"name": "H100 SXM"}, {"platform_admin"}),
    ("post", "/api/v1/clusters/local/pools/", {"gpu_type": "b300", "capacity": 2}, {"platform_admin"}),
    ("patch", "/api/v1/clusters/local/pools/h100/", {"capacity": 8}, {"platform_admin"}),
    ("post", "/api/v1/tenants/", {"slug": "vision", "name": "Vision"}, {"platform_admin"}),
    ("patch", "/api/v1/tenants/demo-lab/", {"name": "Renamed"}, {"platform_admin"}),
    ("post", "/api/v1/quotas/", {"tenant": "demo-lab", "gpu_type": "a100", "nominal": 2}, {"platform_admin"}),
    (
        "post",
        "/api/v1/rate-cards/",
        {"gpu_type": "a100", "currency": "EUR", "price_per_gpu_hour": "1.00", "effective_from": "2026-01-01"},
        {"finance"},
    ),
    ("post", "/api/v1/platform/plan/", {"gpu_types": [{"slug": "h100", "name": "H100"}]}, {"platform_admin"}),
]


@pytest.mark.parametrize(("method", "path", "payload", "allowed"), API_WRITES, ids=lambda v: str(v)[:40])
def test_api_writes_by_role(people, cluster, price, method, path, payload, allowed):
    GpuType.objects.create(slug="b300", name="B300")
    for role in ROLES:
        response = getattr(client_for(people[role]), method)(path, payload, format="json")
        if role in allowed:
            assert response.status_code in (200, 201), (role, response.content)
        else:
            assert response.status_code == 403, (role, path, response.status_code)


def test_finance_can_no_longer_change_clusters_pools_or_gpu_types(finance_user, cluster):
    api = client_for(finance_user)
    assert api.get("/api/v1/clusters/").status_code == 200  # reads them, as everyone does
    assert api.patch("/api/v1/clusters/local/", {"enabled": False}, format="json").status_code == 403
    assert api.delete("/api/v1/clusters/local/pools/a100/").status_code == 403
    assert api.patch("/api/v1/gpu-types/h100/", {"memory_gb": 1}, format="json").status_code == 403
    cluster.refresh_from_db()
    assert cluster.enabled and cluster.pools.count() == 2
    assert GpuType.objects.get(slug="h100").memory_gb == 80


def test_billing_api_is_read_by_finance_auditors_and_platform_admins_and_changed_by_finance(
    people, price, tenant
):
    month = last_month()
    for role in ROLES:
        api = client_for(people[role])
        reads = role in ("finance", "auditor", "platform_admin")
        assert api.get(f"/api/v1/reports/chargeback/?month={month}").status_code == (200 if reads else 403)
        assert api.get("/api/v1/rate-cards/").status_code == (200 if reads else 403)
        credit = api.post(
            "/api/v1/credits/",
            {"tenant": "demo-lab", "month": month, "amount": "5.00", "reason": "goodwill"},
            format="json",
        )
        # Finance is refused only by the billing rule: the month billed nothing to credit back.
        assert (credit.status_code == 400) if role == "finance" else (credit.status_code == 403), role
        changed = api.patch(
            f"/api/v1/rate-cards/{price.pk}/", {"effective_until": "2027-01-01"}, format="json"
        )
        assert changed.status_code == (200 if role == "finance" else 403), (role, changed.content)


def test_an_auditor_reads_every_tenant_and_job_and_changes_nothing(
    auditor, owner, other_tenant, outsider, make_job, quotas
):
    mine = make_job()
    theirs = make_job(tenant=other_tenant, owner=outsider)
    api = client_for(auditor)
    assert {t["slug"] for t in api.get("/api/v1/tenants/").json()["results"]} == {"demo-lab", "other-lab"}
    assert {j["id"] for j in api.get("/api/v1/jobs/").json()["results"]} == {mine.pk, theirs.pk}
    assert api.get("/api/v1/tenants/demo-lab/members/").status_code == 200
    assert api.get(f"/api/v1/jobs/{theirs.pk}/events/").status_code == 200
    refused = [
        api.post(f"/api/v1/jobs/{theirs.pk}/cancel/"),
        api.post("/api/v1/jobs/", {"tenant": "other-lab", **job_body()}, format="json"),
        api.post("/api/v1/tenants/other-lab/members/", {"username": "auditor"}, format="json"),
        api.delete("/api/v1/tenants/demo-lab/members/researcher/"),
        api.patch(f"/api/v1/quotas/{quotas[0].pk}/", {"nominal": 1}, format="json"),
        api.post("/api/v1/budgets/", {"tenant": "demo-lab", "gpu_hours_per_month": "1"}, format="json"),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.content for r in refused]
    assert Job.objects.get(pk=theirs.pk).state == "pending"
    assert Membership.objects.filter(tenant__slug="demo-lab", user=owner).exists()
    assert Quota.objects.get(pk=quotas[0].pk).nominal == quotas[0].nominal


def job_body() -> dict:
    return {"name": "x", "command": "true", "gpu_type": "h100", "gpu_count": 1, "time_limit_minutes": 5}


def test_a_tenant_admin_manages_members_but_nothing_of_the_platform(tenant_admin, teammate, cluster):
    api = client_for(tenant_admin)
    changed = api.patch("/api/v1/tenants/demo-lab/members/teammate/", {"role": "admin"}, format="json")
    assert changed.status_code == 200, changed.content
    assert api.patch("/api/v1/tenants/demo-lab/", {"name": "Mine"}, format="json").status_code == 403
    assert api.patch("/api/v1/clusters/local/", {"draining": True}, format="json").status_code == 403
    assert api.get("/api/v1/reports/chargeback/").status_code == 403


# --- pages --------------------------------------------------------------------------------------


def test_chargeback_page_close_button_and_close_by_role(client, people, price):
    month = last_month()
    for role in ROLES:
        page = browser(client, people[role]).get(f"/billing/chargeback/?month={month}")
        if role in ("member", "tenant_admin"):
            assert page.status_code == 403
            continue
        assert page.status_code == 200
        assert ("Close " in page.content.decode()) == (role == "finance"), role
        assert f'href="/billing/chargeback/export/?month={month}&format=csv"' in page.content.decode()
    for role in ("auditor", "platform_admin", "member"):
        closed = browser(client, people[role]).post("/billing/chargeback/close/", {"month": month})
        assert closed.status_code == 403, role
    assert not MonthClose.objects.exists()
    closed = browser(client, people["finance"]).post("/billing/chargeback/close/", {"month": month})
    assert closed.status_code == 302 and MonthClose.objects.filter(closed_by=people["finance"]).exists()


def test_prices_page_form_is_finances_alone(client, people, price, h100):
    data = {
        "gpu_type": h100.pk,
        "currency": "EUR",
        "price_per_gpu_hour": "9.00",
        "price_per_cpu_core_hour": "0",
        "price_per_memory_gb_hour": "0",
        "effective_from": "2030-01-01",
    }
    for role in ("auditor", "platform_admin"):
        page = browser(client, people[role]).get("/billing/prices/")
        assert page.status_code == 200 and "Save price" not in page.content.decode()
        assert browser(client, people[role]).post("/billing/prices/", data).status_code == 403
    assert RateCard.objects.count() == 1
    assert "Save price" in browser(client, people["finance"]).get("/billing/prices/").content.decode()


def test_quota_page_is_read_only_for_auditors(client, auditor, platform_admin, quotas):
    page = browser(client, auditor).get("/quotas/").content.decode()
    assert "demo-lab" in page and "Add quota" not in page and "?edit=1" not in page
    quota = quotas[0]
    assert client.get(f"/quotas/{quota.pk}/?edit=1", HTTP_HX_REQUEST="true").status_code == 403
    assert client.post(f"/quotas/{quota.pk}/", {f"q{quota.pk}-nominal": 1}).status_code == 403
    assert client.post("/quotas/", {"new-nominal": 1}).status_code == 403
    page = browser(client, platform_admin).get("/quotas/").content.decode()
    assert "Add quota" in page and "?edit=1" in page


def test_members_page_is_read_only_for_auditors(client, auditor, teammate):
    page = browser(client, auditor).get("/tenants/demo-lab/members/")
    assert page.status_code == 200 and "teammate" in page.content.decode()
    assert 'name="action"' not in page.content.decode()
    membership = Membership.objects.get(user=teammate)
    refused = client.post("/tenants/demo-lab/members/", {"action": "remove", "membership": membership.pk})
    assert refused.status_code == 403 and Membership.objects.filter(pk=membership.pk).exists()


def test_navigation_shows_what_each_role_may_open(client, people):
    links = {
        "Quotas": "/quotas/",
        "Chargeback": "/billing/chargeback/",
        "Admin": "/admin/",
        "Audit trail": "/audit/",
    }
    shown = {
        role: {name for name, url in links.items() if f'href="{url}"' in page(client, people[role])}
        for role in ROLES
    }
    assert shown == {
        "member": set(),
        "tenant_admin": set(),
        "platform_admin": {"Quotas", "Chargeback", "Admin", "Audit trail"},
        "finance": {"Chargeback", "Admin"},
        "auditor": {"Quotas", "Chargeback", "Admin", "Audit trail"},
    }
    assert "(Auditor)" in page(client, people["auditor"])


def page(client, user) -> str:
    return browser(client, user).get("/jobs/").content.decode()


def test_fleet_pages_are_for_platform_admins_and_auditors(client, people, cluster):
    for role in ROLES:
        status = browser(client, people[role]).get("/clusters/local/fleet/").status_code
        assert status == (200 if role in ("platform_admin", "auditor") else 404), role


# --- the admin ----------------------------------------------------------------------------------


def test_the_admin_shows_each_role_its_own(client, people, cluster, price):
    for role in ("member", "tenant_admin"):
        response = browser(client, people[role]).get("/admin/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    admin = browser(client, people["platform_admin"])
    assert admin.get("/admin/factory/cluster/add/").status_code == 200
    assert admin.get(f"/admin/billing/ratecard/{price.pk}/change/").status_code == 200  # to read
    assert admin.post(f"/admin/billing/ratecard/{price.pk}/change/", {}).status_code == 403

    finance = browser(client, people["finance"])
    assert finance.get("/admin/factory/cluster/").status_code == 403
    assert finance.get("/admin/billing/ratecard/add/").status_code == 200

    auditor = browser(client, people["auditor"])
    listing = auditor.get("/admin/factory/cluster/")
    assert listing.status_code == 200 and "/admin/factory/cluster/add/" not in listing.content.decode()
    view = auditor.get(f"/admin/factory/cluster/{cluster.pk}/change/")
    assert view.status_code == 200 and "Save" not in view.content.decode()
    data = {"slug": "local", "name": "Renamed", "kind": "local", "region": "local", "pue": "1.20"}
    assert auditor.post(f"/admin/factory/cluster/{cluster.pk}/change/", data).status_code == 403
    assert Cluster.objects.get(pk=cluster.pk).name == "Local"


def test_only_role_holders_sign_in_to_the_admin(client, owner, auditor):
    refused = client.post("/admin/login/", {"username": "researcher", "password": "pw-researcher"})
    assert refused.status_code == 200 and "holds no platform role" in refused.content.decode()
    signed_in = client.post("/admin/login/", {"username": "auditor", "password": "pw-auditor"})
    assert signed_in.status_code == 302


def test_is_staff_alone_grants_nothing(client, django_user_model, tenant, other_tenant, cluster):
    staff = make_user(django_user_model, "staffer", is_staff=True)
    api = client_for(staff)
    assert api.get("/api/v1/tenants/").json()["results"] == []
    assert api.post("/api/v1/clusters/", CLUSTER, format="json").status_code == 403
    assert api.get("/api/v1/reports/chargeback/").status_code == 403
    assert browser(client, staff).get("/quotas/").status_code == 403
    assert client.get("/admin/").status_code == 302


def test_a_platform_admin_gives_roles_in_the_admin_but_makes_no_superuser(client, platform_admin, owner):
    admin = browser(client, platform_admin)
    form = admin.get(f"/admin/auth/user/{owner.pk}/change/").content.decode()
    assert 'name="groups"' in form and 'name="is_superuser"' not in form
    auditors = Group.objects.get(name=PlatformRole.AUDITOR)
    response = admin.post(
        f"/admin/auth/user/{owner.pk}/change/",
        {
            "username": owner.username,
            "is_active": "on",
            "is_superuser": "on",  # ignored: read-only for a platform admin
            "groups": [auditors.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    owner.refresh_from_db()
    assert roles.platform_roles(owner) == ["auditor"] and not owner.is_superuser


def test_role_groups_hold_exactly_the_permissions_of_the_code(platform_admin):
    finance = Group.objects.get(name=PlatformRole.FINANCE)
    finance.permissions.clear()
    roles.sync_groups()
    codenames = set(finance.permissions.values_list("codename", flat=True))
    assert {"add_ratecard", "change_ratecard", "add_monthclose", "view_usagerecord"} <= codenames
    assert not {"change_cluster", "add_pool", "change_gputype"} & codenames
    auditor = set(Group.objects.get(name=PlatformRole.AUDITOR).permissions.values_list("codename", flat=True))
    assert auditor and all(code.startswith("view_") for code in auditor)
    assert "view_logentry" in auditor


def test_staff_users_become_platform_admins_when_roles_arrive(django_user_model, transactional_db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("factory", "0012_tenant_tree_without_cycles")], [("factory", "0013_platform_roles")]
    staff = make_user(django_user_model, "old-staff", is_staff=True)
    plain = make_user(django_user_model, "old-member")
    try:
        MigrationExecutor(connection).migrate(before)
        Group.objects.filter(name__in=PlatformRole.values).delete()
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        roles.sync_groups()
        staff = django_user_model.objects.get(pk=staff.pk)
        plain = django_user_model.objects.get(pk=plain.pk)
        assert roles.platform_roles(staff) == ["platform-admin"] and roles.platform_roles(plain) == []
        assert staff.has_perm("factory.change_cluster") and not staff.has_perm("billing.add_ratecard")
    finally:
        MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_tenants_of_a_platform_admin_include_all_for_jobs(platform_admin, tenant, other_tenant):
    assert set(Tenant.objects.submittable_by(platform_admin)) == {tenant, other_tenant}
