"""What follows a job's transitions: the one home of the lifecycle's side effects.

The model and its queryset only change state and record events (a conditional UPDATE and its
JobEvent rows, in one transaction). Whoever moves a job for a reason that needs the backend to act
(admission, a cancel click, a preemption) calls the function here, which makes the transition and
then, once it has committed, enqueues the task that acts. Nothing is enqueued for a transition that
did not happen or did not commit, and a broker that cannot be reached does not undo one that did:
the job row is the outbox, and the periodic sweep and admission enqueue what was not.
"""

from __future__ import annotations

from django.db import transaction

from . import tasks
from .choices import JobState
from .models import Job, JobArray


def admit_many(placements: dict[int, tuple[int, str]], domains: dict[int, str] | None = None) -> list[int]:
    """Admit pending jobs ({job id: (cluster id, message)}; gangs kept under one topology domain:
    {job id: domain}), then dispatch them on commit. Returns the ids admitted: a job cancelled
    meanwhile is left alone."""
    with transaction.atomic(savepoint=False):
        admitted = Job.objects.admit_many(placements, domains)
        if admitted:
            clusters = {pk: placements[pk][0] for pk in admitted}
            transaction.on_commit(lambda: tasks.enqueue_dispatch(clusters), robust=True)
    return admitted


def cancel(job: Job, user=None) -> bool:
    """End the job now if its backend does not have it yet, else ask the backend to stop it (on
    commit). Returns whether this call did either.

    A job a dispatcher has claimed may already be at its backend without a recorded submission
    (the dispatcher is submitting, or died after submitting): its cancel is recorded, and the
    dispatcher, or the next one once its lease runs out, finds the attempt at the backend
    (recorded as submitted, stopped, what it ran billed) or ends the job, never submitting it."""
    if not job.may_be_at_backend and job.cancel_before_backend(user):
        return True
    if not job.request_backend_cancel(user):
        return False
    transaction.on_commit(lambda: tasks.cancel_job.delay(job.pk, cluster_id=job.cluster_id), robust=True)
    return True


def cancel_array(array: JobArray, user=None) -> bool:
    """Cancel every task of an array not ended yet: those the backend does not have end now
    (pending ones in a few statements; admitted ones one by one, as they hold quota), the rest are
    asked to stop, and one task (on commit) stops them at their backend, the backend's own array
    with one call. Returns whether any task was not ended yet."""
    who = f" by {user}" if user else ""
    members = Job.objects.filter(array=array)
    with transaction.atomic():
        ended = members.cancel_waiting(f"cancelled with its array{who}")
        for job in members.filter(state=JobState.ADMITTED, dispatch_claim=""):
            if job.cancel_before_backend(user):
                ended.append(job.pk)
        asked = members.request_backend_cancel(who)
        if asked or array.external_id:
            transaction.on_commit(
                lambda: tasks.cancel_array.delay(array.pk, cluster_id=array.cluster_id), robust=True
            )
    return bool(ended or asked)


def preempt(job: Job, reason: str) -> bool:
    """Send a job back to pending to free its GPUs, and stop the attempt its backend runs (on
    commit). Returns whether this call moved it."""
    cluster_id, key, external_id = job.cluster_id, job.dispatch_key, job.external_id
    if not job.requeue(reason, preempted=True):
        return False
    # Without an external id the attempt may still be in a dispatcher's hands: that dispatcher
    # withdraws it when it finds the job moved on, and the adapter looks it up by its dispatch key
    # for one that died after submitting.
    transaction.on_commit(
        lambda: tasks.cancel_backend_job.delay(job.pk, cluster_id, key, external_id), robust=True
    )
    return True


def requeue_after_hardware_fault(job: Job, reason: str) -> bool:
    """The hardware under a job failed and the portal drained it. A job still at its backend goes
    back to pending (its lost time recorded, not billed) and its backend attempt is stopped; one
    that already failed is the platform's fault (not billed) and runs again. Either happens once
    per job: after that, it is only not billed. Returns whether this call changed the job."""
    from .choices import AT_BACKEND_STATES, JobState

    why = f"the hardware it ran on failed ({reason})"
    if job.fault_requeues == 0 and job.state in AT_BACKEND_STATES:
        cluster_id, key, external_id = job.cluster_id, job.dispatch_key, job.external_id
        if not job.requeue(why, preempted=True, hardware_fault=True):
            return False
        transaction.on_commit(
            lambda: tasks.cancel_backend_job.delay(job.pk, cluster_id, key, external_id), robust=True
        )
        return True
    if job.state != JobState.FAILED:
        return False
    with transaction.atomic():
        blamed = job.blame_platform(why)
        return job.requeue_failed(why) or blamed
