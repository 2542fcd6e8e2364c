from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models.functions import Coalesce

from factory.querysets import TenantOwnedQuerySet


class QuotaQuerySet(TenantOwnedQuerySet):
    pass


class BudgetQuerySet(TenantOwnedQuerySet):
    pass


class ReservationQuerySet(models.QuerySet):
    def open(self) -> ReservationQuerySet:
        return self.filter(settled_at__isnull=True)

    def gpu_hours_by_tenant(self, month) -> dict[int, Decimal]:
        """GPU-hours counted against each tenant's budget in a month: what settled jobs really used,
        plus what admission reserved for jobs that still hold GPUs."""
        rows = (
            self.filter(month=month)
            .values("tenant_id")
            .annotate(
                total=models.Sum(
                    Coalesce("used_gpu_hours", "reserved_gpu_hours"),
                    output_field=models.DecimalField(max_digits=14, decimal_places=4),
                )
            )
        )
        return {row["tenant_id"]: row["total"] or Decimal(0) for row in rows}
