"""Measured energy and GPU use of job attempts, whatever the cluster's telemetry source.

Embedded: from the energy rows the telemetry cycle keeps: Σ over the attempt's GPUs (one row per
UUID, so MIG instances count once) of the energy counter's steps between the attempt's first and
last sample there, resets handled scrape by scrape.

Prometheus: `increase()` of the counter over the attempt's run window, asked of Prometheus in a
few batched queries (fleet.sources.prometheus); utilisation, memory and idleness still come from
the rows the cycles keep. An attempt whose cluster's Prometheus cannot be asked now is named in
`Measurement.unavailable`, with why: its energy is estimated, and the ledger line says so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Max, Min, Sum
from django.utils import timezone

from jobs.models import Job

from .models import ClusterTelemetry, JobGpuEnergy

log = logging.getLogger(__name__)

MJ_PER_KWH = Decimal(3_600_000_000)  # 1 kWh = 3.6 MJ = 3.6e9 mJ


@dataclasses.dataclass(frozen=True)
class JobUse:
    kwh: Decimal  # at the GPU boards, before PUE
    gpus: int
    samples: int
    utilisation_pct: float | None  # mean over the GPUs' samples (None: no cycle saw the job)
    memory_used_mib: float | None
    first_at: datetime | None
    last_at: datetime | None
    idle_since: datetime | None  # every GPU under the idle limit since then (None: one is busy)


@dataclasses.dataclass(frozen=True)
class Window:
    """Where and when an attempt ran, for sources asked by time (a requeued job no longer says)."""

    cluster_id: int | None
    start: datetime
    end: datetime


@dataclasses.dataclass
class Measurement:
    uses: dict[tuple[int, int], JobUse] = dataclasses.field(default_factory=dict)
    unavailable: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Rows:
    mj: int
    gpus: int
    samples: int
    util: float
    mem: float
    first: datetime
    last: datetime
    busy: datetime


def measure(
    pairs: Iterable[tuple[int, int]], windows: dict[tuple[int, int], Window] | None = None, batch: int = 2000
) -> Measurement:
    """Measured use of (job id, attempt) pairs: embedded clusters' attempts seen on GPUs at least
    twice, Prometheus clusters' attempts it has energy series of."""
    wanted = list(dict.fromkeys(pairs))
    windows = windows or {}
    rows = _rows(wanted, batch)
    jobs = {
        j["pk"]: j
        for start in range(0, len(wanted), batch)
        for j in Job.objects.filter(pk__in={job for job, _ in wanted[start : start + batch]}).values(
            "pk",
            "attempt",
            "cluster_id",
            "cluster__kind",
            "external_id",
            "started_at",
            "ended_at",
            "gpu_count",
        )
    }
    cluster_of = _clusters(wanted, windows, jobs)
    prometheus = {
        t.cluster_id: t
        for t in ClusterTelemetry.objects.filter(
            cluster_id__in={c for c in cluster_of.values() if c}, source="prometheus"
        ).select_related("cluster")
    }
    found = Measurement()
    by_cluster: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for key in wanted:
        if cluster_of.get(key) in prometheus:
            by_cluster[cluster_of[key]].append(key)
        elif key in rows and rows[key].samples >= 2 * rows[key].gpus:
            found.uses[key] = _use(rows[key], Decimal(rows[key].mj))
    for cluster_id, keys in by_cluster.items():
        _from_prometheus(found, prometheus[cluster_id], keys, rows, jobs, windows)
    return found


def measured(
    pairs: Iterable[tuple[int, int]], windows: dict[tuple[int, int], Window] | None = None, batch: int = 2000
) -> dict[tuple[int, int], JobUse]:
    """{(job id, attempt): JobUse} for the attempts whose energy was measured."""
    return measure(pairs, windows, batch).uses


def _clusters(wanted, windows, jobs) -> dict[tuple[int, int], int | None]:
    """The cluster each attempt ran on: its window's, its job's (the current attempt), else that
    of the GPUs it was seen on (a requeued job no longer names it)."""
    found, unknown = {}, []
    for key in wanted:
        if key in windows:
            found[key] = windows[key].cluster_id
        elif key[0] in jobs and jobs[key[0]]["attempt"] == key[1]:
            found[key] = jobs[key[0]]["cluster_id"]
        else:
            unknown.append(key)
    if unknown:
        seen = JobGpuEnergy.objects.filter(job_id__in={job for job, _ in unknown}, gpu__isnull=False)
        for job, attempt, cluster in seen.values_list("job_id", "attempt", "gpu__cluster_id").distinct():
            found.setdefault((job, attempt), cluster)
    return found


def _rows(wanted: list[tuple[int, int]], batch: int) -> dict[tuple[int, int], _Rows]:
    found = {}
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        keys = set(chunk)
        rows = (
            JobGpuEnergy.objects.filter(job_id__in={job for job, _ in chunk})
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
        for row in rows:
            key = (row["job_id"], row["attempt"])
            if key in keys:
                found[key] = _Rows(
                    row["mj"],
                    row["gpus"],
                    row["samples"],
                    row["util"],
                    row["mem"],
                    row["first"],
                    row["last"],
                    row["busy"],
                )
    return found


def _use(rows: _Rows | None, mj: Decimal, gpus: int = 0) -> JobUse:
    kwh = mj / MJ_PER_KWH
    if rows is None or not rows.samples:
        return JobUse(kwh, gpus, 0, None, None, None, None, None)
    return JobUse(
        kwh=kwh,
        gpus=rows.gpus,
        samples=rows.samples,
        utilisation_pct=rows.util / rows.samples,
        memory_used_mib=rows.mem / rows.samples,
        first_at=rows.first,
        last_at=rows.last,
        idle_since=rows.busy if rows.busy < rows.last else None,
    )


def _from_prometheus(found: Measurement, telemetry, keys, rows, jobs, windows) -> None:
    from .promql import PrometheusUnavailable
    from .sources.prometheus import AttemptWindow, energy_mj

    if telemetry.unavailable_since is not None:
        why = f"GPU telemetry unavailable since {telemetry.unavailable_since:%Y-%m-%d %H:%M} UTC"
        found.unavailable.update(dict.fromkeys(keys, why))
        return
    uuids: dict[tuple[int, int], list[str]] = defaultdict(list)
    for job_id, attempt, uuid in JobGpuEnergy.objects.filter(job_id__in={k[0] for k in keys}).values_list(
        "job_id", "attempt", "gpu_uuid"
    ):
        uuids[job_id, attempt].append(uuid)
    now = timezone.now()
    attempts = []
    for key in keys:
        job = jobs.get(key[0])
        current = job is not None and job["attempt"] == key[1]
        if key in windows:
            start, end = windows[key].start, windows[key].end
        elif current and job["started_at"]:
            start, end = job["started_at"], job["ended_at"] or now
        elif key in rows:
            start, end = rows[key].first, rows[key].last
        else:
            continue
        attempts.append(
            AttemptWindow(
                key=key,
                start=start,
                end=end,
                kind=telemetry.cluster.kind,
                external_id=job["external_id"] if current else "",
                uuids=tuple(sorted(uuids.get(key, ()))),
                gpus=job["gpu_count"] if job else 1,
            )
        )
    try:
        energy = energy_mj(telemetry, attempts)
    except PrometheusUnavailable as exc:
        log.warning("energy of %d job attempt(s) on %s: %s", len(attempts), telemetry.cluster, exc)
        where = f"Prometheus at {telemetry.prometheus.get('url', '?')}: {exc}"
        # Until the next cycle gets an answer, pages and metering do not wait for it again.
        telemetry.mark_unavailable(where, now)
        found.unavailable.update(dict.fromkeys(keys, f"GPU telemetry unavailable: {where}"[:250]))
        return
    for attempt in attempts:
        if attempt.key in energy:
            mj = Decimal(round(energy[attempt.key]))
            found.uses[attempt.key] = _use(rows.get(attempt.key), mj, gpus=len(attempt.uuids) or attempt.gpus)


def job_use(job) -> JobUse | None:
    return measured([(job.pk, job.attempt)]).get((job.pk, job.attempt))


def idle_for(use: JobUse | None, *, limit_minutes: float) -> timedelta | None:
    """How long every GPU of a running job has been under the idle limit, if at least
    `limit_minutes`; else None."""
    if use is None or use.idle_since is None or use.last_at is None:
        return None
    idle = use.last_at - use.idle_since
    return idle if idle >= timedelta(minutes=limit_minutes) else None


__all__ = ["MJ_PER_KWH", "JobUse", "Measurement", "Window", "idle_for", "job_use", "measure", "measured"]
