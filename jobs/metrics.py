"""Jobs' figures for /metrics: counts read when scraped, and the dispatch latency observed."""

from __future__ import annotations

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from .choices import AT_BACKEND_STATES, JobState
from .models import Job

DISPATCH_LATENCY = Histogram(
    "factory_dispatch_latency_seconds",
    "Seconds from a job's admission to its backend accepting it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


def observe_dispatch(jobs) -> None:
    now = timezone.now()
    for job in jobs:
        if job.admitted_at:
            DISPATCH_LATENCY.observe(max(0.0, (now - job.admitted_at).total_seconds()))


def collect():
    jobs = GaugeMetricFamily(
        "factory_jobs", "Jobs by state, tenant and GPU type.", labels=["state", "tenant", "gpu_type"]
    )
    pending = GaugeMetricFamily(
        "factory_pending_workloads",
        "Jobs waiting for admission, by tenant and GPU type.",
        labels=["tenant", "gpu_type"],
    )
    rows = (
        Job.objects.values_list("state", "tenant__slug", "gpu_type__slug").annotate(n=Count("pk")).order_by()
    )
    for state, tenant, gpu_type, n in rows:
        jobs.add_metric([state, tenant, gpu_type], n)
        if state == JobState.PENDING:
            pending.add_metric([tenant, gpu_type], n)
    yield jobs
    yield pending
    lag = GaugeMetricFamily(
        "factory_cluster_sync_lag_seconds",
        "Per cluster, how long ago its longest-unsynced active job was last updated.",
        labels=["cluster"],
    )
    now = timezone.now()
    for cluster, oldest in (
        Job.objects.filter(state__in=AT_BACKEND_STATES)
        .values_list("cluster__slug")
        .annotate(oldest=Min("updated_at"))
        .order_by()
    ):
        lag.add_metric([cluster or ""], max(0.0, (now - oldest).total_seconds()))
    yield lag
