"""Admission: which pending job gets GPUs next, on which cluster, and why the rest wait.

Pools (cluster × GPU type) have a capacity that admission never exceeds; the pool rows are locked
while a job is placed, so concurrent admissions on PostgreSQL cannot oversubscribe one.
"""

from __future__ import annotations

import dataclasses

from django.db import models, transaction

from factory.models import Pool
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job


@dataclasses.dataclass(frozen=True)
class Placement:
    pool: Pool | None
    reason: str


def admit_pending(limit: int = 1000) -> int:
    """Admit as many pending jobs as fit, in order of priority then submit time."""
    admitted = 0
    pending = (
        Job.objects.filter(state=JobState.PENDING)
        .select_related("gpu_type", "tenant")
        .order_by("-priority", "created_at", "id")[:limit]
    )
    for job in pending:
        admitted += admit(job)
    return admitted


def admit(job: Job) -> bool:
    with transaction.atomic():
        placement = place(job)
        if placement.pool is None:
            job.explain_wait(placement.reason)
            return False
        return job.admit(placement.pool.cluster, message=f"Admitted: {placement.reason}")


def place(job: Job) -> Placement:
    """The least loaded pool with room for the job among the clusters the tenant may use.
    Must run inside a transaction: it locks the candidate pools."""
    pools = list(
        Pool.objects.select_for_update()
        .filter(gpu_type=job.gpu_type, cluster__enabled=True, cluster__draining=False)
        .select_related("cluster")
        .order_by("pk")
    )
    if job.tenant.regions:
        pools = [p for p in pools if p.cluster.region in job.tenant.regions]
        if not pools:
            regions = ", ".join(job.tenant.regions)
            return Placement(None, f"no cluster in region {regions} has {job.gpu_type} GPUs")
    if not pools:
        return Placement(None, f"no cluster accepting jobs has {job.gpu_type} GPUs")
    in_use = _gpus_in_use(pools)
    fitting = [p for p in pools if p.capacity - in_use[p.pk] >= job.gpu_count]
    if not fitting:
        best = max(pools, key=lambda p: p.capacity - in_use[p.pk])
        return Placement(
            None,
            f"waiting for {job.gpu_count} free {job.gpu_type} GPU(s): "
            f"{in_use[best.pk]} of {best.capacity} in use on {best.cluster}",
        )
    pool = min(fitting, key=lambda p: (in_use[p.pk] / p.capacity, p.pk))
    return Placement(pool, f"{job.gpu_count} {job.gpu_type} on {pool.cluster} (least loaded)")


def _gpus_in_use(pools: list[Pool]) -> dict[int, int]:
    rows = (
        Job.objects.filter(state__in=HOLDING_STATES, gpu_type_id=pools[0].gpu_type_id)
        .filter(cluster_id__in=[p.cluster_id for p in pools])
        .values("cluster_id")
        .annotate(total=models.Sum("gpu_count"))
    )
    by_cluster = {row["cluster_id"]: row["total"] for row in rows}
    return {p.pk: by_cluster.get(p.cluster_id, 0) for p in pools}
