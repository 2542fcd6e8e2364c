"""Moving jobs between the portal and their backends: dispatch, cancel, sync, and the sweep that
finds work which stalled. Slow backend calls stay outside database transactions."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from factory.adapters import BackendUnavailable, JobRejected
from factory.models import Cluster

from .choices import JobState
from .models import Job

log = logging.getLogger(__name__)


def dispatch_many(jobs: list[Job]) -> None:
    """Hand admitted jobs to their clusters' backends, in the given order, exactly once in effect.

    The adapter finds a job already submitted under the same dispatch key instead of submitting
    it again, so a retried or duplicated dispatch is harmless. One adapter serves each cluster's
    jobs. The jobs of an unreachable cluster stay admitted with the reason said, and the call
    raises BackendUnavailable once the other clusters' jobs are out, so that its task retries.
    """
    admitted = [job for job in jobs if job.state == JobState.ADMITTED]
    if not admitted:
        return
    Job.objects.filter(pk__in=[job.pk for job in admitted]).update(dispatch_attempted_at=timezone.now())
    unreachable: BackendUnavailable | None = None
    for cluster_jobs in _by_cluster(admitted):
        try:
            _dispatch_to_cluster(cluster_jobs)
        except BackendUnavailable as exc:
            unreachable = exc
    if unreachable is not None:
        raise unreachable


def _by_cluster(jobs: list[Job]) -> list[list[Job]]:
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.cluster_id, []).append(job)
    return list(groups.values())


def _dispatch_to_cluster(jobs: list[Job]) -> None:
    """Submit one cluster's jobs one after another, then record them as submitted together."""
    cluster = jobs[0].cluster
    adapter = cluster.adapter()
    submitted: list[tuple[Job, str]] = []
    try:
        for index, job in enumerate(jobs):
            try:
                submitted.append((job, adapter.submit(job)))
            except JobRejected as exc:
                job.reject(f"{cluster} refused the job: {exc}")
            except BackendUnavailable as exc:
                for waiting in jobs[index:]:
                    waiting.explain_wait(f"cluster {cluster} is unreachable; retrying ({exc})")
                raise
    finally:
        _record_submitted(adapter, submitted)


def _record_submitted(adapter, submitted: list[tuple[Job, str]]) -> None:
    """The jobs' move to submitted, together. A job cancelled while its submission was in flight
    is withdrawn from the backend instead."""
    if not submitted:
        return
    moved = set(
        Job.objects.mark_submitted_many(
            {
                job.pk: (external_id, Job.submitted_message(job.cluster, external_id))
                for job, external_id in submitted
            }
        )
    )
    for job, external_id in submitted:
        if job.pk in moved:
            job.state, job.external_id = JobState.SUBMITTED, external_id
            continue
        job.refresh_from_db()
        if job.is_terminal:
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


@dataclasses.dataclass(frozen=True)
class StalledWork:
    """What the periodic sweep finds to mend: clusters with jobs at their backend (to sync),
    admitted jobs whose dispatch never reported back, and cancel requests not yet honoured."""

    cluster_ids: list[int]
    stalled: list[int]
    unhonoured: list[int]

    def counts(self) -> dict[str, int]:
        return {
            "clusters": len(self.cluster_ids),
            "redispatched": len(self.stalled),
            "recancelled": len(self.unhonoured),
        }


def stalled_work() -> StalledWork:
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
    if stalled:
        log.warning("re-dispatching %d stalled job(s)", len(stalled))
    return StalledWork(cluster_ids, stalled, unhonoured)
