"""Finance's changes to what is billed: credits and corrections.

Both are new ledger lines, never edits: a credit names its period and its reason, a correction
names the line it corrects. Each records who made it. They are billed in the first open month
(so in the next invoice) through the same path as metered lines, under the same lock, and a
refusal is a ValidationError per field that changes nothing.
"""

from __future__ import annotations

import logging
from datetime import date
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models, transaction

from factory.models import GpuType, Tenant
from factory.months import month_begins, month_of, next_month

from .metering import Pricing, rate_for, record
from .models import ZERO, MonthClose, UsageKind, UsageRecord, to_cents

log = logging.getLogger(__name__)


def tree(tenant_id: int) -> list[int]:
    """A tenant and every tenant below it (its departments and their teams)."""
    children: dict[int | None, list[int]] = {}
    for pk, parent in Tenant.objects.values_list("pk", "parent_id"):
        children.setdefault(parent, []).append(pk)
    found, todo = [], [tenant_id]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def billed_for_period(tenants: list[int], month: date, currency: str) -> Decimal:
    """What these tenants have been billed for a month in one currency, credits for it included
    (those billed in later months too)."""
    total = (
        UsageRecord.objects.filter(tenant__in=tenants, currency=currency)
        .filter(
            models.Q(month=month)
            | models.Q(kind=UsageKind.CREDIT, period_start=month_begins(month)) & ~models.Q(month=month)
        )
        .aggregate(total=models.Sum("amount"))["total"]
    )
    return to_cents(total or ZERO)


def credit_limits(tenant: Tenant, account_id: int) -> list[tuple[str, list[int]]]:
    """Whose bill a credit to `tenant` may not exceed: the tenant's with what is billed to it
    (its departments' and teams'), and its billing account's, so that credits to an account and
    to its departments together never exceed what the account was billed."""
    limits = [(tenant.slug, tree(tenant.pk))]
    if account_id != tenant.pk:
        limits.append((Tenant.objects.get(pk=account_id).slug, tree(account_id)))
    return limits


def grant_credit(
    tenant: Tenant,
    month: date,
    reason: str,
    user,
    *,
    amount: Decimal | None = None,
    gpu_hours: Decimal | None = None,
    gpu_type: GpuType | None = None,
    currency: str = "",
) -> UsageRecord:
    """Credit a tenant for a month, as an amount or as GPU-hours of a GPU type (priced by the
    rate card in force at the month's start). Refused when it exceeds what the month billed."""
    errors: dict[str, str] = {}
    if not reason.strip():
        errors["reason"] = "Say why the credit is granted."
    if month > month_of():
        errors["month"] = "A credit is for a month that has begun."
    if (amount is None) == (gpu_hours is None):
        errors["amount"] = "Give either an amount or GPU-hours."
    elif amount is not None and amount <= 0:
        errors["amount"] = "A credit is a positive amount."
    elif gpu_hours is not None and gpu_hours <= 0:
        errors["gpu_hours"] = "Credit a positive number of GPU-hours."
    elif gpu_hours is not None and gpu_type is None:
        errors["gpu_type"] = "Name the GPU type the GPU-hours are of."
    if errors:
        raise ValidationError(errors)
    card = None
    if amount is not None:
        amount = to_cents(amount)
    account_id, account_currency = Pricing().account(tenant.pk)
    if gpu_hours is not None:
        card = rate_for(gpu_type.pk, None, month, account_id, account_currency)
        if card is None:
            raise ValidationError({"gpu_type": f"No price for {gpu_type.slug} in {month:%B %Y}."})
        amount = to_cents(gpu_hours * card.price_per_gpu_hour)
    with transaction.atomic():
        # One credit decision at a time in a billing account.
        Tenant.objects.select_for_update().get(pk=account_id)
        currency = currency or account_currency
        if currency != account_currency:
            raise ValidationError(
                {
                    "currency": f"{tenant.slug} is billed in {account_currency}: "
                    f"a credit in {currency} is refused."
                }
            )
        for name, tenants in credit_limits(tenant, account_id):
            billed = billed_for_period(tenants, month, currency)
            if amount > billed:
                raise ValidationError(
                    {
                        "amount": f"A credit of {amount} {currency} is more than the {billed} {currency} "
                        f"billed to {name} for {month:%B %Y} (credits already granted deducted)."
                    }
                )
        line = UsageRecord(
            kind=UsageKind.CREDIT,
            month=month,
            period_start=month_begins(month),
            period_end=month_begins(next_month(month)),
            tenant=tenant,
            cost_center=tenant.cost_center,
            gpu_type=gpu_type,
            gpus=0,
            gpu_seconds=-int(gpu_hours * 3600) if gpu_hours is not None else 0,
            rate_card=card,
            currency=currency,
            amount=-amount,
            note=reason.strip()[:300],
            created_by=user,
        )
        record([line])
    log.info(
        "credit %s %s to %s for %s by %s: %s", amount, currency, tenant.slug, f"{month:%Y-%m}", user, reason
    )
    return line


def correct_line(line: UsageRecord, amount: Decimal, reason: str, user, *, gpu_hours: Decimal | None = None):
    """Correct a line of a closed month to `amount` (and optionally `gpu_hours`): a new line of
    the difference, naming it, billed in the first open month. A line of an open month is not
    corrected: its price comes from the rate card, which is what to correct."""
    errors: dict[str, str] = {}
    if not reason.strip():
        errors["reason"] = "Say why the line is corrected."
    if not MonthClose.objects.filter(month=line.month).exists():
        errors["line"] = (
            f"{line.month:%B %Y} is still open: correct the rate card instead (or credit the tenant); "
            "only lines of closed months are corrected."
        )
    elif line.corrections.filter(kind=UsageKind.CORRECTION).exists():
        errors["line"] = "This line is corrected already: correct its correction instead."
    if errors:
        raise ValidationError(errors)
    seconds = line.gpu_seconds if gpu_hours is None else int(gpu_hours * 3600)
    correction = UsageRecord(
        job_id=line.job_id,
        attempt=line.attempt,
        kind=UsageKind.CORRECTION,
        corrects=line,
        month=line.month,
        period_start=line.period_start,
        period_end=line.period_end,
        tenant_id=line.tenant_id,
        cost_center=line.cost_center,
        cluster_id=line.cluster_id,
        gpu_type_id=line.gpu_type_id,
        gpus=line.gpus,
        gpu_seconds=seconds - line.gpu_seconds,
        rate_card_id=line.rate_card_id,
        currency=line.currency,
        amount=to_cents(amount) - line.amount,
        note=reason.strip()[:300],
        created_by=user,
    )
    inserted = record([correction])
    if not inserted:
        raise ValidationError({"line": "This line is corrected already: correct its correction instead."})
    log.info("correction of line %s to %s by %s: %s", line.pk, amount, user, reason)
    return inserted[0]
