from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from .adapters import BackendError, Health
from .models import Cluster

log = logging.getLogger(__name__)

# The options of a task that calls a cluster's backend: it names the cluster (cluster_id), which
# routes it to its kind's queue (factory.routing), and has the time limits of such calls.
BACKEND_TASK = {
    "acks_late": True,
    "soft_time_limit": settings.FACTORY_BACKEND_TASK_TIME_LIMIT,
    "time_limit": settings.FACTORY_BACKEND_TASK_TIME_LIMIT + settings.FACTORY_TASK_KILL_GRACE,
}


def refresh_health(cluster: Cluster) -> Health:
    """Ask the cluster's backend how it is, and keep the answer with its pools' node shapes."""
    adapter = None
    try:
        adapter = cluster.adapter()
        health = adapter.health()
    except (BackendError, ValueError) as exc:
        health = Health(ok=False, message=str(exc))
    cluster.record_health(health, adapter)
    return health


@shared_task(acks_late=True)
def check_cluster_health() -> int:
    """Periodic: a health check of every enabled cluster, each on its kind's queue (one that hangs
    delays no other). Returns how many were asked for."""
    cluster_ids = list(Cluster.objects.filter(enabled=True).values_list("pk", flat=True))
    for cluster_id in cluster_ids:
        check_cluster.apply_async((cluster_id,), expires=settings.FACTORY_HEALTH_INTERVAL)
    return len(cluster_ids)


@shared_task(**BACKEND_TASK)
def check_cluster(cluster_id: int) -> bool | None:
    cluster = Cluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is None:
        return None
    ok = refresh_health(cluster).ok
    if not ok:
        log.warning("cluster %s is unhealthy", cluster)
    return ok
