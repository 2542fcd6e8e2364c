"""Before a job is submitted: what it will cost, what that does to the budget, whether admission
would place it now, and how long similar jobs waited lately. Nothing is written.

- Cost: the job's GPUs, CPUs and memory for its time limit, priced by the rate card the ledger
  would use today (the cluster admission would pick, else the GPU type's; asked through
  FACTORY_BILLING_HOOKS); the most the job can cost, since it is billed for the time it runs.
- Budget: what is left this month before and after, in the budget's own unit (money in its
  currency, else GPU-hours), and whether a hard budget would hold the job.
- Admission: the rules of quotas/admission.py, asked of a snapshot as the next pass would see it;
  jobs of the same tenant and GPU type already waiting are counted (they go first at equal
  priority).
- Expected wait: if admission would place it now, the next pass (FACTORY_SYNC_INTERVAL). Otherwise
  the median and 90th percentile of the waits (submitted → admitted) of this tenant's jobs of the
  same GPU type admitted in the last 7 days; "unknown" below 5 of them, rather than a guess.
- An array or sweep: every task at its time limit, so cost, GPU-hours and the budget's change are
  the task's times the tasks; admission and wait are its first task's.
"""

from __future__ import annotations

import dataclasses
import statistics
from datetime import timedelta
from decimal import Decimal
from importlib import import_module

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from factory.models import GpuType, Tenant
from jobs.choices import JobState
from jobs.models import Job

from .admission import MoneyBudgets, PendingJob, Snapshot
from .models import Budget, Reservation
from .settlement import round_gpu_hours

HISTORY_DAYS = 7
HISTORY_JOBS = 200
MIN_SAMPLES = 5
CENT = Decimal("0.01")


@dataclasses.dataclass
class Estimate:
    tasks: int
    gpu_hours: Decimal
    price_per_gpu_hour: Decimal
    currency: str
    cost: Decimal
    budget: dict | None
    admits_now: bool
    admission: str
    queued_ahead: int
    wait_seconds_median: int | None
    wait_seconds_p90: int | None
    wait_samples: int
    wait_basis: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def estimate(tenant: Tenant, owner, spec: dict) -> Estimate:
    """The estimate for a valid job spec (the API's and the form's cleaned data). A GPU type with
    no price is a ValidationError on `gpu_type`."""
    gpu_type: GpuType = spec["gpu_type"]
    gpus, minutes = int(spec["gpu_count"]), int(spec["time_limit_minutes"])
    array = spec.get("array")
    tasks = array.size if array is not None else 1
    cluster = spec.get("requested_cluster")
    now = timezone.now()
    snapshot = Snapshot(now)
    pending = PendingJob(
        id=0,
        tenant_id=tenant.pk,
        owner_id=owner.pk,
        gpu_type_id=gpu_type.pk,
        gpu_count=gpus,
        priority=int(spec.get("priority") or 0),
        created_at=now,
        time_limit_minutes=minutes,
        reason="",
        attempt=0,
        image=spec.get("image") or "",
        nodes=int(spec.get("nodes") or 1),  # a gang: gpu_count is all its nodes' GPUs
        gpus_per_node=int(spec.get("gpus_per_node") or 0),
        cpus=spec.get("cpus"),
        memory_gb=spec.get("memory_gb"),
        requested_cluster_id=cluster.pk if cluster is not None else None,
        requested_region=spec.get("requested_region") or "",
    )
    decision = snapshot.decide(pending)
    # Priced as the ledger would price it: on the cluster admission would pick, else by GPU type.
    hooks = import_module(settings.FACTORY_BILLING_HOOKS)
    hours = Decimal(minutes) / 60
    priced = hooks.price_job(
        gpu_type.pk,
        decision.pool.cluster_id if decision.pool else None,
        gpus=gpus,
        cpus=int(spec.get("cpus") or 0),
        memory_gb=int(spec.get("memory_gb") or 0),
        hours=hours,
        tenant_id=tenant.pk,
    )
    if priced is None:
        raise ValidationError({"gpu_type": f"{gpu_type} GPUs have no price yet, so there is no estimate."})
    cost, currency, price = priced
    cost *= tasks
    gpu_hours = round_gpu_hours(Decimal(gpus * tasks) * hours)
    ahead = Job.objects.filter(
        tenant=tenant,
        gpu_type=gpu_type,
        state=JobState.PENDING,
        priority__gte=snapshot.effective_priority(pending),
    ).count()
    admits_now = decision.pool is not None and ahead == 0
    if decision.pool is not None:
        admission = f"fits now: {decision.reason}"
        if ahead:
            admission += f"; {ahead} of the tenant's {gpu_type} jobs wait ahead of it"
    else:
        admission = f"would wait: {decision.reason}"
    if array is not None:
        at_once = f", at most {array.max_running} at once" if array.max_running else ""
        admission = f"{tasks} tasks{at_once}; the first {admission}"
    median, p90, samples, basis = expected_wait(tenant, gpu_type, admits_now, now)
    return Estimate(
        tasks=tasks,
        gpu_hours=gpu_hours,
        price_per_gpu_hour=price,
        currency=currency,
        cost=cost,
        budget=budget_effect(snapshot, tenant, gpu_hours, cost, currency),
        admits_now=admits_now,
        admission=admission,
        queued_ahead=ahead,
        wait_seconds_median=median,
        wait_seconds_p90=p90,
        wait_samples=samples,
        wait_basis=basis,
    )


def budget_effect(snapshot: Snapshot, tenant: Tenant, gpu_hours: Decimal, cost: Decimal, currency: str):
    """What is left of the tenant's budget this month before and after the job at its time
    limit, counted as admission counts it (billed, plus what running jobs hold)."""
    budget = Budget.objects.filter(tenant=tenant).first()
    if budget is None:
        return None
    if budget.amount_per_month is not None:
        if budget.currency != currency:
            return {
                "unit": budget.currency,
                "left": None,
                "left_after": None,
                "hard": budget.hard,
                "holds_job": budget.hard,
                "note": f"the job is priced in {currency}, the budget is in {budget.currency}: "
                "amounts in different currencies are never added up",
            }
        left = MoneyBudgets({tenant.pk: budget}, snapshot.month, snapshot.tree).left[tenant.pk]
        return _effect(budget, budget.currency, left.quantize(CENT), (left - cost).quantize(CENT))
    if budget.gpu_hours_per_month is not None:
        below = snapshot.tree.subtree(tenant.pk)  # the budget caps every tenant below it too
        used = sum(
            Reservation.objects.filter(tenant_id__in=below).gpu_hours_by_tenant(snapshot.month).values()
        )
        left = budget.gpu_hours_per_month - used
        return _effect(budget, "GPU-hours", left, left - gpu_hours)
    return None


def _effect(budget: Budget, unit: str, left: Decimal, after: Decimal) -> dict:
    return {
        "unit": unit,
        "left": left,
        "left_after": after,
        "hard": budget.hard,
        "holds_job": budget.hard and after < 0,
        "note": "",
    }


def expected_wait(tenant: Tenant, gpu_type: GpuType, admits_now: bool, now) -> tuple:
    if admits_now:
        seconds = int(settings.FACTORY_SYNC_INTERVAL) or 1
        return seconds, seconds, 0, "admission would place it at its next pass"
    waits = [
        (admitted - created).total_seconds()
        for created, admitted in Job.objects.filter(
            tenant=tenant,
            gpu_type=gpu_type,
            admitted_at__gte=now - timedelta(days=HISTORY_DAYS),
            admitted_at__isnull=False,
        )
        .order_by("-admitted_at")
        .values_list("created_at", "admitted_at")[:HISTORY_JOBS]
    ]
    basis = (
        f"waits from submission to admission of the tenant's {gpu_type} jobs admitted in the last "
        f"{HISTORY_DAYS} days"
    )
    if len(waits) < MIN_SAMPLES:
        return None, None, len(waits), f"unknown: fewer than {MIN_SAMPLES} {basis}"
    deciles = statistics.quantiles(waits, n=10, method="inclusive")
    return int(statistics.median(waits)), int(deciles[8]), len(waits), basis
