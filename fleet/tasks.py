from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from factory.models import Cluster

from . import metrics
from .choices import TelemetrySource
from .models import ClusterTelemetry, GpuMinute, HealthEvent, Node
from .scrape import scrape_cluster
from .sources import run_cycle

log = logging.getLogger(__name__)


def due_clusters(now=None) -> list[Cluster]:
    """Enabled clusters with nodes (or read from Prometheus, which finds them) whose interval has
    passed since their last cycle started, and whose last cycle is over (or stalled: a shard not
    done within the task time limit)."""
    now = now or timezone.now()
    due = []
    clusters = Cluster.objects.filter(
        Q(nodes__isnull=False) | Q(telemetry__source=TelemetrySource.PROMETHEUS), enabled=True
    ).distinct()
    telemetry = {t.cluster_id: t for t in ClusterTelemetry.objects.all()}
    stalled = settings.FACTORY_TASK_TIME_LIMIT + settings.FACTORY_TASK_KILL_GRACE
    for cluster in clusters:
        t = telemetry.get(cluster.pk)
        if t is not None and not t.enabled:
            continue
        if t is None or t.scraped_at is None:
            due.append(cluster)
            continue
        interval = t.interval_seconds or settings.FACTORY_TELEMETRY_INTERVAL
        age = (now - t.scraped_at).total_seconds()
        if age >= interval * 0.9 and (not t.shards_pending or age >= stalled):
            due.append(cluster)
    return due


def from_prometheus(cluster: Cluster) -> bool:
    return ClusterTelemetry.objects.filter(cluster=cluster, source=TelemetrySource.PROMETHEUS).exists()


def shards(cluster: Cluster) -> list[list[int]]:
    """The cluster's node ids in shards of at most FACTORY_TELEMETRY_SHARD_NODES."""
    ids = list(Node.objects.filter(cluster=cluster).order_by("pk").values_list("pk", flat=True))
    size = settings.FACTORY_TELEMETRY_SHARD_NODES
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def start_cycle(cluster: Cluster, shard_count: int, now) -> bool:
    """Claim the cluster's next cycle (compare-and-set on its start): False when another
    scheduler tick got there first."""
    t, _ = ClusterTelemetry.objects.get_or_create(cluster=cluster)
    claim = ClusterTelemetry.objects.filter(pk=t.pk, scraped_at=t.scraped_at)
    if t.scraped_at is None:
        claim = ClusterTelemetry.objects.filter(pk=t.pk, scraped_at__isnull=True)
    return claim.update(scraped_at=now, shards_pending=shard_count) == 1


def finish_shard(cluster_id: int) -> None:
    """One shard of the cluster's cycle is done; the last one says how long the cycle took."""
    with transaction.atomic():
        t = ClusterTelemetry.objects.select_for_update().filter(cluster_id=cluster_id).first()
        if t is None or not t.shards_pending:
            return
        t.shards_pending -= 1
        if t.shards_pending == 0:
            t.cycle_seconds = (timezone.now() - t.scraped_at).total_seconds()
            metrics.CYCLE_SECONDS.labels(t.cluster.slug).observe(t.cycle_seconds)
        t.save(update_fields=["shards_pending", "cycle_seconds"])


@shared_task(acks_late=True)
def scrape_due() -> dict[str, int]:
    """Start a telemetry cycle of each cluster that is due (beat runs this every few seconds):
    one task per shard of its nodes, so that the workers share a big cluster's cycle; a cluster
    read from Prometheus in one task (its queries do not grow with its nodes)."""
    started = {}
    now = timezone.now()
    for cluster in due_clusters(now):
        node_shards = [None] if from_prometheus(cluster) else shards(cluster)
        if not start_cycle(cluster, len(node_shards), now):
            continue
        for node_ids in node_shards:
            scrape_shard.delay(cluster.pk, node_ids)
        started[cluster.slug] = len(node_shards)
    return started


@shared_task(acks_late=True)
def scrape_shard(cluster_id: int, node_ids: list[int] | None = None) -> dict[str, float] | None:
    """Scrape, store and judge one shard of a cluster's nodes, or (`node_ids` None) the whole
    cluster from its telemetry source (the cluster's backend is called to drain and resume them:
    the task goes to its kind's queue)."""
    cluster = Cluster.objects.filter(pk=cluster_id).first()
    if cluster is None:
        return None
    try:
        if node_ids is None:
            report = run_cycle(cluster)
        else:
            nodes = list(Node.objects.filter(cluster=cluster, pk__in=node_ids).select_related("gpu_type"))
            report = scrape_cluster(cluster, nodes=nodes)
    finally:
        finish_shard(cluster_id)
    log.info(
        "telemetry shard of %s: %d nodes in %.2f s (fetch and parse %.2f, store %.2f, health %.2f)",
        cluster,
        report.nodes,
        report.seconds,
        report.fetch_seconds,
        report.store_seconds,
        report.health_seconds,
    )
    return {"nodes": report.nodes, "seconds": round(report.seconds, 3)}


@shared_task(acks_late=True)
def prune() -> int:
    """Minute rollups older than FACTORY_TELEMETRY_RETENTION_DAYS go, and health events older than
    FACTORY_HEALTH_HISTORY_DAYS. Returns the rollups deleted."""
    now = timezone.now()
    cutoff = now - timedelta(days=settings.FACTORY_TELEMETRY_RETENTION_DAYS)
    deleted, _ = GpuMinute.objects.filter(minute__lt=cutoff).delete()
    HealthEvent.objects.filter(at__lt=now - timedelta(days=settings.FACTORY_HEALTH_HISTORY_DAYS)).delete()
    return deleted
