from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from factory.adapters import BackendState, StatusReport
from jobs import lifecycle
from jobs.choices import JobState
from jobs.models import Job, JobEvent
from jobs.signals import job_released
from tests.support import admit

pytestmark = pytest.mark.django_db


def states(job: Job) -> list[str]:
    return list(JobEvent.objects.filter(job=job, kind="state").values_list("state", flat=True))


def report(job, state, **kw) -> StatusReport:
    return StatusReport(external_id=job.external_id, state=state, **kw)


def test_a_job_walks_the_lifecycle_and_logs_each_step(make_job, cluster):
    job = make_job()
    assert admit(job, cluster)
    assert job.mark_submitted("ext-1")
    start = timezone.now()
    assert job.apply_report(report(job, BackendState.RUNNING, started_at=start))
    end = start + timedelta(seconds=5)
    assert job.apply_report(report(job, BackendState.SUCCEEDED, exit_code=0, started_at=start, ended_at=end))
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert (job.started_at, job.ended_at, job.exit_code) == (start, end, 0)
    assert states(job) == ["pending", "admitted", "submitted", "running", "succeeded"]


def test_a_job_that_ran_between_syncs_still_shows_running(make_job, cluster):
    job = make_job()
    admit(job, cluster)
    job.mark_submitted("ext-1")
    now = timezone.now()
    job.apply_report(report(job, BackendState.FAILED, exit_code=3, started_at=now, ended_at=now))
    assert states(job) == ["pending", "admitted", "submitted", "running", "failed"]
    job.refresh_from_db()
    assert job.exit_code == 3
    assert "exit code 3" in job.events.last().message


def test_stale_report_after_the_end_is_ignored(make_job, cluster):
    job = make_job()
    admit(job, cluster)
    job.mark_submitted("ext-1")
    job.apply_report(report(job, BackendState.SUCCEEDED, exit_code=0))
    events = job.events.count()
    assert not job.apply_report(report(job, BackendState.RUNNING))
    assert not job.apply_report(report(job, BackendState.FAILED, exit_code=1))
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.exit_code == 0
    assert job.events.count() == events


def test_disallowed_edges_change_nothing(make_job, cluster):
    job = make_job()
    assert not job.mark_submitted("x")  # pending cannot skip admission
    assert not job.mark_running(None)
    job.refresh_from_db()
    assert job.state == JobState.PENDING and job.external_id == ""


def test_transition_by_a_stale_copy_loses_to_the_first_writer(make_job, cluster):
    job = make_job()
    copy = Job.objects.get(pk=job.pk)
    assert admit(job, cluster)
    assert not admit(copy, cluster)  # the conditional update finds the state already moved
    assert copy.state == JobState.ADMITTED
    assert states(job).count("admitted") == 1


def test_cancel_before_backend_ends_the_job_at_once(make_job, owner):
    job = make_job()
    assert lifecycle.cancel(job, owner)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED and job.ended_at
    assert not lifecycle.cancel(job, owner)  # twice is a no-op


def test_cancel_at_backend_is_a_request(make_job, cluster, owner, django_capture_on_commit_callbacks):
    job = make_job()
    admit(job, cluster)
    job.mark_submitted("ext")
    with django_capture_on_commit_callbacks() as callbacks:
        assert lifecycle.cancel(job, owner)
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED and job.cancel_requested_at
    assert len(callbacks) == 1  # the cancel task is enqueued on commit
    assert not lifecycle.cancel(job, owner)


def test_leaving_the_holding_states_announces_the_release_once(
    make_job, cluster, django_capture_on_commit_callbacks
):
    released = []

    def receiver(sender, job_id, **kwargs):
        released.append(job_id)

    job_released.connect(receiver)
    try:
        job = make_job()
        with django_capture_on_commit_callbacks(execute=True):
            admit(job, cluster)
            job.mark_submitted("x")
            job.finish(JobState.FAILED, exit_code=1)
            job.finish(JobState.FAILED, exit_code=1)
    finally:
        job_released.disconnect(receiver)
    assert released == [job.pk]


def test_requeue_returns_job_to_pending_and_clears_placement(make_job, cluster):
    job = make_job()
    admit(job, cluster)
    job.mark_submitted("x")
    assert job.requeue("preempted to return borrowed GPUs")
    job.refresh_from_db()
    assert (job.state, job.cluster, job.external_id) == (JobState.PENDING, None, "")
    assert job.reason == "preempted to return borrowed GPUs"


def test_wait_reason_is_recorded_once_per_change(make_job):
    job = make_job()
    assert job.explain_wait("waiting for 2 free h100")
    assert not job.explain_wait("waiting for 2 free h100")
    assert job.explain_wait("no cluster")
    assert job.events.filter(kind="reason").count() == 2


def test_a_running_job_the_cluster_requeues_goes_back_to_submitted(make_job, cluster):
    job = make_job()
    admit(job, cluster)
    job.mark_submitted("ext-1")
    job.apply_report(report(job, BackendState.RUNNING, started_at=timezone.now()))
    assert not job.apply_report(report(job, BackendState.QUEUED))  # no reason: nothing to act on
    assert job.apply_report(report(job, BackendState.QUEUED, reason="preempted by Kueue"))
    job.refresh_from_db()
    assert (job.state, job.reason) == (JobState.SUBMITTED, "preempted by Kueue")
    assert job.events.last().message == "Requeued by the cluster: preempted by Kueue"
    assert not job.apply_report(report(job, BackendState.QUEUED, reason="preempted by Kueue"))
    assert states(job) == ["pending", "admitted", "submitted", "running", "submitted"]
