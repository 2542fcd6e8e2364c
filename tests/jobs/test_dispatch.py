"""Dispatch, cancel and sync through the real local backend; the sweep that mends stalled work."""

from __future__ import annotations

import time
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from factory.adapters import BackendUnavailable
from factory.adapters.local import LocalAdapter
from jobs import dispatch
from jobs.choices import JobState
from jobs.models import Job
from jobs.tasks import dispatch_job

pytestmark = pytest.mark.django_db


def sync_until(job: Job, predicate, timeout: float = 15.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dispatch.sync_cluster(job.cluster)
        job.refresh_from_db()
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job stuck in {job.state}: {job.reason}")


def test_dispatched_job_runs_on_the_local_backend_to_success(make_job, cluster):
    job = make_job(command="echo hi from $CUDA_VISIBLE_DEVICES", gpu_count=2)
    job.admit(cluster)
    dispatch_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED and job.external_id == str(job.uid)
    job = sync_until(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    assert cluster.adapter().logs(job, 0).text == "hi from 0,1\n"


def test_dispatching_twice_makes_one_backend_job(make_job, cluster, tmp_path):
    runs = tmp_path / "runs"
    job = make_job(command=f"echo x >> {runs}")
    job.admit(cluster)
    dispatch_job(job.pk)
    # A duplicated task, as a broker redelivery would produce: the job is no longer admitted.
    dispatch_job(job.pk)
    # Even a retry that raced before the state changed finds the existing backend job.
    Job.objects.filter(pk=job.pk).update(state=JobState.ADMITTED)
    dispatch_job(job.pk)
    job = sync_until(job, lambda j: j.is_terminal)
    assert runs.read_text() == "x\n"
    assert job.external_id == str(job.uid)


def test_cancel_while_dispatch_is_in_flight_withdraws_the_backend_job(make_job, cluster, owner, tmp_path):
    job = make_job(command="sleep 30")
    job.admit(cluster)
    real_submit = LocalAdapter.submit

    def submit_then_user_cancels(self, j):
        external_id = real_submit(self, j)
        Job.objects.get(pk=j.pk).cancel(owner)
        return external_id

    with mock.patch.object(LocalAdapter, "submit", submit_then_user_cancels):
        dispatch_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    adapter = cluster.adapter()
    deadline = time.monotonic() + 10
    while adapter.statuses([job])[str(job.uid)].state != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_cancel_running_job_reaches_cancelled(make_job, cluster, owner):
    from jobs.tasks import cancel_job

    job = make_job(command="echo started; sleep 30")
    job.admit(cluster)
    dispatch_job(job.pk)
    job = sync_until(job, lambda j: j.state == JobState.RUNNING)
    job.cancel(owner)
    cancel_job(job.pk)
    job = sync_until(job, lambda j: j.is_terminal)
    assert job.state == JobState.CANCELLED


def test_time_limit_ends_in_timed_out(make_job, cluster, monkeypatch):
    job = make_job(command="sleep 30")
    job.admit(cluster)
    real = LocalAdapter._create_job_dir

    def short_limit(self, j, job_dir):
        real(self, j, job_dir)
        import json

        spec = json.loads((job_dir / "spec.json").read_text())
        spec["time_limit_seconds"] = 1
        (job_dir / "spec.json").write_text(json.dumps(spec))

    monkeypatch.setattr(LocalAdapter, "_create_job_dir", short_limit)
    dispatch_job(job.pk)
    job = sync_until(job, lambda j: j.is_terminal)
    assert job.state == JobState.TIMED_OUT


def test_unreachable_backend_leaves_job_admitted_with_a_reason(make_job, cluster):
    job = make_job()
    job.admit(cluster)
    with (
        mock.patch.object(LocalAdapter, "submit", autospec=True, side_effect=BackendUnavailable("refused")),
        pytest.raises(BackendUnavailable),
    ):
        dispatch.dispatch(Job.objects.get(pk=job.pk))
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED
    assert "unreachable" in job.reason


def test_sweep_redispatches_stalled_admissions_and_syncs_busy_clusters(
    make_job, cluster, django_capture_on_commit_callbacks
):
    stalled = make_job(name="stalled")
    stalled.admit(cluster)
    long_ago = timezone.now() - timedelta(minutes=5)
    Job.objects.filter(pk=stalled.pk).update(admitted_at=long_ago)
    fresh = make_job(name="fresh")
    fresh.admit(cluster)
    running = make_job(name="running")
    running.admit(cluster)
    running.mark_submitted("x")

    with (
        mock.patch("jobs.tasks.dispatch_job.delay") as redispatch,
        mock.patch("jobs.tasks.sync_cluster_task.delay") as sync,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = dispatch.sweep()
    assert result == {"clusters": 1, "redispatched": 1, "recancelled": 0}
    redispatch.assert_called_once_with(stalled.pk)
    sync.assert_called_once_with(cluster.pk)


def test_a_requeued_job_is_a_new_backend_submission(make_job, cluster, tmp_path):
    runs = tmp_path / "runs"
    job = make_job(command=f"echo $FACTORY_JOB_UID >> {runs}; sleep 30")
    job.admit(cluster)
    dispatch_job(job.pk)
    job = sync_until(job, lambda j: j.state == JobState.RUNNING)
    first_key = job.external_id
    assert job.requeue("preempted to return borrowed GPUs", preempted=True)
    cluster.adapter().cancel(Job(uid=job.uid, attempt=0))
    job.refresh_from_db()
    assert (job.attempt, job.state, job.external_id) == (1, JobState.PENDING, "")
    assert job.dispatch_key == f"{job.uid}-r1"
    job.admit(cluster)
    dispatch_job(job.pk)
    job.refresh_from_db()
    assert job.external_id == f"{job.uid}-r1" != first_key
    sync_until(job, lambda j: j.state == JobState.RUNNING)
    wait_for_lines = time.monotonic() + 10
    while runs.read_text().count(str(job.uid)) < 2:
        assert time.monotonic() < wait_for_lines
        time.sleep(0.1)
