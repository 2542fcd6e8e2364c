"""The audit trail: every administrative change, by whoever made it (in the browser, with an API
token, through a platform file or at a single sign-on), before → after; searched by object, user
and time on a page for platform admins and auditors, exported as CSV, listed by the API."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from billing.models import MonthClose, RateCard
from factory.choices import PlatformRole
from factory.models import ApiToken, Cluster, GpuType, Membership, Pool, SsoGroupRule
from factory.months import month_of
from tests.jobs.test_api import client_for
from tests.support import trail, trail_changes

pytestmark = pytest.mark.django_db


def browser(client, user):
    client.force_login(user)
    return client


def test_cluster_pool_and_gpu_type_changes_by_api_name_the_tokens_user(platform_admin, cluster):
    api = client_for(platform_admin)
    assert api.patch("/api/v1/clusters/local/", {"draining": True}, format="json").status_code == 200
    assert api.patch("/api/v1/clusters/local/pools/h100/", {"capacity": 6}, format="json").status_code == 200
    assert api.post("/api/v1/gpu-types/", {"slug": "b200", "name": "B200"}, format="json").status_code == 201
    entry = trail(Cluster, action=LogEntry.Action.UPDATE).get()
    assert (entry.actor, entry.action, entry.changes) == (
        platform_admin,
        LogEntry.Action.UPDATE,
        {"draining": [False, True]},
    )
    assert entry.remote_addr == "127.0.0.1"
    assert ("capacity", 4, 6) in trail_changes(Pool, actor=platform_admin)
    made = trail(GpuType, action=LogEntry.Action.CREATE, actor=platform_admin).get()
    assert made.object_repr == "b200" and made.changes["name"] == [None, "B200"]


def test_a_clusters_secrets_never_reach_the_trail(platform_admin):
    body = {
        "slug": "ray1",
        "name": "Ray",
        "kind": "ray",
        "connection": {"address": "http://ray-head:8265", "token": "s3cret-token"},
    }
    api = client_for(platform_admin)
    assert api.post("/api/v1/clusters/", body, format="json").status_code == 201
    connection = body["connection"] | {"token": "0th3r-s3cret"}
    assert api.patch("/api/v1/clusters/ray1/", {"connection": connection}, format="json").status_code == 200
    entries = list(trail(Cluster))
    assert "s3cret" not in str([e.changes for e in entries])
    assert '"token": "(secret)"' in entries[0].changes["connection"][1]
    assert '"address": "http://ray-head:8265"' in entries[0].changes["connection"][1]


def test_the_trail_records_the_address_a_trusted_proxy_saw_never_a_clients_own(
    platform_admin, cluster, settings
):
    api = client_for(platform_admin)
    settings.FORWARDED_ALLOW_IPS = "10.0.0.1"  # the test client is no proxy: its header is its own
    api.patch(
        "/api/v1/clusters/local/", {"enabled": False}, format="json", HTTP_X_FORWARDED_FOR="203.0.113.9"
    )
    settings.FORWARDED_ALLOW_IPS = "127.0.0.1"  # now it is the site's proxy
    api.patch(
        "/api/v1/clusters/local/", {"enabled": True}, format="json", HTTP_X_FORWARDED_FOR="198.51.100.7"
    )
    addresses = [e.remote_addr for e in trail(Cluster, action=LogEntry.Action.UPDATE)]
    assert addresses == ["127.0.0.1", "198.51.100.7"]


def test_membership_and_role_changes_are_in_the_trail(client, tenant_admin, teammate, platform_admin, owner):
    membership = Membership.objects.get(user=teammate)
    page = browser(client, tenant_admin).post(
        "/tenants/demo-lab/members/", {"action": "role", "membership": membership.pk, "role": "admin"}
    )
    assert page.status_code == 302
    entry = trail(Membership, action=LogEntry.Action.UPDATE).get()
    assert (entry.actor, entry.changes) == (tenant_admin, {"role": ["member", "admin"]})

    auditors = Group.objects.get(name=PlatformRole.AUDITOR)
    browser(client, platform_admin).post(
        f"/admin/auth/user/{owner.pk}/change/",
        {
            "username": owner.username,
            "is_active": "on",
            "groups": [auditors.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    granted = trail(get_user_model(), object_id=owner.pk, actor=platform_admin).last()
    assert granted.changes["groups"] == {"type": "m2m", "operation": "add", "objects": ["auditor"]}


def test_prices_month_close_tokens_and_sso_rules_are_in_the_trail(client, finance_user, platform_admin, h100):
    api = client_for(finance_user)  # the token it is given is in the trail, as finance's
    token = trail(ApiToken, action=LogEntry.Action.CREATE).get()
    assert token.actor == finance_user and "digest" not in token.changes
    made = api.post(
        "/api/v1/rate-cards/",
        {"gpu_type": "h100", "currency": "EUR", "price_per_gpu_hour": "2.00", "effective_from": "2026-01-01"},
        format="json",
    )
    card = RateCard.objects.get(pk=made.json()["id"])
    api.patch(f"/api/v1/rate-cards/{card.pk}/", {"price_per_gpu_hour": "2.25"}, format="json")
    assert ("price_per_gpu_hour", "2.0000", "2.2500") in trail_changes(RateCard, actor=finance_user)
    month = month_of() - timedelta(days=1)
    browser(client, finance_user).post("/billing/chargeback/close/", {"month": f"{month:%Y-%m}"})
    closed = trail(MonthClose).get()
    assert closed.actor == finance_user and closed.object_repr == f"{month:%Y-%m} closed"
    browser(client, platform_admin).post(
        "/admin/factory/ssogrouprule/add/",
        {"group": "gpu-auditors", "platform_role": "auditor", "role": "member"},
    )
    rule = trail(SsoGroupRule).get()
    assert rule.actor == platform_admin and rule.changes["platform_role"] == [None, "auditor"]
    client.post(f"/account/tokens/{ApiToken.objects.get().pk}/revoke/")
    assert not trail(ApiToken, action=LogEntry.Action.DELETE).exists()  # another user's token is a 404
    browser(client, finance_user).post(f"/account/tokens/{ApiToken.objects.get().pk}/revoke/")
    assert trail(ApiToken, action=LogEntry.Action.DELETE).get().actor == finance_user


# --- the page, its export and the API -------------------------------------------------------------


@pytest.fixture
def history(platform_admin, finance_user, cluster, h100):
    """Changes by two people on two days."""
    client_for(platform_admin).patch("/api/v1/clusters/local/", {"draining": True}, format="json")
    RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.00"), effective_from=date(2026, 1, 1)
    )
    LogEntry.objects.filter(content_type__model="ratecard").update(
        actor=finance_user, timestamp=timezone.now() - timedelta(days=3)
    )


def test_the_trail_page_is_for_platform_admins_and_auditors(
    client, owner, tenant_admin, finance_user, auditor, platform_admin
):
    for user, status in [
        (owner, 403),
        (tenant_admin, 403),
        (finance_user, 403),
        (auditor, 200),
        (platform_admin, 200),
    ]:
        assert browser(client, user).get("/audit/").status_code == status
        assert client.get("/audit/export/").status_code == status
    assert client.logout() is None and client.get("/audit/").status_code == 302


def test_the_trail_is_searched_by_kind_object_user_and_time(client, auditor, platform_admin, history):
    page = browser(client, auditor)

    def objects(query: str) -> list[str]:
        response = page.get(f"/audit/?{query}")
        assert response.status_code == 200, response.content.decode()[:2000]
        return [row["entry"].object_repr for row in response.context["rows"]]

    everything = objects("")
    assert "local" in everything and any(o.startswith("h100") for o in everything)
    assert objects("type=factory.cluster") == ["local", "local"]  # changed, created
    assert objects("type=factory.cluster&action=changed") == ["local"]
    by_platform = objects("user=platform")
    assert "local" in by_platform and not any(o.startswith("h100:") for o in by_platform)
    assert objects("user=FINANCE") == ["h100: 2.00 EUR/GPU-h from 2026-01-01"]
    assert objects("object=local&action=changed") == ["local"]
    today = timezone.now().date()
    assert all(not o.startswith("h100:") for o in objects(f"since={today}"))
    assert any(o.startswith("h100:") for o in objects(f"until={today - timedelta(days=1)}"))
    shown = page.get("/audit/?type=factory.cluster&action=changed").content.decode()
    assert "draining: False → True" in shown and "platform" in shown
    assert page.get("/audit/?since=yesterday").status_code == 400


def test_the_trail_is_paged(client, auditor, settings, platform_admin, cluster):
    settings.FACTORY_AUDIT_PAGE_SIZE = 2
    api = client_for(platform_admin)
    for capacity in (5, 6, 7):
        api.patch("/api/v1/clusters/local/pools/h100/", {"capacity": capacity}, format="json")
    page = browser(client, auditor).get("/audit/?type=factory.pool")
    assert [row["entry"].changes["capacity"][1] for row in page.context["rows"]] == [7, 6]
    second = client.get("/audit/?type=factory.pool&page=2")
    assert second.context["rows"][0]["entry"].changes["capacity"][1] == 5
    assert "Page 1 of" in page.content.decode() and "type=factory.pool&amp;page=2" in page.content.decode()


def test_the_trail_exports_as_csv_with_the_pages_filters(client, auditor, history):
    response = browser(client, auditor).get("/audit/export/?type=factory.cluster&action=changed")
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"] == 'attachment; filename="audit-trail.csv"'
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["user"], r["action"], r["object_type"], r["object"], r["changes"]) for r in rows] == [
        ("platform", "changed", "factory.cluster", "local", "draining: False → True")
    ]
    everything = list(
        csv.reader(io.StringIO(b"".join(client.get("/audit/export/").streaming_content).decode()))
    )
    assert everything[0][:3] == ["time", "user", "action"] and len(everything) > 2


def test_the_trail_api_for_auditors_only(auditor, finance_user, history):
    listed = client_for(auditor).get("/api/v1/audit-log/?type=factory.cluster&action=changed")
    assert listed.status_code == 200
    [entry] = listed.json()["results"]
    assert entry["user"] == "platform" and entry["action"] == "changed"
    assert entry["object_type"] == "factory.cluster" and entry["changes"] == {"draining": [False, True]}
    assert client_for(finance_user).get("/api/v1/audit-log/").status_code == 403
    refused = client_for(auditor).post("/api/v1/audit-log/", {}, format="json")
    assert refused.status_code in (403, 405)
    bad = client_for(auditor).get("/api/v1/audit-log/?since=soon")
    assert bad.status_code == 400 and "since" in bad.json()


# --- the quota history kept before the trail ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_quota_history_moves_into_the_trail(platform_admin, tenant, h100):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from factory.models import ChangeSet
    from quotas.models import Quota

    before, after = (
        [("quotas", "0003_quota_change_in_change_set")],
        [("quotas", "0004_quota_history_into_audit_trail")],
    )
    quota = Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=6)
    change_set = ChangeSet.objects.create(author=platform_admin)
    LogEntry.objects.all().delete()
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps.get_model("quotas", "QuotaChange")
        at = timezone.now() - timedelta(days=30)
        for field, was, now in [("nominal", "4", "6"), ("borrowing_limit", "", "2")]:
            old.objects.create(
                tenant_id=tenant.pk,
                gpu_type_id=h100.pk,
                field=field,
                old_value=was,
                new_value=now,
                changed_by_id=platform_admin.pk,
                changed_at=at,
            )
        old.objects.create(
            tenant_id=tenant.pk,
            field="gpu_hours_per_month",
            old_value="100",
            new_value="200",
            changed_by_id=platform_admin.pk,
            changed_at=at + timedelta(hours=1),
            change_set_id=change_set.pk,
        )
        executor = MigrationExecutor(connection)
        executor.migrate(after)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    entries = list(LogEntry.objects.order_by("timestamp"))
    assert [(e.object_repr, e.changes, e.actor_id) for e in entries] == [
        ("demo-lab/h100", {"nominal": ["4", "6"], "borrowing_limit": [None, "2"]}, platform_admin.pk),
        ("demo-lab budget", {"gpu_hours_per_month": ["100", "200"]}, platform_admin.pk),
    ]
    assert entries[0].object_id == quota.pk and entries[0].timestamp == at
    assert entries[1].additional_data == {"migrated_from": "quota history", "change_set": change_set.pk}
