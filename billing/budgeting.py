"""Money budgets: what the ledger billed against them and what GPUs cost. Admission (quotas) asks
through FACTORY_BILLING_HOOKS; budget alerts and the spend panel ask directly."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db import models
from django.utils import timezone

from .models import ZERO, MonthlySummary, RateCard


def money_spent(currencies: dict[int, str], month: date) -> dict[int, Decimal]:
    """What the ledger billed each tenant and every tenant below it in a month (a department's
    budget caps its projects together), in the one currency that counts for it (its budget's):
    {tenant id: currency}. Lines billed in other currencies are other money and are never added
    in; there is no exchange rate to add them with."""
    from factory.hierarchy import TenantTree

    tree = TenantTree.load()
    below = {t for holder in currencies for t in tree.subtree(holder)}
    rows = (
        MonthlySummary.objects.filter(tenant_id__in=list(below), month=month)
        .values("tenant_id", "currency")
        .annotate(total=models.Sum("amount"))
    )
    spent: dict[int, Decimal] = {}
    for row in rows:
        for holder in tree.path(row["tenant_id"]):
            if currencies.get(holder) == row["currency"]:
                spent[holder] = spent.get(holder, ZERO) + (row["total"] or ZERO)
    return spent


def prices_per_gpu_hour(day: date | None = None) -> dict[int, tuple[Decimal, str]]:
    """Each GPU type's price in force today and its currency: {GPU type id: (price, currency)}
    (the GPU-type price; a cluster's own price may differ, but admission estimates before placing
    the job). A price counts only against a budget in its own currency."""
    day = day or timezone.now().date()
    cards = RateCard.objects.filter(cluster__isnull=True, effective_from__lte=day).filter(
        models.Q(effective_until__isnull=True) | models.Q(effective_until__gt=day)
    )
    return {
        gpu_type_id: (price, currency)
        for gpu_type_id, price, currency in cards.values_list("gpu_type_id", "price_per_gpu_hour", "currency")
    }


def price_job(
    gpu_type_id: int,
    cluster_id: int | None,
    *,
    gpus: int,
    cpus: int,
    memory_gb: int,
    hours: Decimal,
    tenant_id: int | None = None,
) -> tuple[Decimal, str, Decimal] | None:
    """(amount, currency, price per GPU-hour) of holding these resources for `hours` today, by the
    rate card the ledger would use (for the tenant's billing account, in its one currency: the
    account's own, the cluster's, else the GPU type's); None without one."""
    from .metering import Pricing, rate_for

    account_id, currency = Pricing().account(tenant_id) if tenant_id is not None else (None, None)
    card = rate_for(gpu_type_id, cluster_id, timezone.now().date(), account_id, currency)
    if card is None:
        return None
    amount = card.charge(gpus=gpus, cpus=cpus, memory_gb=memory_gb, hours=hours)
    return amount, card.currency, card.price_per_gpu_hour
