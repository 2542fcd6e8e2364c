"""Closing a month, and the invoices issued at the close.

A month closes once, and only once it is over. The close takes the billing lock exclusively:
metering in flight (which holds it shared) finishes first, and none starts until the close has
committed, so every line of the month is in the invoices and no line lands in a closed month.
The wait is bounded: past FACTORY_CLOSE_LOCK_TIMEOUT the close fails with a message and changes
nothing. Invoices are built from the ledger in one grouped query and numbered from one sequence
under that same lock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, models, transaction
from django.utils import timezone

from factory.models import Cluster, GpuType, Tenant
from factory.months import month_begins, month_of

from .metering import billing_lock
from .models import ZERO, Invoice, InvoiceLine, InvoiceSection, MonthClose, UsageKind, UsageRecord

log = logging.getLogger(__name__)


def section_of(kind: str, earlier: bool) -> InvoiceSection:
    """Which part of an invoice a ledger line belongs in (the rule of UsageRecord.is_correction):
    credits granted, charges of a period before the invoice's month billed in it, and the month's
    usage."""
    if kind == UsageKind.CREDIT:
        return InvoiceSection.CREDIT
    return InvoiceSection.CORRECTION if earlier else InvoiceSection.USAGE


def billing_accounts() -> dict[int, Tenant]:
    """Each tenant's billing account: the top of its tenant tree (a department's teams are billed
    to the department's organisation)."""
    tenants = {t.pk: t for t in Tenant.objects.only("slug", "name", "parent_id")}

    def root(tenant: Tenant) -> Tenant:
        seen = set()
        while tenant.parent_id and tenant.parent_id in tenants and tenant.pk not in seen:
            seen.add(tenant.pk)
            tenant = tenants[tenant.parent_id]
        return tenant

    return {pk: root(tenant) for pk, tenant in tenants.items()}


def close_month(month: date, user) -> MonthClose:
    """Close a past month and issue its invoices. Refused (ValidationError on `month`) for this
    or a future month, for a month already closed, and when metering holds the ledger too long."""
    if month >= month_of():
        raise ValidationError({"month": "Only a past month can be closed."})
    try:
        with transaction.atomic():
            bounded_wait()
            billing_lock(shared=False)  # waits for metering in flight; none starts until commit
            if MonthClose.objects.filter(month=month).exists():
                raise ValidationError({"month": f"{month:%B %Y} is already closed; its invoices are issued."})
            closed = MonthClose.objects.create(month=month, closed_by=user)
            invoices = issue_invoices(month)
    except OperationalError as exc:
        if "lock timeout" not in str(exc) and "lock_timeout" not in str(exc):
            raise
        raise ValidationError(
            {"month": "Metering is writing to the ledger right now; nothing was closed. Try again shortly."}
        ) from None
    log.info("closed %s: %d invoices", f"{month:%Y-%m}", len(invoices))
    return closed


def bounded_wait() -> None:
    """For the close's transaction: a bounded wait for the billing lock, and memory enough to sum
    the month's lines by account in one hash table."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('work_mem', '64MB', true)",
                [f"{settings.FACTORY_CLOSE_LOCK_TIMEOUT}s"],
            )


@dataclasses.dataclass
class Draft:
    lines: list[InvoiceLine] = dataclasses.field(default_factory=list)
    totals: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    energy_kwh: Decimal = ZERO
    co2e_kg: Decimal = ZERO
    ledger_lines: int = 0


def issue_invoices(month: date) -> list[Invoice]:
    """One invoice per billing account with lines in the month, numbered in account order after
    the last number issued. Runs inside the close, under the exclusive billing lock."""
    accounts = billing_accounts()
    gpu_types = dict(GpuType.objects.values_list("pk", "slug"))
    clusters = dict(Cluster.objects.values_list("pk", "slug"))
    drafts: dict[int, Draft] = defaultdict(Draft)
    earlier = models.ExpressionWrapper(
        models.Q(period_start__lt=month_begins(month)), output_field=models.BooleanField()
    )
    # Grouped by plain columns, whose few combinations PostgreSQL foresees: it sums the month in
    # one pass into a hash table, where a grouping it cannot foresee made it sort every line.
    grouped = (
        UsageRecord.objects.filter(month=month)
        .annotate(earlier=earlier)
        .values("tenant_id", "kind", "earlier", "gpu_type_id", "cluster_id", "currency")
        .annotate(
            seconds=models.Sum("gpu_seconds"),
            amount=models.Sum("amount"),
            kwh=models.Sum("energy_kwh"),
            co2e=models.Sum("co2e_kg"),
            count=models.Count("id"),
        )
        .order_by()
    )
    merged: dict[tuple, dict] = {}
    for row in grouped:  # several tenants of one account share its invoice lines
        account = accounts[row["tenant_id"]]
        section = section_of(row["kind"], row["earlier"])
        key = (account.pk, section, row["gpu_type_id"], row["cluster_id"], row["currency"])
        into = merged.setdefault(key, {"seconds": 0, "amount": ZERO, "kwh": ZERO, "co2e": ZERO, "count": 0})
        for name in ("seconds", "amount", "kwh", "co2e", "count"):
            into[name] += row[name] or 0
    for (account_id, section, gpu_type_id, cluster_id, currency), row in sorted(
        merged.items(),
        key=lambda item: (
            item[0][0],
            InvoiceLine.SECTION_ORDER[item[0][1]],
            gpu_types.get(item[0][2], ""),
            clusters.get(item[0][3], ""),
            item[0][4],
        ),
    ):
        draft = drafts[account_id]
        amount = Decimal(row["amount"]).quantize(Decimal("0.01"))
        draft.lines.append(
            InvoiceLine(
                section=section,
                gpu_type=gpu_types.get(gpu_type_id, ""),
                cluster=clusters.get(cluster_id, ""),
                currency=currency,
                gpu_seconds=row["seconds"],
                amount=amount,
                energy_kwh=Decimal(row["kwh"]).quantize(Decimal("0.0001")),
                co2e_kg=Decimal(row["co2e"]).quantize(Decimal("0.0001")),
                ledger_lines=row["count"],
            )
        )
        if currency:
            draft.totals[currency] = draft.totals.get(currency, ZERO) + amount
        draft.energy_kwh += draft.lines[-1].energy_kwh
        draft.co2e_kg += draft.lines[-1].co2e_kg
        draft.ledger_lines += row["count"]
    number = (Invoice.objects.aggregate(last=models.Max("number"))["last"] or 0) + 1
    now = timezone.now()
    by_id = {tenant.pk: tenant for tenant in accounts.values()}
    invoices = []
    for offset, account_id in enumerate(sorted(drafts, key=lambda pk: by_id[pk].slug)):
        draft, account = drafts[account_id], by_id[account_id]
        invoices.append(
            Invoice(
                number=number + offset,
                billing_account=account,
                account_slug=account.slug,
                account_name=account.name,
                month=month,
                issued_at=now,
                issue_date=now.date(),
                totals={currency: str(total) for currency, total in sorted(draft.totals.items())},
                energy_kwh=draft.energy_kwh,
                co2e_kg=draft.co2e_kg,
                ledger_lines=draft.ledger_lines,
            )
        )
    Invoice.objects.bulk_create(invoices)
    lines = []
    for invoice in invoices:
        for line in drafts[invoice.billing_account_id].lines:
            line.invoice = invoice
            lines.append(line)
    InvoiceLine.objects.bulk_create(lines, batch_size=5000)
    return invoices


def invoice_for(account: Tenant, month: date) -> Invoice:
    """The invoice of a billing account for a month; refused (ValidationError) for a month that is
    not closed. Invoice.DoesNotExist when the account had nothing billed in it."""
    if not MonthClose.objects.filter(month=month).exists():
        raise ValidationError(
            {"month": f"{month:%B %Y} is not closed: its invoices are issued at the close."}
        )
    return Invoice.objects.get(billing_account=account, month=month)


def account_tenants(invoice: Invoice) -> list[int]:
    """The tenants whose lines of the invoice's month make up the invoice."""
    return [pk for pk, root in billing_accounts().items() if root.pk == invoice.billing_account_id]
