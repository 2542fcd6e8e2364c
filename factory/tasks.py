from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from .adapters import BackendError, Health
from .models import Cluster

log = logging.getLogger(__name__)


def refresh_health(cluster: Cluster) -> Health:
    try:
        health = cluster.adapter().health()
    except (BackendError, ValueError) as exc:
        health = Health(ok=False, message=str(exc))
    Cluster.objects.filter(pk=cluster.pk).update(health=health.as_dict(), health_checked_at=timezone.now())
    return health


@shared_task(acks_late=True)
def check_cluster_health() -> dict[str, bool]:
    results = {}
    for cluster in Cluster.objects.filter(enabled=True):
        results[cluster.slug] = refresh_health(cluster).ok
        if not results[cluster.slug]:
            log.warning("cluster %s is unhealthy", cluster)
    return results
