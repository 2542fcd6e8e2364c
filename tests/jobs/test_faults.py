"""Faults and races around dispatch and cancel: nothing lost, nothing run twice, no task storms.

Run against the real local backend and PostgreSQL; the concurrency tests use real threads, each
with its own database connection.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection
from django.utils import timezone
from kombu.exceptions import OperationalError

from factory.adapters.local import LocalAdapter
from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from jobs import lifecycle
from jobs.choices import JobState
from jobs.models import Job
from jobs.signals import job_released
from jobs.tasks import dispatch_jobs, sweep
from tests.support import admit

pytestmark = pytest.mark.django_db


def backend_state(cluster, job, dispatch_key: str) -> str:
    """What the local backend says of one attempt of a job (by its dispatch key)."""
    attempt = mock.Mock(uid=job.uid, external_id=dispatch_key, dispatch_key=dispatch_key)
    return cluster.adapter().statuses([attempt])[dispatch_key].state


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def dispatch_meanwhile(job: Job, meanwhile) -> None:
    """Dispatch the job; once its backend has it, and before the dispatcher records that, call
    `meanwhile` with the job as it is then (it must return true)."""
    real_submit = LocalAdapter.submit

    def submit(self, j):
        external_id = real_submit(self, j)
        assert meanwhile(Job.objects.get(pk=j.pk))
        return external_id

    with mock.patch.object(LocalAdapter, "submit", submit):
        dispatch_jobs([job.pk])


def test_preempting_a_job_whose_dispatch_is_in_flight_stops_what_that_dispatch_submitted(make_job, cluster):
    job = make_job(command="sleep 30")
    admit(job, cluster)
    first_key = job.dispatch_key
    dispatch_meanwhile(job, lambda current: lifecycle.preempt(current, "preempted to return borrowed GPUs"))
    job.refresh_from_db()
    assert (job.state, job.attempt) == (JobState.PENDING, 1)
    wait_for(lambda: backend_state(cluster, job, first_key) == "cancelled")


def test_a_dispatch_in_flight_across_a_requeue_and_readmission_records_nothing_on_the_new_attempt(
    make_job, cluster, h100
):
    elsewhere = Cluster.objects.create(slug="elsewhere", name="Elsewhere", kind=ClusterKind.LOCAL)
    Pool.objects.create(cluster=elsewhere, gpu_type=h100, capacity=4)
    job = make_job(command="sleep 30")
    admit(job, cluster)
    first_key = job.dispatch_key

    def preempted_then_admitted_elsewhere(current: Job) -> bool:
        # The next attempt is admitted before the dispatcher of this one records it.
        return lifecycle.preempt(current, "preempted to return borrowed GPUs") and admit(current, elsewhere)

    dispatch_meanwhile(job, preempted_then_admitted_elsewhere)
    job.refresh_from_db()
    assert (job.state, job.attempt, job.cluster_id, job.external_id) == (
        JobState.ADMITTED,
        1,
        elsewhere.pk,
        "",
    )
    wait_for(lambda: backend_state(cluster, job, first_key) == "cancelled")


def test_cancelling_a_job_whose_dispatcher_died_after_submitting_stops_it_and_records_what_it_ran(
    make_job, cluster, owner
):
    from jobs import dispatch

    job = make_job(command="echo ran; sleep 30")
    admit(job, cluster)
    # A dispatcher claimed the attempt and submitted it, then died before recording the submission.
    assert dispatch.claim([job]) == [job]
    cluster.adapter().submit(job)
    wait_for(lambda: backend_state(cluster, job, job.dispatch_key) == "running")
    assert lifecycle.cancel(Job.objects.get(pk=job.pk), owner)
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED and job.cancel_requested_at is not None
    # Its lease runs out; the sweep's dispatcher finds the attempt instead of submitting it again.
    Job.objects.filter(pk=job.pk).update(dispatch_lease_until=timezone.now() - timedelta(seconds=1))
    with mock.patch.object(LocalAdapter, "submit", side_effect=AssertionError("submitted again")):
        dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert (job.state, job.external_id) == (JobState.SUBMITTED, job.dispatch_key)
    wait_for(lambda: backend_state(cluster, job, job.dispatch_key) == "cancelled")
    dispatch.sync_cluster(cluster)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert job.started_at is not None and job.ended_at > job.started_at  # what it ran is on record


def test_a_cancelled_job_a_dead_dispatcher_never_submitted_ends_without_being_submitted(
    make_job, cluster, owner
):
    from jobs import dispatch

    job = make_job(command="echo should-not-run")
    admit(job, cluster)
    assert dispatch.claim([job]) == [job]  # claimed, then the dispatcher died before submitting
    assert lifecycle.cancel(Job.objects.get(pk=job.pk), owner)
    Job.objects.filter(pk=job.pk).update(dispatch_lease_until=timezone.now() - timedelta(seconds=1))
    with mock.patch.object(LocalAdapter, "submit", side_effect=AssertionError("submitted")):
        dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert cluster.adapter().find(job) is None


def test_two_dispatchers_of_one_attempt_submit_it_once(transactional_db, make_job, cluster):
    job = make_job(command="true")
    admit(job, cluster)
    submits: list[str] = []
    real_submit = LocalAdapter.submit

    def slow_submit(self, j):
        submits.append(j.dispatch_key)
        time.sleep(0.5)  # a slow sbatch: the other dispatcher comes in meanwhile
        return real_submit(self, j)

    def dispatcher():
        try:
            dispatch_jobs([job.pk])
        finally:
            connection.close()

    with mock.patch.object(LocalAdapter, "submit", slow_submit):
        threads = [threading.Thread(target=dispatcher) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    job.refresh_from_db()
    assert submits == [job.dispatch_key]
    assert job.state == JobState.SUBMITTED


def test_the_sweep_does_not_redispatch_a_job_another_dispatcher_is_submitting(make_job, cluster):
    job = make_job(command="true")
    admit(job, cluster)
    long_ago = timezone.now() - timedelta(minutes=5)
    Job.objects.filter(pk=job.pk).update(admitted_at=long_ago, dispatch_enqueued_at=long_ago)
    seen = []

    def sweep_meanwhile(self, j):
        with mock.patch("jobs.tasks.enqueue_dispatch") as redispatch:
            sweep()
        seen.append(redispatch.call_args)
        return f"{j.dispatch_key}"

    with mock.patch.object(LocalAdapter, "submit", sweep_meanwhile):
        dispatch_jobs([job.pk])
    assert seen == [mock.call({})]


def test_a_dispatch_out_of_time_leaves_its_jobs_admitted_for_the_sweep(make_job, cluster):
    """The task's soft time limit strikes during a backend call: the jobs not submitted stay
    admitted, their lease given back (the sweep dispatches them again), with no failure counted."""
    first, second = make_job(command="true"), make_job(command="true")
    admit(first, cluster)
    admit(second, cluster)
    with (
        mock.patch.object(LocalAdapter, "submit", autospec=True, side_effect=SoftTimeLimitExceeded()),
        pytest.raises(SoftTimeLimitExceeded),
    ):
        dispatch_jobs([first.pk, second.pk], cluster_id=cluster.pk)
    for job in Job.objects.filter(pk__in=[first.pk, second.pk]):
        assert job.state == JobState.ADMITTED
        assert job.dispatch_lease_until is None and job.dispatch_failures == 0
        assert "slow to answer" in job.reason


def test_an_unexpected_dispatch_error_is_retried_with_backoff_then_fails_the_job_unbilled(
    make_job, cluster, django_capture_on_commit_callbacks
):
    job = make_job()
    admit(job, cluster)
    released = []
    job_released.connect(lambda sender, **kw: released.append(kw), weak=False, dispatch_uid="t-released")
    try:
        with (
            mock.patch.object(LocalAdapter, "submit", side_effect=KeyError("spec")),
            django_capture_on_commit_callbacks(execute=True),
        ):
            for attempt in range(1, settings.FACTORY_DISPATCH_MAX_FAILURES + 1):
                dispatch_jobs([job.pk])  # no exception escapes: the job records the failure
                job.refresh_from_db()
                if attempt < settings.FACTORY_DISPATCH_MAX_FAILURES:
                    assert job.state == JobState.ADMITTED
                    assert f"dispatch failed ({attempt} of" in job.reason and "KeyError" in job.reason
                    # Backoff: the sweep leaves it alone until its lease runs out.
                    assert job.dispatch_lease_until > timezone.now()
                    with mock.patch("jobs.tasks.enqueue_dispatch") as redispatch:
                        sweep()
                    assert job.pk not in redispatch.call_args.args[0]
                    Job.objects.filter(pk=job.pk).update(
                        dispatch_lease_until=timezone.now() - timedelta(seconds=1)
                    )
    finally:
        job_released.disconnect(dispatch_uid="t-released")
    assert job.state == JobState.FAILED
    assert job.platform_fault
    assert "KeyError" in job.reason
    assert [r["job_id"] for r in released] == [job.pk]


def test_a_cancel_the_backend_has_not_honoured_is_enqueued_once_not_every_sweep(make_job, cluster, owner):
    job = make_job(command="sleep 30")
    admit(job, cluster)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    with mock.patch("jobs.tasks.cancel_job.delay"):
        assert lifecycle.cancel(job, owner)
    long_ago = timezone.now() - timedelta(minutes=5)
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=long_ago, cancel_enqueued_at=long_ago)
    with mock.patch("jobs.tasks.cancel_job.delay") as enqueue:
        for _ in range(5):
            sweep()
    assert enqueue.call_count == 1
    cluster.adapter().cancel(job)


def test_every_periodic_task_expires_before_the_next_one_is_due():
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert 0 < entry.get("options", {}).get("expires", 0) <= entry["schedule"], name


def test_a_committed_submission_answers_202_when_the_broker_is_down(
    client, owner, tenant, h100, cluster, django_capture_on_commit_callbacks
):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(owner)
    down = OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    with (
        mock.patch("kombu.messaging.Producer.publish", side_effect=down),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(
            "/api/v1/jobs/",
            {
                "tenant": tenant.slug,
                "name": "train",
                "command": "true",
                "gpu_type": "h100",
                "gpu_count": 1,
                "time_limit_minutes": 5,
            },
            format="json",
        )
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.state == JobState.PENDING  # the row is the outbox: periodic admission takes it from here
