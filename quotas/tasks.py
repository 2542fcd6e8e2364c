from __future__ import annotations

from celery import shared_task

from . import admission, limits


@shared_task(acks_late=True)
def admit_pending() -> dict[str, int]:
    result = admission.admit_pending()
    return {"admitted": result.admitted, "waiting": result.waiting, "preempted": result.preempted}


@shared_task(acks_late=True)
def mirror_limits(tenant_ids: list[int] | None = None) -> dict[str, list[str]]:
    """Quotas into the clusters' own limits: after a quota changes (its tenant), and periodically
    (every tenant, mending what an unreachable cluster missed)."""
    return limits.mirror(tenant_ids)
