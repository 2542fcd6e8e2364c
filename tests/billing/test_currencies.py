"""A billing account is billed in one currency: its own (BillingAccount) or the portal's."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing import credits, invoicing, metering
from billing.models import BillingAccount, Invoice, RateCard, UsageRecord
from factory.models import Membership, Tenant
from tests.jobs.test_api import client_for

from .conftest import at

pytestmark = pytest.mark.django_db


@pytest.fixture
def dollars(prices, h100, django_user_model):
    """acme, billed in USD, with a department; an h100 price in USD for USD accounts."""
    acme = Tenant.objects.create(slug="acme", name="Acme")
    lab = Tenant.objects.create(slug="acme-lab", name="Acme Lab", parent=acme)
    BillingAccount.objects.create(tenant=acme, currency="USD")
    RateCard.objects.create(
        gpu_type=h100, currency="USD", price_per_gpu_hour=Decimal("3.00"), effective_from=date(2026, 1, 1)
    )
    bob = django_user_model.objects.create_user("bob", password="pw-bob")
    Membership.objects.create(user=bob, tenant=lab)
    return {"acme": acme, "lab": lab, "bob": bob}


def meter(job):
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)


def test_each_account_is_priced_only_in_its_currency(dollars, ran, a100, finance_user):
    euros = ran(at(2026, 10, 2, 9), at(2026, 10, 2, 11))  # demo-lab: 2 h × 2.50 EUR
    usd = ran(at(2026, 10, 2, 9), at(2026, 10, 2, 11), tenant=dollars["lab"], owner=dollars["bob"])
    unpriced = ran(
        at(2026, 10, 3, 9), at(2026, 10, 3, 10), tenant=dollars["lab"], owner=dollars["bob"], gpu_type=a100
    )
    for job in (euros, usd, unpriced):
        meter(job)
    assert [(line.currency, line.amount) for line in UsageRecord.objects.order_by("id")] == [
        ("EUR", Decimal("5.00")),
        ("USD", Decimal("6.00")),
        ("", Decimal("0")),  # a100 has no USD price: recorded, not charged in euros
    ]
    invoicing.close_month(date(2026, 10, 1), finance_user)
    assert {i.account_slug: i.totals for i in Invoice.objects.all()} == {
        "acme": {"USD": "6.00"},
        "demo-lab": {"EUR": "5.00"},
    }


def test_a_price_for_an_account_in_another_currency_is_refused(dollars, finance_user, h100):
    api = client_for(finance_user)
    body = {
        "gpu_type": "h100",
        "billing_account": "acme",
        "currency": "EUR",
        "price_per_gpu_hour": "2.00",
        "effective_from": "2026-06-01",
    }
    response = api.post("/api/v1/rate-cards/", body, format="json")
    assert response.status_code == 400 and "acme is billed in USD" in response.json()["currency"][0]
    assert api.post("/api/v1/rate-cards/", {**body, "currency": "USD"}, format="json").status_code == 201
    department = api.post(
        "/api/v1/rate-cards/", {**body, "currency": "USD", "billing_account": "acme-lab"}, format="json"
    )
    assert department.status_code == 400 and "billing_account" in department.json()


def test_an_accounts_own_price_beats_the_general_one(dollars, ran, h100):
    RateCard.objects.create(
        gpu_type=h100,
        billing_account=dollars["acme"],
        currency="USD",
        price_per_gpu_hour=Decimal("2.00"),
        effective_from=date(2026, 1, 1),
    )
    meter(ran(at(2026, 10, 2, 9), at(2026, 10, 2, 11), tenant=dollars["lab"], owner=dollars["bob"]))
    assert UsageRecord.objects.get().amount == Decimal("4.00")


def test_an_accounts_currency_is_fixed_once_billed_and_credits_follow_it(dollars, ran, finance_user):
    meter(ran(at(2026, 10, 2, 9), at(2026, 10, 2, 11), tenant=dollars["lab"], owner=dollars["bob"]))
    account = BillingAccount.objects.get(tenant=dollars["acme"])
    account.currency = "EUR"
    with pytest.raises(ValidationError, match="billed in USD"):
        account.full_clean()
    with pytest.raises(ValidationError, match="credit in EUR is refused"):
        credits.grant_credit(
            dollars["lab"], date(2026, 10, 1), "x", finance_user, amount=Decimal("1"), currency="EUR"
        )
    line = credits.grant_credit(dollars["lab"], date(2026, 10, 1), "x", finance_user, amount=Decimal("1"))
    assert line.currency == "USD"
    with pytest.raises(ValidationError, match="top of its tenant tree"):
        BillingAccount(tenant=dollars["lab"], currency="USD").full_clean()
