from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing import credits, invoicing, metering
from billing.models import MonthlySummary, UsageKind, UsageRecord
from tests.jobs.test_api import client_for

from .conftest import at

pytestmark = pytest.mark.django_db
OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)


@pytest.fixture
def october(prices, ran):
    """Two h100 jobs in October 2026: 10.00 EUR and 5.00 EUR."""
    jobs = [ran(at(2026, 10, 2, 9), at(2026, 10, 2, 13)), ran(at(2026, 10, 3, 9), at(2026, 10, 3, 11))]
    for job in jobs:
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    return jobs


def test_finance_grants_a_credit_as_a_new_line_billed_in_the_next_open_month(october, tenant, finance_user):
    invoicing.close_month(OCTOBER, finance_user)
    before = list(UsageRecord.objects.values_list("id", "amount"))
    api = client_for(finance_user)
    body = {"tenant": "demo-lab", "month": "2026-10", "amount": "4.00", "reason": "Scheduler outage"}
    response = api.post("/api/v1/credits/", body, format="json")
    assert response.status_code == 201, response.content
    line = UsageRecord.objects.get(pk=response.json()["id"])
    assert (line.kind, line.amount, line.currency, line.month) == (
        "credit",
        Decimal("-4.00"),
        "EUR",
        NOVEMBER,
    )
    assert line.period_start == at(2026, 10, 1) and line.created_by == finance_user
    assert line.note == "Scheduler outage" and response.json()["created_by"] == "finance"
    assert list(UsageRecord.objects.exclude(pk=line.pk).values_list("id", "amount")) == before  # no edits
    assert MonthlySummary.objects.get(month=NOVEMBER).amount == Decimal("-4.00")


def test_a_credit_in_gpu_hours_is_priced_by_the_rate_card(october, tenant, finance_user, h100):
    line = credits.grant_credit(
        tenant, OCTOBER, "Lost GPUs", finance_user, gpu_hours=Decimal("2"), gpu_type=h100
    )
    assert (line.amount, line.gpu_seconds, line.month) == (Decimal("-5.00"), -7200, OCTOBER)


def test_a_credit_larger_than_the_months_bill_is_refused(october, tenant, finance_user):
    credits.grant_credit(tenant, OCTOBER, "first", finance_user, amount=Decimal("10.00"))
    api = client_for(finance_user)
    body = {"tenant": "demo-lab", "month": "2026-10", "amount": "5.01", "reason": "again"}
    response = api.post("/api/v1/credits/", body, format="json")
    assert response.status_code == 400
    assert "more than the 5.00 EUR billed to demo-lab for October 2026" in response.json()["amount"][0]
    assert UsageRecord.objects.filter(kind=UsageKind.CREDIT).count() == 1
    assert (
        client_for(finance_user)
        .post("/api/v1/credits/", {**body, "amount": "5.00"}, format="json")
        .status_code
        == 201
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": ""}, "reason"),
        ({"amount": "-1"}, "amount"),
        ({"amount": None}, "amount"),
        ({"amount": None, "gpu_hours": "2"}, "gpu_type"),
        ({"month": "2026-13"}, "month"),
        ({"tenant": "nobody"}, "tenant"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_credits_are_field_errors_and_change_nothing(october, finance_user, body, field):
    data = {"tenant": "demo-lab", "month": "2026-10", "amount": "1.00", "reason": "why", **body}
    response = client_for(finance_user).post("/api/v1/credits/", data, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not UsageRecord.objects.filter(kind=UsageKind.CREDIT).exists()


def test_members_and_tenant_admins_cannot_grant_credits_or_correct(october, owner, tenant_admin):
    line = UsageRecord.objects.first()
    for user in (owner, tenant_admin):
        api = client_for(user)
        body = {"tenant": "demo-lab", "month": "2026-10", "amount": "1", "reason": "me"}
        assert api.post("/api/v1/credits/", body, format="json").status_code == 403
        assert (
            api.post(f"/api/v1/usage/{line.pk}/correct/", {"amount": "0", "reason": "x"}).status_code == 403
        )


def test_finance_corrects_a_closed_months_line_by_a_new_line_naming_it(october, finance_user, client):
    invoicing.close_month(OCTOBER, finance_user)
    wrong = UsageRecord.objects.get(job=october[0])
    client.force_login(finance_user)
    page = client.get("/billing/chargeback/2026-10/demo-lab/h100/").content.decode()
    assert f"/billing/lines/{wrong.pk}/correct/" in page
    response = client.post(
        f"/billing/lines/{wrong.pk}/correct/", {"amount": "7.50", "reason": "Half the node"}
    )
    assert response.status_code == 302
    fix = UsageRecord.objects.get(corrects=wrong)
    assert (fix.kind, fix.amount, fix.month, fix.created_by) == (
        "correction",
        Decimal("-2.50"),
        NOVEMBER,
        finance_user,
    )
    assert fix.period_start == wrong.period_start and fix.note == "Half the node"
    wrong.refresh_from_db()
    assert wrong.amount == Decimal("10.00")  # never edited
    again = client.post(f"/billing/lines/{wrong.pk}/correct/", {"amount": "1", "reason": "again"})
    assert again.status_code == 400 and "corrected already" in again.content.decode()
    listed = client.get("/billing/credits/").content.decode()
    assert "Half the node" in listed and f"#{wrong.pk}" in listed


def test_a_line_of_an_open_month_is_not_corrected(october, finance_user):
    line = UsageRecord.objects.get(job=october[0])
    response = client_for(finance_user).post(
        f"/api/v1/usage/{line.pk}/correct/", {"amount": "1.00", "reason": "typo"}, format="json"
    )
    assert response.status_code == 400
    assert "correct the rate card instead" in response.json()["line"][0]
    assert not UsageRecord.objects.filter(corrects=line).exists()
    with pytest.raises(ValidationError):
        credits.correct_line(line, Decimal("1"), "typo", None)


def test_tenant_admins_see_credits_and_corrections_on_their_dashboard(
    october, tenant, finance_user, tenant_admin, owner, client
):
    invoicing.close_month(OCTOBER, finance_user)
    credits.grant_credit(tenant, OCTOBER, "Scheduler outage", finance_user, amount=Decimal("3.00"))
    credits.correct_line(
        UsageRecord.objects.get(job=october[1]), Decimal("4.00"), "Slow storage", finance_user
    )
    client.force_login(tenant_admin)
    page = client.get(f"/tenants/{tenant.slug}/").content.decode()
    assert "Scheduler outage" in page and "Slow storage" in page and "-3.00 EUR" in page
    assert "INV-000001" in page
    client.force_login(owner)  # a member, not an admin
    assert "Scheduler outage" not in client.get(f"/tenants/{tenant.slug}/").content.decode()


def test_a_credit_to_a_billing_account_is_limited_by_what_its_whole_tree_was_billed(
    prices, ran, finance_user, django_user_model
):
    """acme was billed nothing itself in October, its department acme-vision 10.00 EUR: acme's
    bill for October is 10.00 EUR, and credits to acme and to its department together are
    weighed against that."""
    from factory.models import Membership, Tenant

    acme = Tenant.objects.create(slug="acme", name="Acme")
    vision = Tenant.objects.create(slug="acme-vision", name="Acme Vision", parent=acme)
    bob = django_user_model.objects.create_user("bob", password="pw-bob")
    Membership.objects.create(user=bob, tenant=vision)
    job = ran(at(2026, 10, 2, 9), at(2026, 10, 2, 13), tenant=vision, owner=bob)  # 4 h100-h: 10.00
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    line = credits.grant_credit(acme, OCTOBER, "Outage", finance_user, amount=Decimal("6.00"))
    assert (line.tenant, line.amount) == (acme, Decimal("-6.00"))
    with pytest.raises(ValidationError, match=r"more than the 4\.00 EUR billed to acme "):
        credits.grant_credit(acme, OCTOBER, "Again", finance_user, amount=Decimal("4.01"))
    # The department was billed 10.00 itself, but its account has 4.00 left to credit.
    with pytest.raises(ValidationError, match=r"more than the 4\.00 EUR billed to acme "):
        credits.grant_credit(vision, OCTOBER, "Slow node", finance_user, amount=Decimal("5.00"))
    credits.grant_credit(vision, OCTOBER, "Slow node", finance_user, amount=Decimal("4.00"))
    demo = Tenant.objects.get(slug="demo-lab")
    with pytest.raises(ValidationError, match=r"more than the 0\.00 EUR billed to demo-lab "):
        credits.grant_credit(demo, OCTOBER, "x", finance_user, amount=Decimal("1"))
