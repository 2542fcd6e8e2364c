"""Dispatch, cancel and sync through the real local backend; the sweep that mends stalled work."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from unittest import mock

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from factory.adapters import BackendUnavailable, JobRejected
from factory.adapters.local import LocalAdapter
from factory.models import Cluster, Pool
from jobs import dispatch, lifecycle
from jobs.choices import JobState
from jobs.models import Job, JobEvent
from jobs.tasks import dispatch_batches, dispatch_jobs, enqueue_dispatch, sweep
from tests.support import admit

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
    admit(job, cluster)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED and job.external_id == str(job.uid)
    job = sync_until(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    assert cluster.adapter().logs(job, 0).text == "hi from 0,1\n"


def test_dispatching_twice_makes_one_backend_job(make_job, cluster, job_scratch):
    runs = job_scratch / "runs"
    job = make_job(command=f"echo x >> {runs}")
    admit(job, cluster)
    dispatch_jobs([job.pk])
    # A duplicated task, as a broker redelivery would produce: the job is no longer admitted.
    dispatch_jobs([job.pk])
    # Even a retry after the first dispatcher's lease ran out (it died before recording the
    # submission) finds the existing backend job.
    Job.objects.filter(pk=job.pk).update(state=JobState.ADMITTED, dispatch_lease_until=None)
    dispatch_jobs([job.pk])
    job = sync_until(job, lambda j: j.is_terminal)
    assert runs.read_text() == "x\n"
    assert job.external_id == str(job.uid)


def test_cancel_while_dispatch_is_in_flight_withdraws_the_backend_job(make_job, cluster, owner, tmp_path):
    job = make_job(command="sleep 30")
    admit(job, cluster)
    real_submit = LocalAdapter.submit

    def submit_then_user_cancels(self, j):
        external_id = real_submit(self, j)
        lifecycle.cancel(Job.objects.get(pk=j.pk), owner)
        return external_id

    with mock.patch.object(LocalAdapter, "submit", submit_then_user_cancels):
        dispatch_jobs([job.pk])
    # Recorded as submitted (it reached the backend) and stopped there; the sync ends it.
    job = sync_until(job, lambda j: j.is_terminal)
    assert job.state == JobState.CANCELLED
    adapter = cluster.adapter()
    deadline = time.monotonic() + 10
    while adapter.statuses([job])[str(job.uid)].state != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_cancel_running_job_reaches_cancelled(make_job, cluster, owner):
    from jobs.tasks import cancel_job

    job = make_job(command="echo started; sleep 30")
    admit(job, cluster)
    dispatch_jobs([job.pk])
    job = sync_until(job, lambda j: j.state == JobState.RUNNING)
    lifecycle.cancel(job, owner)
    cancel_job(job.pk)
    job = sync_until(job, lambda j: j.is_terminal)
    assert job.state == JobState.CANCELLED


def test_time_limit_ends_in_timed_out(make_job, cluster, monkeypatch):
    job = make_job(command="sleep 30")
    admit(job, cluster)
    real = LocalAdapter._create_job_dir

    def short_limit(self, j, job_dir):
        real(self, j, job_dir)
        import json

        spec = json.loads((job_dir / "spec.json").read_text())
        spec["time_limit_seconds"] = 1
        (job_dir / "spec.json").write_text(json.dumps(spec))

    monkeypatch.setattr(LocalAdapter, "_create_job_dir", short_limit)
    dispatch_jobs([job.pk])
    job = sync_until(job, lambda j: j.is_terminal)
    assert job.state == JobState.TIMED_OUT


def test_unreachable_backend_leaves_job_admitted_with_a_reason(make_job, cluster):
    job = make_job()
    admit(job, cluster)
    with (
        mock.patch.object(LocalAdapter, "submit", autospec=True, side_effect=BackendUnavailable("refused")),
        pytest.raises(BackendUnavailable),
    ):
        dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.ADMITTED
    assert "unreachable" in job.reason


def test_sweep_redispatches_stalled_admissions_and_syncs_busy_clusters(
    make_job, cluster, django_capture_on_commit_callbacks
):
    stalled = make_job(name="stalled")
    admit(stalled, cluster)
    long_ago = timezone.now() - timedelta(minutes=5)
    Job.objects.filter(pk=stalled.pk).update(admitted_at=long_ago, dispatch_enqueued_at=long_ago)
    fresh = make_job(name="fresh")
    admit(fresh, cluster)
    running = make_job(name="running")
    admit(running, cluster)
    running.mark_submitted("x")

    with (
        mock.patch("jobs.tasks.enqueue_dispatch") as redispatch,
        mock.patch("jobs.tasks.sync_cluster_task.delay") as sync,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = sweep()
    assert result == {"clusters": 1, "redispatched": 1, "recancelled": 0, "arrays_closed": 0}
    redispatch.assert_called_once_with({stalled.pk: stalled.cluster_id})
    sync.assert_called_once_with(cluster.pk)


def test_sweep_syncs_a_cluster_once_however_many_of_its_jobs_are_at_the_backend(make_job, cluster):
    for i in range(3):
        job = make_job(name=f"at-backend-{i}")
        admit(job, cluster)
        job.mark_submitted(f"x{i}")

    with mock.patch("jobs.tasks.sync_cluster_task.delay") as sync:
        result = sweep()
    assert result["clusters"] == 1
    sync.assert_called_once_with(cluster.pk)


def test_a_requeued_job_is_a_new_backend_submission(make_job, cluster, job_scratch):
    runs = job_scratch / "runs"
    job = make_job(command=f"echo $FACTORY_JOB_UID >> {runs}; sleep 30")
    admit(job, cluster)
    dispatch_jobs([job.pk])
    job = sync_until(job, lambda j: j.state == JobState.RUNNING)
    first_key = job.external_id
    assert job.requeue("preempted to return borrowed GPUs", preempted=True)
    cluster.adapter().cancel(Job(uid=job.uid, attempt=0))
    job.refresh_from_db()
    assert (job.attempt, job.state, job.external_id) == (1, JobState.PENDING, "")
    assert job.dispatch_key == f"{job.uid}-r1"
    admit(job, cluster)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.external_id == f"{job.uid}-r1" != first_key
    sync_until(job, lambda j: j.state == JobState.RUNNING)
    wait_for_lines = time.monotonic() + 10
    while runs.read_text().count(str(job.uid)) < 2:
        assert time.monotonic() < wait_for_lines
        time.sleep(0.1)


def admitted(make_job, cluster, *names: str) -> list[Job]:
    jobs = [make_job(name=name, command="true") for name in names]
    for job in jobs:
        admit(job, cluster)
    return jobs


def test_a_batch_is_submitted_in_order_in_a_fixed_number_of_statements(make_job, cluster):
    jobs = admitted(make_job, cluster, "a", "b", "c", "d", "e", "f")
    order = []
    real_submit = LocalAdapter.submit

    def submit(self, job):
        order.append(job.name)
        return real_submit(self, job)

    with mock.patch.object(LocalAdapter, "submit", submit):
        with CaptureQueriesContext(connection) as two:
            dispatch_jobs([jobs[1].pk, jobs[0].pk])
        with CaptureQueriesContext(connection) as four:
            dispatch_jobs([jobs[4].pk, jobs[2].pk, jobs[5].pk, jobs[3].pk])
    assert order == ["b", "a", "e", "c", "f", "d"]
    stored = Job.objects.filter(pk__in=[j.pk for j in jobs]).order_by("pk")
    assert [(j.state, j.external_id) for j in stored] == [(JobState.SUBMITTED, str(j.uid)) for j in jobs]
    assert JobEvent.objects.filter(state=JobState.SUBMITTED, job__in=jobs).count() == 6
    assert len(four.captured_queries) == len(two.captured_queries)


def test_a_rejected_job_does_not_hold_back_its_batch(make_job, cluster):
    jobs = admitted(make_job, cluster, "first", "bad", "last")
    real_submit = LocalAdapter.submit

    def submit(self, job):
        if job.name == "bad":
            raise JobRejected("no such partition")
        return real_submit(self, job)

    with mock.patch.object(LocalAdapter, "submit", submit):
        dispatch_jobs([j.pk for j in jobs])
    states = dict(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("name", "state"))
    assert states == {"first": JobState.SUBMITTED, "bad": JobState.REJECTED, "last": JobState.SUBMITTED}
    assert "no such partition" in Job.objects.get(name="bad").reason


def test_an_unreachable_cluster_holds_back_only_its_own_jobs_until_the_retry(make_job, cluster, h100):
    other = Cluster.objects.create(slug="local-b", name="Local B", kind=cluster.kind, region="local")
    Pool.objects.create(cluster=other, gpu_type=h100, capacity=4)
    a1, a2 = admitted(make_job, cluster, "a1", "a2")
    b1, b2 = admitted(make_job, other, "b1", "b2")
    batch = [a1.pk, b1.pk, a2.pk, b2.pk]
    real_submit = LocalAdapter.submit

    def submit(self, job):
        if self.cluster.slug == "local-b":
            raise BackendUnavailable("connection refused")
        return real_submit(self, job)

    with mock.patch.object(LocalAdapter, "submit", submit), pytest.raises(BackendUnavailable):
        dispatch_jobs(batch)
    jobs = Job.objects.in_bulk(batch)
    assert [jobs[pk].state for pk in batch] == [
        JobState.SUBMITTED,
        JobState.ADMITTED,
        JobState.SUBMITTED,
        JobState.ADMITTED,
    ]
    assert all("local-b is unreachable" in jobs[pk].reason for pk in (b1.pk, b2.pk))

    dispatch_jobs(batch)  # the task's retry, once the cluster answers again
    jobs = Job.objects.in_bulk(batch)
    assert {jobs[pk].state for pk in batch} == {JobState.SUBMITTED}
    assert [jobs[pk].external_id for pk in batch] == [str(jobs[pk].uid) for pk in batch]
    assert JobEvent.objects.filter(job_id__in=batch, state=JobState.SUBMITTED).count() == 4


def test_enqueued_jobs_go_out_in_batches_in_admission_order_on_their_kinds_queue(settings, cluster):
    """Published to the real broker: each cluster's jobs in batches, in order, on the queue of the
    cluster's kind, so that a hung Slurm holds up no Kubernetes dispatch."""
    settings.FACTORY_DISPATCH_BATCH, settings.FACTORY_DISPATCH_SPREAD = 2, 1
    slurm = Cluster.objects.create(slug="hpc", name="HPC", kind="slurm")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("dispatch-local", "dispatch-slurm", "default")
    enqueue_dispatch({5: cluster.pk, 3: slurm.pk, 9: cluster.pk, 1: cluster.pk, 7: slurm.pk, 8: cluster.pk})

    def batches(queue: str) -> list[tuple[str, str]]:
        messages = [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]  # oldest first
        return [
            (m["headers"]["task"], m["headers"]["argsrepr"], m["headers"]["kwargsrepr"]) for m in messages
        ]

    task = "jobs.tasks.dispatch_jobs"
    assert batches("dispatch-local") == [
        (task, "([5, 9],)", f"{{'cluster_id': {cluster.pk}}}"),
        (task, "([1, 8],)", f"{{'cluster_id': {cluster.pk}}}"),
    ]
    assert batches("dispatch-slurm") == [(task, "([3, 7],)", f"{{'cluster_id': {slurm.pk}}}")]
    assert broker.llen("default") == 0
    broker.delete("dispatch-local", "dispatch-slurm")


def test_a_small_burst_is_spread_over_several_tasks_and_a_large_one_batched(settings):
    settings.FACTORY_DISPATCH_BATCH, settings.FACTORY_DISPATCH_SPREAD = 16, 4
    assert dispatch_batches([1, 2, 3]) == [[1], [2], [3]]
    assert dispatch_batches(list(range(8))) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [len(b) for b in dispatch_batches(list(range(40)))] == [10, 10, 10, 10]
    assert [len(b) for b in dispatch_batches(list(range(500)))] == [16] * 31 + [4]
    assert dispatch_batches([]) == []


def test_why_jobs_wait_at_their_backend_is_recorded_together(make_job, cluster):
    from factory.adapters import BackendState, StatusReport

    jobs = admitted(make_job, cluster, *(f"q{i}" for i in range(20)), "runs")
    for job in jobs:
        job.mark_submitted(f"x{job.pk}")
    Job.objects.filter(pk=jobs[0].pk).update(reason="waiting for free GPUs on the cluster")
    reports = {
        f"x{job.pk}": StatusReport(f"x{job.pk}", BackendState.QUEUED, "waiting for free GPUs on the cluster")
        for job in jobs[:-1]
    }
    reports[f"x{jobs[-1].pk}"] = StatusReport(
        f"x{jobs[-1].pk}", BackendState.RUNNING, started_at=timezone.now()
    )
    fresh = list(Job.objects.filter(pk__in=[j.pk for j in jobs]).select_related("cluster", "gpu_type"))
    with (
        mock.patch.object(LocalAdapter, "statuses", return_value=reports),
        CaptureQueriesContext(connection) as queries,
    ):
        assert dispatch.sync_jobs(cluster, fresh) == 20  # 19 reasons changed, one started
    waits = JobEvent.objects.filter(kind="reason", message="Waiting: waiting for free GPUs on the cluster")
    assert sorted(waits.values_list("job_id", flat=True)) == [j.pk for j in jobs[1:-1]]
    assert set(Job.objects.filter(pk__in=[j.pk for j in jobs[:-1]]).values_list("reason", flat=True)) == {
        "waiting for free GPUs on the cluster"
    }
    assert Job.objects.get(pk=jobs[-1].pk).state == JobState.RUNNING
    assert len(queries.captured_queries) < 19  # the reasons in a few statements, not two per job
