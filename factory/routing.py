"""Which Celery queue a task goes to: the queue of its cluster's kind when it acts on one cluster.

A task that talks to one cluster's backend (dispatch, cancel, sync, health, limits) names that
cluster in a `cluster_id` argument, and goes to `dispatch-<kind>` (settings.FACTORY_BACKEND_QUEUES),
served by its own workers: a backend that hangs holds up only the workers of its kind, never
another kind's dispatch, admission or metering. Other tasks are routed by name in settings.
"""

from __future__ import annotations

import inspect
import time

from django.conf import settings

# A cluster's kind, remembered for a while per process: publishing a task costs no query then.
KIND_CACHE_SECONDS = 60.0
_kinds: dict[int, tuple[str | None, float]] = {}


def by_cluster_kind(name, args, kwargs, options, task=None, **rest) -> dict | None:
    """Celery router: `dispatch-<kind>` for a task given a cluster_id, else no opinion."""
    cluster_id = _cluster_id(task, args or (), kwargs or {})
    if cluster_id is None:
        return None
    queue = settings.FACTORY_BACKEND_QUEUES.get(cluster_kind(cluster_id))
    return {"queue": queue} if queue else None


def _cluster_id(task, args, kwargs) -> int | None:
    if "cluster_id" in kwargs:
        return kwargs["cluster_id"]
    if task is None or not args:
        return None
    try:
        bound = inspect.signature(task.run).bind_partial(*args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get("cluster_id")


def cluster_kind(cluster_id: int) -> str | None:
    """The kind of the cluster (None for one that is gone)."""
    cached = _kinds.get(cluster_id)
    if cached and cached[1] > time.monotonic():
        return cached[0]
    from .models import Cluster

    kind = Cluster.objects.filter(pk=cluster_id).values_list("kind", flat=True).first()
    _kinds[cluster_id] = (kind, time.monotonic() + KIND_CACHE_SECONDS)
    return kind
