"""Measured energy and GPU use of job attempts, from the energy rows the telemetry cycle keeps:
Σ over the attempt's GPUs (one row per UUID, so MIG instances count once) of the energy counter's
steps between the attempt's first and last sample there, resets handled scrape by scrape."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Max, Min, Sum

from .models import JobGpuEnergy

MJ_PER_KWH = Decimal(3_600_000_000)  # 1 kWh = 3.6 MJ = 3.6e9 mJ


@dataclasses.dataclass(frozen=True)
class JobUse:
    kwh: Decimal  # at the GPU boards, before PUE
    gpus: int
    samples: int
    utilisation_pct: float  # mean over the GPUs' samples
    memory_used_mib: float
    first_at: datetime
    last_at: datetime
    idle_since: datetime | None  # every GPU under the idle limit since then (None: one is busy)


def measured(pairs: Iterable[tuple[int, int]], batch: int = 2000) -> dict[tuple[int, int], JobUse]:
    """{(job id, attempt): JobUse} for the attempts that were seen on GPUs at least twice."""
    wanted = list(dict.fromkeys(pairs))
    found: dict[tuple[int, int], JobUse] = {}
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        jobs = {job for job, _ in chunk}
        rows = (
            JobGpuEnergy.objects.filter(job_id__in=jobs)
            .values("job_id", "attempt")
            .annotate(
                mj=Sum("measured_mj"),
                gpus=Count("pk"),
                samples=Sum("samples"),
                util=Sum("utilisation_sum"),
                mem=Sum("memory_sum"),
                first=Min("first_at"),
                last=Max("last_at"),
                busy=Max("busy_at"),
            )
        )
        keys = set(chunk)
        for row in rows:
            key = (row["job_id"], row["attempt"])
            if key not in keys or row["samples"] < 2 * row["gpus"]:
                continue
            found[key] = JobUse(
                kwh=Decimal(row["mj"]) / MJ_PER_KWH,
                gpus=row["gpus"],
                samples=row["samples"],
                utilisation_pct=row["util"] / row["samples"],
                memory_used_mib=row["mem"] / row["samples"],
                first_at=row["first"],
                last_at=row["last"],
                idle_since=row["busy"] if row["busy"] < row["last"] else None,
            )
    return found


def job_use(job) -> JobUse | None:
    return measured([(job.pk, job.attempt)]).get((job.pk, job.attempt))


def idle_for(use: JobUse | None, *, limit_minutes: float) -> timedelta | None:
    """How long every GPU of a running job has been under the idle limit, if at least
    `limit_minutes`; else None."""
    if use is None or use.idle_since is None:
        return None
    idle = use.last_at - use.idle_since
    return idle if idle >= timedelta(minutes=limit_minutes) else None


__all__ = ["MJ_PER_KWH", "JobUse", "idle_for", "job_use", "measured"]
