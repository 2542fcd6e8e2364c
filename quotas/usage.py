"""Quota usage and budget burn, as admins and tenants see them (pages and API alike)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

from django.db import models
from django.db.models.functions import Coalesce, TruncDate

from factory.hierarchy import TenantTree
from factory.months import month_of
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job

from .models import Budget, Quota, Reservation


@dataclasses.dataclass(frozen=True)
class QuotaUsage:
    in_use: int
    pending: int
    nominal: int
    borrowing_limit: int | None

    @property
    def borrowed(self) -> int:
        return max(0, self.in_use - self.nominal)

    @property
    def within_nominal(self) -> int:
        return min(self.in_use, self.nominal)

    @property
    def scale(self) -> int:
        """The largest number the usage bar must show."""
        ceiling = self.nominal + (self.borrowing_limit or 0)
        return max(ceiling, self.in_use + self.pending, self.nominal, 1)

    def percent(self, value: int) -> float:
        return round(100 * value / self.scale, 1)


def usage_for(quotas: list[Quota]) -> dict[int, QuotaUsage]:
    """Usage of each quota (by quota id) from three queries, however many quotas: the GPUs held
    and asked for by the jobs of its tenant and of every tenant below it (a department's quota
    covers its projects')."""
    tree = TenantTree.load()
    tenants = {t for q in quotas for t in tree.subtree(q.tenant_id)} if quotas else set()
    rows = (
        Job.objects.filter(tenant_id__in=tenants)
        .filter(models.Q(state__in=HOLDING_STATES) | models.Q(state=JobState.PENDING))
        .values("tenant_id", "gpu_type_id", "state")
        .annotate(gpus=models.Sum("gpu_count"))
    )
    own: dict[tuple[str, int, int], int] = defaultdict(int)
    for row in rows:
        kind = "pending" if row["state"] == JobState.PENDING else "in_use"
        own[kind, row["tenant_id"], row["gpu_type_id"]] += row["gpus"]
    totals: dict[tuple[str, int, int], int] = defaultdict(int)
    for (kind, tenant, gpu_type), gpus in own.items():
        for above in tree.path(tenant):
            totals[kind, above, gpu_type] += gpus
    return {
        q.pk: QuotaUsage(
            in_use=totals["in_use", q.tenant_id, q.gpu_type_id],
            pending=totals["pending", q.tenant_id, q.gpu_type_id],
            nominal=q.nominal,
            borrowing_limit=q.borrowing_limit,
        )
        for q in quotas
    }


@dataclasses.dataclass(frozen=True)
class BudgetBurn:
    budget: Decimal | None
    used: Decimal  # settled jobs' real GPU-hours plus running jobs' reservations
    daily: list[tuple[date, Decimal]]  # cumulative GPU-hours by day of the month

    @property
    def left(self) -> Decimal | None:
        return None if self.budget is None else self.budget - self.used

    @property
    def percent(self) -> float:
        if not self.budget:
            return 0.0
        return round(float(100 * self.used / self.budget), 1)


def budget_burn(tenant, today: date | None = None) -> BudgetBurn:
    month = month_of(today)
    budget = Budget.objects.filter(tenant=tenant).first()
    # The tenant's budget caps every tenant below it too: theirs count.
    reservations = Reservation.objects.filter(tenant_id__in=TenantTree.load().subtree(tenant.pk), month=month)
    used = sum(reservations.gpu_hours_by_tenant(month).values(), Decimal(0))
    per_day = dict(
        reservations.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(hours=models.Sum(Coalesce("used_gpu_hours", "reserved_gpu_hours")))
        .values_list("day", "hours")
    )
    last = today or date.today()
    daily, running = [], Decimal(0)
    day = month
    while day <= last and day.month == month.month:
        running += per_day.get(day, Decimal(0))
        daily.append((day, running))
        day += timedelta(days=1)
    return BudgetBurn(budget=budget.gpu_hours_per_month if budget else None, used=used, daily=daily)
