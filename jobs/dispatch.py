"""Moving jobs between the portal and their backends: dispatch, cancel, sync, and the sweep that
finds work which stalled. Slow backend calls stay outside database transactions."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from factory.adapters import BackendUnavailable, JobRejected
from factory.models import Cluster

from .choices import JobState
from .models import Job

log = logging.getLogger(__name__)


def dispatch(job: Job) -> None:
    """Hand an admitted job to its cluster's backend, exactly once in effect.

    The adapter finds a job already submitted under the same uid instead of submitting it again,
    so a retried or duplicated dispatch is harmless.
    """
    if job.state != JobState.ADMITTED:
        return
    Job.objects.filter(pk=job.pk).update(dispatch_attempted_at=timezone.now())
    adapter = job.cluster.adapter()
    try:
        external_id = adapter.submit(job)
    except JobRejected as exc:
        job.reject(f"{job.cluster} refused the job: {exc}")
        return
    except BackendUnavailable as exc:
        job.explain_wait(f"cluster {job.cluster} is unreachable; retrying ({exc})")
        raise
    if job.mark_submitted(external_id):
        return
    job.refresh_from_db()
    if job.is_terminal:
        # Cancelled while the submission was in flight: withdraw it from the backend.
        adapter.cancel(job)


def cancel_at_backend(job: Job) -> None:
    if not job.is_at_backend:
        return
    job.cluster.adapter().cancel(job)
    sync_jobs(job.cluster, [job])


def sync_cluster(cluster: Cluster) -> int:
    """Ask the backend about all of the cluster's jobs in one call and apply what changed."""
    jobs = list(Job.objects.filter(cluster=cluster).at_backend().select_related("gpu_type", "cluster"))
    return sync_jobs(cluster, jobs)


def sync_jobs(cluster: Cluster, jobs: list[Job]) -> int:
    if not jobs:
        return 0
    reports = cluster.adapter().statuses(jobs)
    changed = 0
    for job in jobs:
        report = reports.get(job.external_id)
        if report is not None and job.apply_report(report):
            changed += 1
    return changed


def sweep() -> dict[str, int]:
    """The periodic pass: sync every cluster with jobs at its backend, re-dispatch admitted jobs
    whose dispatch never reported back, and repeat cancel requests the backend has not honoured."""
    from .tasks import cancel_job, dispatch_job, sync_cluster_task

    stale = timezone.now() - timedelta(seconds=settings.FACTORY_DISPATCH_STALE_AFTER)
    cluster_ids = list(
        Job.objects.at_backend().filter(cluster__enabled=True).values_list("cluster_id", flat=True).distinct()
    )
    stalled = list(
        Job.objects.filter(state=JobState.ADMITTED, admitted_at__lt=stale)
        .exclude(dispatch_attempted_at__gte=stale)
        .values_list("pk", flat=True)
    )
    unhonoured = list(
        Job.objects.at_backend().filter(cancel_requested_at__lt=stale).values_list("pk", flat=True)
    )

    def enqueue() -> None:
        for cluster_id in cluster_ids:
            sync_cluster_task.delay(cluster_id)
        for job_id in stalled:
            dispatch_job.delay(job_id)
        for job_id in unhonoured:
            cancel_job.delay(job_id)

    transaction.on_commit(enqueue)
    if stalled:
        log.warning("re-dispatching %d stalled job(s)", len(stalled))
    return {"clusters": len(cluster_ids), "redispatched": len(stalled), "recancelled": len(unhonoured)}
