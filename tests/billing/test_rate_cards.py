"""A rate card that has priced a ledger line is never edited or deleted: its price is on those lines.
A new price is a new card from a date (the old one ends that day); a billed card may only be
ended, after the last day it priced. The form, the API, the admin and platform files all refuse,
saying why."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing.models import RateCard, UsageRecord
from platform_config import applying, loading
from tests.jobs.test_api import client_for

pytestmark = pytest.mark.django_db

LAST_BILLED = date(2026, 3, 14)


@pytest.fixture
def card(h100) -> RateCard:
    return RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.00"), effective_from=date(2026, 1, 1)
    )


@pytest.fixture
def billed(card, tenant, h100, cluster) -> RateCard:
    """The card priced usage up to LAST_BILLED (a line starting that day)."""
    start = datetime(LAST_BILLED.year, LAST_BILLED.month, LAST_BILLED.day, 22, tzinfo=UTC)
    UsageRecord.objects.create(
        month=date(2026, 3, 1),
        period_start=start,
        period_end=start.replace(hour=23),
        tenant=tenant,
        cluster=cluster,
        gpu_type=h100,
        gpus=1,
        gpu_seconds=3600,
        rate_card=card,
        currency="EUR",
        amount=Decimal("2.00"),
    )
    return card


def test_a_billed_card_knows_the_last_day_it_priced(card, billed, a100):
    other = RateCard.objects.create(
        gpu_type=a100, currency="EUR", price_per_gpu_hour=Decimal("1"), effective_from=date(2026, 1, 1)
    )
    assert RateCard.objects.all().billed_through() == {card.pk: LAST_BILLED}
    assert billed.last_billed_day() == LAST_BILLED and other.last_billed_day() is None


def test_a_billed_cards_price_cannot_change(billed):
    billed.price_per_gpu_hour = Decimal("3.00")
    with pytest.raises(ValidationError) as refused:
        billed.full_clean()
    assert "2026-03-14" in refused.value.message_dict["price_per_gpu_hour"][0]
    assert "new price from a date" in refused.value.message_dict["price_per_gpu_hour"][0]
    with pytest.raises(ValidationError):
        billed.save()  # the rule holds whatever path saves it
    assert RateCard.objects.get(pk=billed.pk).price_per_gpu_hour == Decimal("2.00")


def test_a_billed_card_may_end_only_after_the_last_day_it_priced(billed):
    billed.effective_until = LAST_BILLED
    with pytest.raises(ValidationError) as refused:
        billed.full_clean()
    assert "2026-03-15 at the earliest" in refused.value.message_dict["effective_until"][0]
    billed.effective_until = date(2026, 3, 15)
    billed.full_clean()
    billed.save()


def test_a_billed_card_cannot_be_deleted(billed):
    with pytest.raises(ValidationError, match="priced usage"):
        billed.delete()
    assert RateCard.objects.filter(pk=billed.pk).exists()


def test_a_new_price_from_a_date_ends_the_old_card_that_day(billed):
    new = billed.supersede(date(2026, 4, 1), price_per_gpu_hour=Decimal("2.50"))
    billed.refresh_from_db()
    assert billed.effective_until == date(2026, 4, 1) and billed.price_per_gpu_hour == Decimal("2.00")
    assert (new.effective_from, new.effective_until, new.price_per_gpu_hour) == (
        date(2026, 4, 1),
        None,
        Decimal("2.50"),
    )
    assert (new.gpu_type_id, new.currency) == (billed.gpu_type_id, "EUR")


def test_a_new_price_cannot_start_on_a_day_already_billed(billed):
    with pytest.raises(ValidationError) as refused:
        billed.supersede(LAST_BILLED, price_per_gpu_hour=Decimal("2.50"))
    assert "2026-03-15 at the earliest" in refused.value.message_dict["effective_from"][0]
    assert RateCard.objects.count() == 1
    assert RateCard.objects.get().effective_until is None


# --- the form -----------------------------------------------------------------------------------

FORM = {
    "price_per_gpu_hour": "3.00",
    "price_per_cpu_core_hour": "0",
    "price_per_memory_gb_hour": "0",
    "effective_from": "2026-01-01",
}


def edit_form(card, **changes) -> dict:
    data = {**FORM, "gpu_type": card.gpu_type_id, "currency": "EUR", **changes}
    return {name: value for name, value in data.items() if value is not None}


def test_the_edit_form_refuses_to_change_a_billed_card(client, finance_user, billed):
    client.force_login(finance_user)
    page = client.get(f"/billing/prices/{billed.pk}/").content.decode()
    assert "billed usage up to 2026-03-14" in page and f"/billing/prices/?replace={billed.pk}" in page
    refused = client.post(f"/billing/prices/{billed.pk}/", edit_form(billed))
    assert refused.status_code == 400
    assert "cannot be changed" in refused.content.decode()
    assert RateCard.objects.get(pk=billed.pk).price_per_gpu_hour == Decimal("2.00")


def test_the_edit_form_changes_a_card_never_billed(client, finance_user, card):
    client.force_login(finance_user)
    saved = client.post(f"/billing/prices/{card.pk}/", edit_form(card))
    assert saved.status_code == 302
    assert RateCard.objects.get(pk=card.pk).price_per_gpu_hour == Decimal("3.00")


def test_the_list_offers_a_new_price_from_a_date_and_deletes_only_unbilled_cards(
    client, finance_user, billed, a100
):
    unbilled = RateCard.objects.create(
        gpu_type=a100, currency="EUR", price_per_gpu_hour=Decimal("1"), effective_from=date(2026, 1, 1)
    )
    client.force_login(finance_user)
    page = client.get("/billing/prices/").content.decode()
    assert "2026-03-14" in page  # billed through
    assert f"/billing/prices/{unbilled.pk}/delete/" in page
    assert f"/billing/prices/{billed.pk}/delete/" not in page
    refused = client.post(f"/billing/prices/{billed.pk}/delete/", follow=True)
    assert "cannot be deleted" in refused.content.decode()
    assert RateCard.objects.filter(pk=billed.pk).exists()
    assert client.post(f"/billing/prices/{unbilled.pk}/delete/").status_code == 302
    assert not RateCard.objects.filter(pk=unbilled.pk).exists()


def test_a_new_price_from_a_date_in_the_form(client, finance_user, billed):
    client.force_login(finance_user)
    form = client.get(f"/billing/prices/?replace={billed.pk}").content.decode()
    assert 'name="replaces"' in form and "2.00" in form
    data = {"replaces": billed.pk, **FORM, "price_per_gpu_hour": "2.40", "effective_from": "2026-03-14"}
    too_early = client.post("/billing/prices/", data)
    assert too_early.status_code == 400 and "2026-03-15 at the earliest" in too_early.content.decode()
    assert client.post("/billing/prices/", {**data, "effective_from": "2026-04-01"}).status_code == 302
    billed.refresh_from_db()
    assert billed.effective_until == date(2026, 4, 1)
    assert RateCard.objects.get(effective_from=date(2026, 4, 1)).price_per_gpu_hour == Decimal("2.40")


# --- the API ------------------------------------------------------------------------------------


def test_the_api_refuses_to_change_or_delete_a_billed_card(finance_user, billed):
    api = client_for(finance_user)
    changed = api.patch(f"/api/v1/rate-cards/{billed.pk}/", {"price_per_gpu_hour": "9.00"}, format="json")
    assert changed.status_code == 400
    assert "cannot be changed" in changed.json()["price_per_gpu_hour"][0]
    deleted = api.delete(f"/api/v1/rate-cards/{billed.pk}/")
    assert deleted.status_code == 409 and "cannot be deleted" in deleted.json()["detail"]
    ended = api.patch(f"/api/v1/rate-cards/{billed.pk}/", {"effective_until": "2026-03-20"}, format="json")
    assert ended.status_code == 200, ended.content
    assert RateCard.objects.get(pk=billed.pk).price_per_gpu_hour == Decimal("2.00")


def test_the_api_changes_and_deletes_a_card_never_billed(finance_user, card):
    api = client_for(finance_user)
    changed = api.patch(f"/api/v1/rate-cards/{card.pk}/", {"price_per_gpu_hour": "9.00"}, format="json")
    assert changed.status_code == 200, changed.content
    assert api.delete(f"/api/v1/rate-cards/{card.pk}/").status_code == 204


def test_the_api_makes_a_new_price_from_a_date(finance_user, auditor, billed):
    body = {"effective_from": "2026-05-01", "price_per_gpu_hour": "2.20"}
    assert client_for(auditor).post(f"/api/v1/rate-cards/{billed.pk}/replace/", body).status_code == 403
    api = client_for(finance_user)
    refused = api.post(f"/api/v1/rate-cards/{billed.pk}/replace/", {**body, "effective_from": "2026-03-01"})
    assert refused.status_code == 400 and "effective_from" in refused.json()
    made = api.post(f"/api/v1/rate-cards/{billed.pk}/replace/", body, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["effective_from"] == "2026-05-01" and made.json()["price_per_gpu_hour"] == "2.2000"
    assert RateCard.objects.get(pk=billed.pk).effective_until == date(2026, 5, 1)


# --- the admin ----------------------------------------------------------------------------------


def test_the_admin_shows_a_billed_card_read_only_but_its_end(client, finance_user, billed):
    client.force_login(finance_user)
    page = client.get(f"/admin/billing/ratecard/{billed.pk}/change/").content.decode()
    assert 'name="effective_until"' in page and 'name="price_per_gpu_hour"' not in page
    assert "2026-03-14" in page
    assert client.get(f"/admin/billing/ratecard/{billed.pk}/delete/").status_code == 403
    early = client.post(
        f"/admin/billing/ratecard/{billed.pk}/change/",
        {"effective_until": "2026-03-10"},
    )
    assert early.status_code == 200 and "2026-03-15 at the earliest" in early.content.decode()
    assert RateCard.objects.get(pk=billed.pk).effective_until is None


# --- platform files -----------------------------------------------------------------------------

PLATFORM = """
gpu_types:
- {slug: h100, name: H100}
rate_cards:
- {gpu_type: h100, currency: EUR, price_per_gpu_hour: "%s", effective_from: 2026-01-01%s}
"""


def test_a_platform_file_cannot_reprice_a_billed_card(billed):
    with pytest.raises(loading.Invalid) as refused:
        applying.apply(loading.from_texts([("prices.yaml", PLATFORM % ("2.75", ""))]))
    problems = {p.path: p.message for p in refused.value.problems}
    assert "2026-03-14" in problems["prices.yaml: rate_cards[0].price_per_gpu_hour"]
    assert RateCard.objects.get().price_per_gpu_hour == Decimal("2.00")
    with pytest.raises(loading.Invalid) as early:
        applying.apply(
            loading.from_texts([("prices.yaml", PLATFORM % ("2.00", ", effective_until: 2026-03-01"))])
        )
    assert "2026-03-15 at the earliest" in str(early.value.problems)
    applying.apply(
        loading.from_texts([("prices.yaml", PLATFORM % ("2.00", ", effective_until: 2026-04-01"))])
    )
    assert RateCard.objects.get().effective_until == date(2026, 4, 1)
