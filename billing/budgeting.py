"""What admission (quotas) asks billing about money budgets, through FACTORY_BILLING_HOOKS."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db import models
from django.utils import timezone

from .models import MonthlySummary, RateCard


def money_spent(tenant_ids: list[int], month: date) -> dict[int, Decimal]:
    """What the ledger billed each tenant this month (charged lines, all currencies as billed)."""
    rows = (
        MonthlySummary.objects.filter(tenant_id__in=tenant_ids, month=month)
        .values("tenant_id")
        .annotate(total=models.Sum("amount"))
    )
    return {row["tenant_id"]: row["total"] or Decimal(0) for row in rows}


def prices_per_gpu_hour(day: date | None = None) -> dict[int, Decimal]:
    """Each GPU type's price in force today (the GPU-type price; a cluster's own price may differ,
    but admission estimates before placing the job)."""
    day = day or timezone.now().date()
    cards = RateCard.objects.filter(cluster__isnull=True, effective_from__lte=day).filter(
        models.Q(effective_until__isnull=True) | models.Q(effective_until__gt=day)
    )
    return dict(cards.values_list("gpu_type_id", "price_per_gpu_hour"))
