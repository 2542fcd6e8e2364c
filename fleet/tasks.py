from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from factory.models import Cluster

from .choices import TelemetrySource
from .models import ClusterTelemetry, GpuMinute
from .sources import run_cycle

log = logging.getLogger(__name__)


def due_clusters(now=None) -> list[Cluster]:
    """Enabled clusters with nodes (or read from Prometheus, which finds them) whose interval has
    passed since their last cycle."""
    now = now or timezone.now()
    due = []
    clusters = Cluster.objects.filter(
        Q(nodes__isnull=False) | Q(telemetry__source=TelemetrySource.PROMETHEUS), enabled=True
    ).distinct()
    telemetry = {t.cluster_id: t for t in ClusterTelemetry.objects.all()}
    for cluster in clusters:
        t = telemetry.get(cluster.pk)
        if t is not None and not t.enabled:
            continue
        interval = (t.interval_seconds if t else None) or settings.FACTORY_TELEMETRY_INTERVAL
        if t is None or t.scraped_at is None or (now - t.scraped_at).total_seconds() >= interval * 0.9:
            due.append(cluster)
    return due


@shared_task(acks_late=True)
def scrape_due() -> dict[str, float]:
    """One telemetry cycle of each cluster that is due (beat runs this every few seconds)."""
    done = {}
    for cluster in due_clusters():
        try:
            done[cluster.slug] = round(run_cycle(cluster).seconds, 3)
        except Exception:
            log.exception("telemetry cycle of %s failed", cluster)
    return done


@shared_task(acks_late=True)
def prune() -> int:
    """Minute rollups older than FACTORY_TELEMETRY_RETENTION_DAYS go."""
    cutoff = timezone.now() - timedelta(days=settings.FACTORY_TELEMETRY_RETENTION_DAYS)
    deleted, _ = GpuMinute.objects.filter(minute__lt=cutoff).delete()
    return deleted
