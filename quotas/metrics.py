"""Quotas' figures for /metrics: nominal and allocated GPUs per tenant (Kueue's
cluster_queue_nominal_quota / resource_usage), and the admission wait observed."""

from __future__ import annotations

from django.db.models import Sum
from django.utils import timezone
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from jobs.choices import HOLDING_STATES
from jobs.models import Job

from .models import Quota

ADMISSION_WAIT = Histogram(
    "factory_admission_wait_time_seconds",
    "Seconds from a job's submission (or requeue) to its admission.",
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400),
)


def observe_admissions(jobs) -> None:
    now = timezone.now()
    for job in jobs:
        ADMISSION_WAIT.observe(max(0.0, (now - job.created_at).total_seconds()))


def collect():
    nominal = GaugeMetricFamily(
        "factory_cluster_queue_nominal_quota",
        "Nominal GPUs per tenant and GPU type.",
        labels=["tenant", "gpu_type"],
    )
    for tenant, gpu_type, gpus in Quota.objects.values_list("tenant__slug", "gpu_type__slug", "nominal"):
        nominal.add_metric([tenant, gpu_type], gpus)
    yield nominal
    usage = GaugeMetricFamily(
        "factory_cluster_queue_resource_usage",
        "GPUs allocated (admitted, submitted or running jobs) per tenant and GPU type.",
        labels=["tenant", "gpu_type"],
    )
    rows = (
        Job.objects.filter(state__in=HOLDING_STATES)
        .values_list("tenant__slug", "gpu_type__slug")
        .annotate(gpus=Sum("gpu_count"))
        .order_by()
    )
    for tenant, gpu_type, gpus in rows:
        usage.add_metric([tenant, gpu_type], gpus)
    yield usage
