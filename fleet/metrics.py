"""The fleet's own counters, in the portal's /metrics (prometheus_client; multi-process mode when
PROMETHEUS_MULTIPROC_DIR is set, so that every worker's count is summed)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

SCRAPE_ERRORS = Counter(
    "factory_telemetry_scrape_errors",
    "GPU exporter answers not used, or parts of them, by cluster and kind of fault.",
    ["cluster", "reason"],
)
CYCLE_SECONDS = Histogram(
    "factory_telemetry_cycle_seconds",
    "Seconds a telemetry cycle of a cluster took (scrape, parse, store, health).",
    ["cluster"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
DRAINS = Counter("factory_fleet_drains", "Drains the portal made, by cluster.", ["cluster"])
PROMETHEUS_QUERIES = Counter(
    "factory_telemetry_prometheus_queries",
    "PromQL queries telemetry cycles asked of a cluster's Prometheus.",
    ["cluster"],
)


def _reason(error: str) -> str:
    text = error.lower()
    for needle, reason in (
        ("timeout", "timeout"),
        ("within", "timeout"),
        ("connection", "connection"),
        ("http 5", "http_5xx"),
        ("http", "http_other"),
        ("unreadable", "malformed"),
        ("bad series", "bad_series"),
        ("energy", "energy_counter"),
    ):
        if needle in text:
            return reason
    return "other"


def scrape_error(cluster: str, error: str) -> None:
    SCRAPE_ERRORS.labels(cluster, _reason(error)).inc()


def observe_cycle(report) -> None:
    CYCLE_SECONDS.labels(report.cluster).observe(report.seconds)
    if report.queries:
        PROMETHEUS_QUERIES.labels(report.cluster).inc(report.queries)


def collect():
    from django.db.models import Count, Q, Sum

    from .models import ClusterTelemetry, Gpu

    gpus = GaugeMetricFamily(
        "factory_fleet_gpus", "GPUs by cluster and health.", labels=["cluster", "health"]
    )
    for cluster, health, n in (
        Gpu.objects.values_list("cluster__slug", "health").annotate(n=Count("pk")).order_by()
    ):
        gpus.add_metric([cluster, health], n)
    yield gpus
    drained = GaugeMetricFamily(
        "factory_fleet_drained_gpus", "GPUs the portal took out of service.", labels=["cluster"]
    )
    out = Gpu.objects.filter(Q(drained_by_portal=True) | Q(node__drained_by_portal=True))
    for cluster, n in out.values_list("cluster__slug").annotate(n=Count("pk")).order_by():
        drained.add_metric([cluster], n)
    yield drained
    power = GaugeMetricFamily(
        "factory_fleet_power_watts", "Power drawn by the GPUs at their last sample.", labels=["cluster"]
    )
    for cluster, watts in Gpu.objects.values_list("cluster__slug").annotate(w=Sum("power_w")).order_by():
        power.add_metric([cluster], watts or 0.0)
    yield power
    unavailable = GaugeMetricFamily(
        "factory_telemetry_unavailable",
        "1 while a cluster's telemetry source does not answer (no health rule acts meanwhile).",
        labels=["cluster", "source"],
    )
    for cluster, source, since in ClusterTelemetry.objects.values_list(
        "cluster__slug", "source", "unavailable_since"
    ).order_by("cluster__slug"):
        unavailable.add_metric([cluster, source], 1.0 if since else 0.0)
    yield unavailable
