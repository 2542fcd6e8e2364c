from __future__ import annotations

from celery import shared_task

from factory.models import Cluster
from factory.tasks import BACKEND_TASK

from . import admission, limits


@shared_task(acks_late=True)
def admit_pending() -> dict[str, int]:
    result = admission.admit_pending()
    return {"admitted": result.admitted, "waiting": result.waiting, "preempted": result.preempted}


@shared_task(acks_late=True)
def mirror_limits(tenant_ids: list[int] | None = None) -> int:
    """Quotas into the clusters' own limits: after a quota changes (its tenant), and periodically
    (every tenant, mending what an unreachable cluster missed). One task per cluster, on its kind's
    queue; returns how many."""
    clusters = limits.keeping_limits()
    for cluster in clusters:
        mirror_cluster_limits.delay(cluster.pk, tenant_ids)
    return len(clusters)


@shared_task(**BACKEND_TASK)
def mirror_cluster_limits(cluster_id: int, tenant_ids: list[int] | None = None) -> list[str]:
    cluster = Cluster.objects.filter(pk=cluster_id, enabled=True).prefetch_related("pools__gpu_type").first()
    if cluster is None:
        return []
    return limits.mirror_cluster(cluster, tenant_ids)
