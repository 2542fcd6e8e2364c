"""Moving jobs between the portal and their backends: dispatch, cancel, sync, and the sweep that
finds work which stalled. Slow backend calls stay outside database transactions."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import models
from django.utils import timezone

from factory.adapters import BackendState, BackendUnavailable, JobRejected
from factory.models import Cluster

from . import metrics
from .choices import ACTIVE_STATES, TERMINAL_STATES, JobState
from .models import Job, JobArray

log = logging.getLogger(__name__)


def dispatch_many(jobs: list[Job]) -> None:
    """Hand admitted jobs to their clusters' backends, in the given order, exactly once in effect.

    A dispatcher first claims the jobs (a lease in the database): a second dispatcher of the same
    attempt (a redelivered task, the sweep's retry) finds them claimed and leaves them alone. The
    adapter also finds a job already submitted under the same dispatch key instead of submitting
    it again, for a dispatcher that died after submitting. One adapter serves each cluster's jobs.
    The jobs of an unreachable cluster stay admitted with the reason said, and the call raises
    BackendUnavailable once the other clusters' jobs are out, so that its task retries.
    """
    claimed = claim([job for job in jobs if job.state == JobState.ADMITTED])
    if not claimed:
        return
    unreachable: BackendUnavailable | None = None
    for cluster_jobs in _by_cluster(claimed):
        try:
            _dispatch_to_cluster(cluster_jobs)
        except BackendUnavailable as exc:
            unreachable = exc
    if unreachable is not None:
        raise unreachable


def claim(jobs: list[Job]) -> list[Job]:
    """The jobs this dispatcher may submit: still admitted in the same attempt, and not claimed by
    a live lease of another dispatcher (or waiting out a failure's backoff). Two statements."""
    if not jobs:
        return []
    now = timezone.now()
    token = uuid.uuid4().hex
    Job.objects.filter(pk__in=[job.pk for job in jobs], state=JobState.ADMITTED).filter(
        models.Q(dispatch_lease_until__isnull=True) | models.Q(dispatch_lease_until__lte=now)
    ).update(
        dispatch_claim=token,
        dispatch_lease_until=now + timedelta(seconds=settings.FACTORY_DISPATCH_LEASE),
    )
    ours = {
        pk: (attempt, cancel_requested_at)
        for pk, attempt, cancel_requested_at in Job.objects.filter(
            pk__in=[job.pk for job in jobs], dispatch_claim=token
        ).values_list("pk", "attempt", "cancel_requested_at")
    }
    claimed = []
    for job in jobs:
        if job.pk in ours and ours[job.pk][0] == job.attempt:
            job.dispatch_claim, job.cancel_requested_at = token, ours[job.pk][1]
            claimed.append(job)
    return claimed


def _release(jobs: list[Job]) -> None:
    """End the lease on jobs not submitted (their cluster is unreachable): the sweep may retry.
    The claim token stays: the attempt may have reached the backend before it stopped answering."""
    Job.objects.filter(pk__in=[job.pk for job in jobs], state=JobState.ADMITTED).update(
        dispatch_lease_until=None
    )


def _by_cluster(jobs: list[Job]) -> list[list[Job]]:
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.cluster_id, []).append(job)
    return list(groups.values())


def _dispatch_to_cluster(jobs: list[Job]) -> None:
    """Submit one cluster's jobs one after another (an array's tasks together, where the backend
    has arrays of its own), then record them as submitted together."""
    cluster = jobs[0].cluster
    adapter = cluster.adapter()
    submitted: list[tuple[Job, str]] = []
    try:
        units = _units(adapter, jobs)  # asks Slurm which arrays it can hold
    except BackendUnavailable as exc:
        for job in jobs:
            job.explain_wait(f"cluster {cluster} is unreachable; retrying ({exc})")
        _release(jobs)
        raise
    try:
        for number, (tasks_of, unit) in enumerate(units):
            try:
                if tasks_of is not None:
                    _submit_array(adapter, tasks_of, unit, submitted)
                else:
                    _submit_one(adapter, unit[0], submitted)
            except BackendUnavailable as exc:
                waiting = [job for _, rest in units[number:] for job in rest]
                for job in waiting:
                    job.explain_wait(f"cluster {cluster} is unreachable; retrying ({exc})")
                _release(waiting)
                raise
            except SoftTimeLimitExceeded:
                # The task's time is up (a backend slow rather than down): the rest are left for
                # the sweep, as for an unreachable one; the job in hand may have reached it.
                waiting = [job for _, rest in units[number:] for job in rest]
                for job in waiting:
                    job.explain_wait(f"cluster {cluster} is slow to answer; retrying")
                _release(waiting)
                raise
    finally:
        _record_submitted(adapter, submitted)


def _units(adapter, jobs: list[Job]) -> list[tuple[JobArray | None, list[Job]]]:
    """What to submit in one go: each job alone, but where the backend holds arrays of its own,
    the first attempts of an array's tasks together, as (array, tasks)."""
    units: list[tuple[JobArray | None, list[Job]]] = []
    arrays: dict[int, list[Job]] = {}
    for job in jobs:
        if adapter.native_arrays and job.array_id is not None and job.attempt == 0:
            if job.array_id not in arrays and adapter.runs_as_array(job.array):
                arrays[job.array_id] = []
                units.append((job.array, arrays[job.array_id]))
            if job.array_id in arrays:
                arrays[job.array_id].append(job)
                continue
        units.append((None, [job]))
    return units


def _submit_one(adapter, job: Job, submitted: list[tuple[Job, str]]) -> None:
    cluster = adapter.cluster
    try:
        if job.cancel_requested_at is not None:
            _settle_cancelled(adapter, job, submitted)
            return
        if job.secrets_sealed and not adapter.delivers_secrets:
            job.reject(f"{cluster} cannot deliver secrets to a job yet; submit it without them")
            return
        submitted.append((job, adapter.submit(job)))
    except JobRejected as exc:
        job.reject(f"{cluster} refused the job: {exc}")
    except (BackendUnavailable, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        log.exception("dispatch of job %s to %s failed", job.pk, cluster)
        _dispatch_failed(job, exc)


def _submit_array(adapter, array: JobArray, tasks: list[Job], submitted: list[tuple[Job, str]]) -> None:
    """Hand tasks of one array to a backend that holds arrays of its own: one backend array for
    the whole array, made by the first dispatch (one submission) and found by the rest; the
    backend's id of it is kept on the array."""
    cluster = adapter.cluster
    for job in tasks:
        if job.cancel_requested_at is not None:
            _settle_cancelled(adapter, job, submitted)
    tasks = [job for job in tasks if job.cancel_requested_at is None]
    if not tasks:
        return
    try:
        external_id, ids = adapter.submit_array(array, tasks, lambda: array_members(array))
    except JobRejected as exc:
        for job in tasks:
            job.reject(f"{cluster} refused the array: {exc}")
        return
    except (BackendUnavailable, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        log.exception("dispatch of array %s to %s failed", array.pk, cluster)
        for job in tasks:
            _dispatch_failed(job, exc)
        return
    JobArray.objects.filter(pk=array.pk, external_id="").update(external_id=external_id, cluster=cluster)
    array.external_id = array.external_id or external_id
    submitted.extend((job, ids[job.pk]) for job in tasks)


def array_members(array: JobArray) -> list[Job]:
    """The array's tasks that may still run as their first attempts, in index order: what a
    backend array is made of. Only what a backend needs of them is read."""
    return list(
        Job.objects.filter(array=array, attempt=0)
        .exclude(state__in=TERMINAL_STATES)
        .order_by("array_index")
        .only("uid", "name", "env", "array", "array_index", "attempt", "state")
    )


def _settle_cancelled(adapter, job: Job, submitted: list[tuple[Job, str]]) -> None:
    """A job cancelled while an earlier dispatcher held it: never submitted now. If that
    dispatcher got it to the backend, it is recorded as there, so that it is stopped and what it
    ran is recorded and billed; otherwise it ends here."""
    found = adapter.find(job)
    if found:
        submitted.append((job, found))
    else:
        job.finish(JobState.CANCELLED, reason="cancelled before its backend had it")


def _dispatch_failed(job: Job, exc: Exception) -> None:
    """An error the adapter did not classify: retried with exponential backoff, then the job fails
    as a platform fault (FACTORY_DISPATCH_MAX_FAILURES)."""
    base = settings.FACTORY_DISPATCH_STALE_AFTER
    backoff = timedelta(seconds=min(base * 2**job.dispatch_failures, 3600))
    error = f"{type(exc).__name__}: {exc}"
    job.dispatch_failed(error, max_failures=settings.FACTORY_DISPATCH_MAX_FAILURES, backoff=backoff)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One attempt of a job as its backend knows it (its dispatch key and id): what to stop when
    the job itself has moved on (cancelled, or requeued as a new attempt)."""

    job: Job
    dispatch_key: str
    external_id: str

    def __getattr__(self, name: str):
        return getattr(self.job, name)


def _record_submitted(adapter, submitted: list[tuple[Job, str]]) -> None:
    """The jobs' move to submitted, together. What was submitted for a job that moved on while
    its submission was in flight (cancelled, or preempted back to pending, and maybe admitted
    again as its next attempt) is withdrawn from the backend; a job another dispatcher of the same
    attempt recorded meanwhile is left as it is."""
    if not submitted:
        return
    moved = set(
        Job.objects.mark_submitted_many(
            {
                job.pk: (job.attempt, external_id, Job.submitted_message(job.cluster, external_id))
                for job, external_id in submitted
            }
        )
    )
    metrics.observe_dispatch(job for job, _ in submitted if job.pk in moved)
    stop = set(
        Job.objects.filter(pk__in=moved, cancel_requested_at__isnull=False).values_list("pk", flat=True)
    )
    for job, external_id in submitted:
        if job.pk in moved:
            job.state, job.external_id = JobState.SUBMITTED, external_id
            if job.pk in stop:  # cancelled while it was being handed over
                adapter.cancel(job)
            continue
        key, attempt = job.dispatch_key, job.attempt
        job.refresh_from_db()
        if job.is_terminal or job.attempt != attempt:
            adapter.cancel(Attempt(job, key, external_id))


def cancel_at_backend(job: Job) -> None:
    if not job.is_at_backend:
        return
    job.cluster.adapter().cancel(job)
    sync_jobs(job.cluster, [job])


def cancel_array_at_backend(array: JobArray) -> None:
    """Stop the tasks of an array its backends run or hold, the cancel of each recorded: the
    backend's own array with one call (on Slurm, `scancel <array job id>`, its held tasks too),
    any other task by itself; then sync them."""
    jobs = list(
        Job.objects.filter(array=array, cancel_requested_at__isnull=False)
        .at_backend()
        .select_related("cluster", "gpu_type", "tenant", "array")
    )
    native = array.cluster.adapter() if array.external_id and array.cluster_id else None
    if native is not None:
        native.cancel_array(array)
        JobArray.objects.filter(pk=array.pk, closed_at__isnull=True).update(closed_at=timezone.now())
    by_cluster: dict[int, list[Job]] = {}
    for job in jobs:
        by_cluster.setdefault(job.cluster_id, []).append(job)
    for cluster_jobs in by_cluster.values():
        cluster = cluster_jobs[0].cluster
        adapter = native if native is not None and cluster.pk == array.cluster_id else cluster.adapter()
        for job in cluster_jobs:
            if not (adapter is native and job.attempt == 0):  # native: stopped with its array
                adapter.cancel(job)
        sync_jobs(cluster, cluster_jobs)


def close_array(array: JobArray) -> None:
    """An array whose tasks all ended: clear what its backend array still holds for tasks that
    ended before they were handed over (cancelled, or their dependency failed), once."""
    if array.external_id and array.cluster_id:
        array.cluster.adapter().cancel_array(array, waiting_only=True)
    JobArray.objects.filter(pk=array.pk, closed_at__isnull=True).update(closed_at=timezone.now())


def sync_cluster(cluster: Cluster) -> int:
    """Ask the backend about all of the cluster's jobs in one call and apply what changed."""
    jobs = list(Job.objects.filter(cluster=cluster).at_backend().select_related("gpu_type", "cluster"))
    return sync_jobs(cluster, jobs)


def sync_jobs(cluster: Cluster, jobs: list[Job]) -> int:
    """Apply the backend's reports. Jobs still queued there whose only news is why they wait
    (the bulk of a large array's first sync) are recorded together; the rest one by one."""
    if not jobs:
        return 0
    reports = cluster.adapter().statuses(jobs)
    changed = 0
    waits: dict[int, str] = {}
    for job in jobs:
        report = reports.get(job.external_id)
        if report is None:
            continue
        if job.state == JobState.SUBMITTED and report.state == BackendState.QUEUED and not report.nodes:
            if report.reason and report.reason != job.reason:
                waits[job.pk] = report.reason
        elif job.apply_report(report):
            changed += 1
    return changed + len(Job.objects.explain_waits(waits))


@dataclasses.dataclass(frozen=True)
class StalledWork:
    """What the periodic sweep finds to mend: clusters with jobs at their backend (to sync),
    admitted jobs whose dispatch never reported back, cancel requests not yet honoured, and
    backend arrays whose tasks all ended (to close)."""

    cluster_ids: list[int]
    stalled: dict[int, int]  # {job id: cluster id}
    unhonoured: dict[int, int]
    ended_arrays: dict[int, int] = dataclasses.field(default_factory=dict)  # {array id: cluster id}

    def counts(self) -> dict[str, int]:
        return {
            "clusters": len(self.cluster_ids),
            "redispatched": len(self.stalled),
            "recancelled": len(self.unhonoured),
            "arrays_closed": len(self.ended_arrays),
        }


def stalled_work() -> StalledWork:
    stale = timezone.now() - timedelta(seconds=settings.FACTORY_DISPATCH_STALE_AFTER)
    # order_by(): the job's default ordering would join the DISTINCT, making one row per job.
    cluster_ids = list(
        Job.objects.at_backend()
        .filter(cluster__enabled=True)
        .order_by()
        .values_list("cluster_id", flat=True)
        .distinct()
    )
    # Only what has no task outstanding: its last one was enqueued longer ago than its messages
    # live, and no dispatcher holds it (nor a failure's backoff).
    now = timezone.now()
    stalled = (
        Job.objects.filter(state=JobState.ADMITTED)
        .filter(
            models.Q(dispatch_enqueued_at__lt=stale)
            | models.Q(dispatch_enqueued_at__isnull=True, admitted_at__lt=stale)
        )
        .exclude(dispatch_lease_until__gt=now)
    )
    unhonoured = Job.objects.at_backend().filter(cancel_enqueued_at__lt=stale)
    stalled = _stamp(stalled, "dispatch_enqueued_at", now)
    unhonoured = _stamp(unhonoured, "cancel_enqueued_at", now)
    if stalled:
        log.warning("re-dispatching %d stalled job(s)", len(stalled))
    return StalledWork(cluster_ids, stalled, unhonoured, ended_arrays())


def ended_arrays() -> dict[int, int]:
    """{array id: cluster id} of backend arrays not closed yet whose tasks all ended."""
    active = Job.objects.filter(array=models.OuterRef("pk"), state__in=ACTIVE_STATES)
    return dict(
        JobArray.objects.filter(closed_at__isnull=True, cluster__isnull=False)
        .exclude(external_id="")
        .exclude(models.Exists(active))
        .values_list("pk", "cluster_id")
    )


def _stamp(jobs, field: str, now) -> dict[int, int]:
    """{job id: cluster id} of these jobs, marked as having a task enqueued now."""
    found = dict(jobs.values_list("pk", "cluster_id"))
    if found:
        Job.objects.filter(pk__in=list(found)).update(**{field: now})
    return found
