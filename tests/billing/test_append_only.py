"""Ledger lines and issued invoices never change, whatever path tries: the models refuse it, and
PostgreSQL refuses it below them (bulk updates, queryset deletes, SQL by hand). A correction is a
new line; a month's mistakes go on a later invoice. A data migration that must rewrite them says so
explicitly (billing.immutable.repairing)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from billing import immutable, invoicing, metering
from billing.models import Invoice, InvoiceLine, UsageRecord

from .conftest import at

pytestmark = pytest.mark.django_db
OCTOBER = date(2026, 10, 1)


@pytest.fixture
def issued(prices, ran, finance_user):
    job = ran(at(2026, 10, 2, 9), at(2026, 10, 2, 11))
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    invoicing.close_month(OCTOBER, finance_user)
    return Invoice.objects.get(month=OCTOBER)


def refused(change) -> str:
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        change()
    return str(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda: UsageRecord.objects.update(amount=Decimal("0.01")),
        lambda: UsageRecord.objects.all().delete(),
        lambda: Invoice.objects.update(totals={"EUR": "0.00"}),
        lambda: InvoiceLine.objects.update(amount=Decimal(0)),
        lambda: InvoiceLine.objects.all().delete(),
    ],
    ids=["ledger-update", "ledger-delete", "invoice-update", "invoice-line-update", "invoice-line-delete"],
)
def test_bulk_changes_to_the_ledger_and_issued_invoices_are_refused(issued, change):
    before = (
        list(UsageRecord.objects.values_list("id", "amount")),
        issued.totals,
        list(InvoiceLine.objects.values_list("id", "amount")),
    )
    assert "append-only" in refused(change)
    after = (
        list(UsageRecord.objects.values_list("id", "amount")),
        Invoice.objects.get(pk=issued.pk).totals,
        list(InvoiceLine.objects.values_list("id", "amount")),
    )
    assert after == before and before[0] and before[2]


def test_sql_by_hand_is_refused_too(issued):
    def by_hand():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE billing_invoice SET totals = '{}'::jsonb")

    assert "billing_invoice is append-only" in refused(by_hand)


def test_new_lines_are_still_written_after_an_invoice(issued, ran):
    job = ran(at(2026, 11, 3, 9), at(2026, 11, 3, 10))
    metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    assert UsageRecord.objects.count() == 2 and Invoice.objects.get() == issued


def test_a_repair_must_say_so_and_lasts_one_transaction(issued):
    with transaction.atomic(), immutable.repairing():
        UsageRecord.objects.update(note="restated by migration 0042")
    assert set(UsageRecord.objects.values_list("note", flat=True)) == {"restated by migration 0042"}
    assert "append-only" in refused(lambda: UsageRecord.objects.update(note=""))
    with transaction.atomic():
        with immutable.repairing():
            pass
        assert "append-only" in refused(lambda: UsageRecord.objects.update(note=""))  # the block ended
