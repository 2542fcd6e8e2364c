"""Thin Celery tasks: load by id (quietly return if gone), call the domain function."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from factory.adapters import BackendError, BackendUnavailable, adapter_class
from factory.models import Cluster
from factory.tasks import BACKEND_TASK

from . import dispatch
from .models import Job, JobArray

log = logging.getLogger(__name__)

# A task about a job expires, and is done retrying (2 + 4 + 8 s), within
# FACTORY_DISPATCH_STALE_AFTER; only then may the sweep enqueue it again, so at most one task per
# job and purpose is ever outstanding. An unreachable backend never fails a job. These tasks name
# their cluster (cluster_id), which puts them on its kind's queue (factory.routing).
RETRYING = {
    **BACKEND_TASK,
    "acks_late": True,
    "autoretry_for": (BackendUnavailable,),
    "retry_backoff": 2,
    "retry_backoff_max": 8,
    "retry_jitter": False,
    "max_retries": 3,
    "expires": settings.FACTORY_DISPATCH_STALE_AFTER,
}


def _job(job_id: int) -> Job | None:
    jobs = _jobs([job_id])
    return jobs[0] if jobs else None


def _jobs(job_ids: list[int]) -> list[Job]:
    """The jobs still there, in the order of `job_ids`, with their cluster, GPU type, tenant and
    array. A batch's jobs share few of those: each is read once and shared (select_related would
    make one of each per job)."""
    found = Job.objects.in_bulk(job_ids)
    for field in ("cluster", "gpu_type", "tenant", "array"):
        related = Job._meta.get_field(field).related_model
        ids = {getattr(job, f"{field}_id") for job in found.values()} - {None}
        shared = related.objects.in_bulk(ids) if ids else {}
        for job in found.values():
            if getattr(job, f"{field}_id") in shared:
                setattr(job, field, shared[getattr(job, f"{field}_id")])
    return [found[pk] for pk in job_ids if pk in found]


@shared_task(**RETRYING)
def dispatch_jobs(job_ids: list[int], cluster_id: int | None = None) -> None:
    """Dispatch a batch of jobs admitted to one cluster (retried whole: the ones already submitted
    are skipped). The cluster routes the task; the jobs' own clusters are used."""
    dispatch.dispatch_many(_jobs(job_ids))


def enqueue_dispatch(jobs: dict[int, int]) -> None:
    """Dispatch tasks for these jobs ({job id: cluster id}, in order), per cluster, on its kind's
    queue. A batch costs one task and one load however many jobs it holds, so a large burst goes
    out in batches of FACTORY_DISPATCH_BATCH; a small one is still split over
    FACTORY_DISPATCH_SPREAD tasks, so that several worker processes take part. The tasks of an
    array bound for a backend with arrays of its own go in one batch, however many: they reach
    it together. Published over one broker connection."""
    if not jobs:
        return
    by_cluster: dict[int, list[int]] = {}
    for job_id, cluster_id in jobs.items():
        by_cluster.setdefault(cluster_id, []).append(job_id)
    together = native_array_tasks(jobs)
    with dispatch_jobs.app.producer_or_acquire() as producer:
        for cluster_id, job_ids in by_cluster.items():
            for batch in dispatch_batches(job_ids, together):
                dispatch_jobs.apply_async((batch,), {"cluster_id": cluster_id}, producer=producer)


def native_array_tasks(jobs: dict[int, int]) -> dict[int, int]:
    """{job id: array id} of these jobs that are first attempts of array tasks bound for a cluster
    whose backend holds arrays of its own."""
    kinds = Cluster.objects.filter(pk__in=set(jobs.values())).values_list("pk", "kind")
    native = {pk for pk, kind in kinds if adapter_class(kind).native_arrays}
    if not native:
        return {}
    bound = [job_id for job_id, cluster_id in jobs.items() if cluster_id in native]
    return dict(
        Job.objects.filter(pk__in=bound, array__isnull=False, attempt=0).values_list("pk", "array_id")
    )


def dispatch_batches(job_ids: list[int], together: dict[int, int] | None = None) -> list[list[int]]:
    """Batches of these jobs; those `together` maps to the same array in one batch of their own."""
    together = together or {}
    arrays: dict[int, list[int]] = {}
    singles = []
    for job_id in job_ids:
        if job_id in together:
            arrays.setdefault(together[job_id], []).append(job_id)
        else:
            singles.append(job_id)
    spread = max(1, settings.FACTORY_DISPATCH_SPREAD)
    size = max(1, min(settings.FACTORY_DISPATCH_BATCH, -(-len(singles) // spread)))
    batches = [list(singles[start : start + size]) for start in range(0, len(singles), size)]
    return [*arrays.values(), *batches]


@shared_task(**RETRYING)
def cancel_job(job_id: int, cluster_id: int | None = None) -> None:
    job = _job(job_id)
    if job is not None:
        dispatch.cancel_at_backend(job)


@shared_task(**RETRYING)
def cancel_array(array_id: int, cluster_id: int | None = None) -> None:
    """Stop what the backends run or hold of an array whose tasks were asked to end."""
    array = JobArray.objects.select_related("cluster").filter(pk=array_id).first()
    if array is not None:
        dispatch.cancel_array_at_backend(array)


@shared_task(**RETRYING)
def close_array(array_id: int, cluster_id: int | None = None) -> None:
    array = JobArray.objects.select_related("cluster").filter(pk=array_id, closed_at__isnull=True).first()
    if array is not None:
        dispatch.close_array(array)


@shared_task(**BACKEND_TASK, expires=settings.FACTORY_SYNC_INTERVAL)
def sync_cluster_task(cluster_id: int) -> None:
    cluster = Cluster.objects.filter(pk=cluster_id, enabled=True).first()
    if cluster is None:
        return
    try:
        dispatch.sync_cluster(cluster)
    except BackendError as exc:
        # Nothing is lost: the next sweep asks again.
        log.warning("sync of %s skipped: %s", cluster, exc)


@shared_task(acks_late=True)
def sweep() -> dict[str, int]:
    """The periodic pass: sync every cluster with jobs at its backend, re-dispatch admitted jobs
    whose dispatch never reported back, and repeat cancel requests the backend has not honoured."""
    work = dispatch.stalled_work()
    for cluster_id in work.cluster_ids:
        sync_cluster_task.delay(cluster_id)
    enqueue_dispatch(work.stalled)
    for job_id, cluster_id in work.unhonoured.items():
        cancel_job.delay(job_id, cluster_id=cluster_id)
    for array_id, cluster_id in work.ended_arrays.items():
        close_array.delay(array_id, cluster_id=cluster_id)
    return work.counts()


@shared_task(**RETRYING)
def cancel_backend_job(job_id: int, cluster_id: int, dispatch_key: str, external_id: str) -> None:
    """Stop an attempt the job has left at its backend: preemption sent the job back to pending, or
    it was cancelled while a dispatcher may have been handing that attempt over."""
    job = _job(job_id)
    cluster = Cluster.objects.filter(pk=cluster_id).first()
    if job is not None and cluster is not None:
        cluster.adapter().cancel(dispatch.Attempt(job, dispatch_key, external_id))


# --- notifications (on the notifications queue) -------------------------------------------------------


@shared_task(acks_late=True, ignore_result=True)
def notify_job_event(event_id: int) -> None:
    from . import notifications

    notifications.notify_job_event(event_id)


@shared_task(acks_late=True, ignore_result=True)
def deliver_notification(delivery_id: int) -> None:
    """Send one delivery; a failed send schedules its own retry (notifications.deliver)."""
    from . import notifications

    notifications.deliver(delivery_id)


@shared_task(ignore_result=True)
def sweep_notifications() -> None:
    from . import notifications

    notifications.sweep()
