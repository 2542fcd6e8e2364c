"""The ray backend against a real Ray head started for this module (4 logical GPUs, tagged as
H100 nodes; see ray_head.py). Ray runs about one job a second on two cores, so jobs here are short
and few."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import urllib.request
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from factory.adapters import BackendState, BackendUnavailable
from factory.adapters.ray import RayAdapter, RayDashboard
from factory.models import Cluster, Pool
from jobs import dispatch, lifecycle, submission
from jobs.choices import JobState
from jobs.models import Job
from jobs.tasks import cancel_backend_job, cancel_job, dispatch_jobs
from tests.support import admit

from .conftest import free_port, wait_until
from .ray_head import RayHead

if importlib.util.find_spec("ray") is None:
    if os.environ.get("FACTORY_REQUIRE_RAY"):
        raise RuntimeError("Ray is required but not installed: pip install the dev extras")
    pytest.skip("no Ray here: install the dev extras (ray[default])", allow_module_level=True)

pytestmark = [pytest.mark.ray, pytest.mark.django_db]

POLL = 0.3
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="session")
def ray_head():
    head = RayHead(num_gpus=4, num_cpus=8, resources={"accelerator_type:H100": 1}, start_timeout_s=60)
    head.start()
    yield head
    head.stop()


def ray_api(head: RayHead, method: str, path: str):
    request = urllib.request.Request(head.address + path, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def supervisor_resources(head: RayHead, job: Job) -> dict:
    query = "filter_keys=class_name&filter_predicates=%3D&filter_values=JobSupervisor&detail=true"
    actors = ray_api(head, "GET", f"/api/v0/actors?{query}")["data"]["result"]["result"]
    return next(a for a in actors if a["name"].endswith(job.external_id))["required_resources"]


def ray_jobs(head: RayHead) -> list[dict]:
    return [j for j in ray_api(head, "GET", "/api/jobs/") if j.get("submission_id")]


@pytest.fixture(autouse=True)
def clean_ray(ray_head):
    """Every test starts with an empty job list: leftovers would hold GPUs or inflate syncs."""
    yield
    for entry in ray_jobs(ray_head):
        if entry["status"] not in TERMINAL:
            ray_api(ray_head, "POST", f"/api/jobs/{entry['submission_id']}/stop")
    wait_until(
        lambda: all(j["status"] in TERMINAL for j in ray_jobs(ray_head)), 30, "Ray jobs to stop", interval=0.5
    )
    for entry in ray_jobs(ray_head):
        ray_api(ray_head, "DELETE", f"/api/jobs/{entry['submission_id']}")


@pytest.fixture
def ray_cluster(db, ray_head, h100) -> Cluster:
    cluster = Cluster.objects.create(
        slug="ray-local", name="Ray", kind="ray", region="local", connection={"address": ray_head.address}
    )
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=4)
    return cluster


@pytest.fixture
def ray_job(ray_cluster, tenant, owner, h100):
    def make(cluster=ray_cluster, **overrides):
        spec = {
            "name": "ray-test",
            "command": "echo hi",
            "gpu_type": h100,
            "gpu_count": 1,
            "time_limit_minutes": 10,
            "cpus": 1,
            "memory_gb": 1,
        }
        spec.update(overrides)
        job, _ = submission.submit(tenant=tenant, owner=owner, spec=spec)
        admit(job, cluster)
        return job

    return make


def run_to(job: Job, predicate, timeout: float = 60.0) -> Job:
    def check():
        dispatch.sync_cluster(job.cluster)
        job.refresh_from_db()
        return predicate(job)

    wait_until(check, timeout, lambda: f"job {job.name} ({job.state}: {job.reason})", interval=POLL)
    return job


def log_of(job: Job) -> str:
    return job.cluster.adapter().logs(job, 0).text


def output_of(head: RayHead, job: Job) -> str:
    """The job's own output. Ray's log starts with a line of its own, and Ray writes the line
    "Running entrypoint for job <id>: <entrypoint>" through a buffer it flushes after the command
    has started, so that line may land anywhere in the first output."""
    entrypoint = ray_api(head, "GET", f"/api/jobs/{job.external_id}")["entrypoint"]
    log = log_of(job).replace(f"Running entrypoint for job {job.external_id}: {entrypoint}\n", "", 1)
    first, _, rest = log.partition("\n")
    assert first.endswith("Runtime env is setting up.")
    return rest


def test_two_gpu_job_sees_two_devices_and_succeeds(ray_job, ray_head):
    job = ray_job(command="echo CUDA=$CUDA_VISIBLE_DEVICES; echo uid=$FACTORY_JOB_UID", gpu_count=2, cpus=2)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED and job.external_id == f"aif-{job.uid}"
    info = ray_api(ray_head, "GET", f"/api/jobs/{job.external_id}")
    assert info["metadata"] == {
        "aif_job_uid": str(job.uid),
        "aif_job_name": "ray-test",
        "aif_tenant": "demo-lab",
        "aif_cluster": "ray-local",
    }
    # The job API does not echo the entrypoint's resources; its supervisor actor holds them.
    assert supervisor_resources(ray_head, job) == {"GPU": 2.0, "CPU": 2.0, "memory": float(1024**3)}
    job = run_to(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    cuda, uid = output_of(ray_head, job).splitlines()
    assert len(cuda.removeprefix("CUDA=").split(",")) == 2
    assert uid == f"uid={job.uid}"
    assert job.ended_at and job.ended_at <= timezone.now()


def test_exit_code_is_recorded(ray_job, ray_head):
    job = ray_job(command="echo about to fail; exit 3")
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code, job.reason) == (JobState.FAILED, 3, "")
    assert output_of(ray_head, job) == "about to fail\n"


HOSTILE_VALUES = [
    "line1\nline2",
    "${HOME} and $HOME",
    "$(touch /tmp/aif-ray-pwned)",
    "`id`; rm -rf /",
    'it\'s "quoted" \\ back',
    "naïve 日本語 🚀",
]


def test_hostile_command_and_env_values_reach_the_job_verbatim(ray_job, ray_head):
    pwned = "/tmp/aif-ray-pwned"
    if os.path.exists(pwned):
        os.unlink(pwned)
    env = {f"V{i}": value for i, value in enumerate(HOSTILE_VALUES)}
    command = "#!/bin/bash\n" + "".join(f'printf "%s\\n---\\n" "$V{i}"\n' for i in range(len(HOSTILE_VALUES)))
    command += "echo 'single' \"double\" $((1 + 2))\n"
    job = ray_job(name="hostile.job_1", command=command, env=env)
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal)
    assert job.state == JobState.SUCCEEDED
    expected = "".join(f"{value}\n---\n" for value in HOSTILE_VALUES) + "single double 3\n"
    assert output_of(ray_head, job) == expected
    assert not os.path.exists(pwned)


def test_running_job_past_its_time_limit_is_stopped_and_timed_out(ray_job, ray_head):
    job = ray_job(name="too-slow", command="echo start; sleep 120", time_limit_minutes=1)
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.state == JobState.RUNNING)
    # As if it had been running for a minute: the adapter, not Ray, enforces the limit.
    Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(minutes=1, seconds=1))
    job = run_to(job, lambda j: j.is_terminal, timeout=30)
    assert job.state == JobState.TIMED_OUT
    assert job.reason == "time limit of 1 min reached"
    assert output_of(ray_head, job) == "start\n"


def test_a_requeued_job_is_a_new_ray_submission_not_its_stopped_first_attempt(ray_job, ray_cluster, ray_head):
    job = ray_job(command="echo attempt; sleep 2")
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.state == JobState.RUNNING)
    first_key, first_id = job.dispatch_key, job.external_id
    assert lifecycle.preempt(job, "preempted to return borrowed GPUs")
    cancel_backend_job(job.pk, ray_cluster.pk, first_key, first_id)  # what preempt enqueues
    admit(job, ray_cluster)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.external_id == f"aif-{job.uid}-r1" != first_id
    job = run_to(job, lambda j: j.is_terminal)
    assert job.state == JobState.SUCCEEDED
    assert ray_api(ray_head, "GET", f"/api/jobs/{first_id}")["status"] == "STOPPED"


def test_cancel_running_job(ray_job, owner):
    job = ray_job(command="echo started; sleep 120")
    dispatch_jobs([job.pk])
    run_to(job, lambda j: j.state == JobState.RUNNING)
    lifecycle.cancel(job, owner)
    cancel_job(job.pk)
    job = run_to(job, lambda j: j.is_terminal, timeout=30)
    assert (job.state, job.reason) == (JobState.CANCELLED, "")


def test_cancelled_waiting_job_ends_when_ray_would_start_it(ray_job, owner, tmp_path):
    gate = tmp_path / "gate"
    blocker = ray_job(name="blocker", gpu_count=4, command=f"while [ ! -e {gate} ]; do sleep 0.2; done")
    dispatch_jobs([blocker.pk])
    run_to(blocker, lambda j: j.state == JobState.RUNNING)
    waiting = ray_job(name="waiting", command="echo ran; sleep 60")
    dispatch_jobs([waiting.pk])
    waiting = run_to(waiting, lambda j: "waiting for free GPUs" in j.reason)
    assert waiting.state == JobState.SUBMITTED

    lifecycle.cancel(waiting, owner)
    cancel_job(waiting.pk)
    # Ray accepted the stop but cannot act on it before the job gets its resources: said so.
    waiting = run_to(waiting, lambda j: j.reason.startswith("cancel requested"), timeout=10)
    assert waiting.state == JobState.SUBMITTED
    gate.touch()
    waiting = run_to(waiting, lambda j: j.is_terminal, timeout=30)
    assert waiting.state == JobState.CANCELLED
    assert run_to(blocker, lambda j: j.is_terminal).state == JobState.SUCCEEDED


def test_dispatching_twice_makes_one_ray_job(ray_job, ray_cluster, ray_head):
    job = ray_job(command="sleep 1")
    adapter = ray_cluster.adapter()
    first = adapter.submit(job)
    assert adapter.submit(job) == first  # found by its submission id, not submitted again
    # A racing dispatch that looked before the first one submitted: Ray's "already exists"
    # answer is taken as success once the job is found.
    found = adapter.find(job)
    with mock.patch.object(RayAdapter, "find", autospec=True, side_effect=[None, found]) as find:
        assert adapter.submit(job) == first
    assert find.call_count == 2
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.external_id == first
    ours = [j for j in ray_jobs(ray_head) if (j["metadata"] or {}).get("aif_job_uid") == str(job.uid)]
    assert [j["submission_id"] for j in ours] == [first]


def test_unreachable_head_leaves_jobs_queued_and_unchanged(ray_job, ray_cluster):
    running = ray_job(name="through-outage", command="echo up; sleep 120")
    dispatch_jobs([running.pk])
    run_to(running, lambda j: j.state == JobState.RUNNING)
    waiting = ray_job(name="waits-for-head")
    events_before = running.events.count()
    real_connection = ray_cluster.connection
    Cluster.objects.filter(pk=ray_cluster.pk).update(
        connection={"address": f"http://127.0.0.1:{free_port()}", "timeout": 2}
    )
    ray_cluster.refresh_from_db()
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            dispatch_jobs([waiting.pk])
        waiting.refresh_from_db()
        assert waiting.state == JobState.ADMITTED and "unreachable" in waiting.reason
        with pytest.raises(BackendUnavailable):
            dispatch.sync_cluster(ray_cluster)
        running.refresh_from_db()
        assert running.state == JobState.RUNNING
        assert running.events.count() == events_before
        health = ray_cluster.adapter().health()
        assert not health.ok and "unreachable" in health.message
    finally:
        Cluster.objects.filter(pk=ray_cluster.pk).update(connection=real_connection)
    dispatch_jobs([waiting.pk])
    waiting.refresh_from_db()
    assert waiting.state == JobState.SUBMITTED
    assert run_to(waiting, lambda j: j.is_terminal).state == JobState.SUCCEEDED


def test_head_that_accepts_but_never_answers_times_out(ray_cluster):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nobody ever reads them
        port = silent.getsockname()[1]
        Cluster.objects.filter(pk=ray_cluster.pk).update(
            connection={"address": f"http://127.0.0.1:{port}", "timeout": 0.5}
        )
        ray_cluster.refresh_from_db()
        with pytest.raises(BackendUnavailable, match=r"no answer within 0\.5 s"):
            ray_cluster.adapter().list_jobs()


def test_logs_are_read_from_a_byte_offset(ray_job, ray_head):
    job = ray_job(command="printf 'naïve 🚀\\n'; echo second")
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal)
    adapter = job.cluster.adapter()
    whole = adapter.logs(job, 0)
    assert whole.complete and output_of(ray_head, job) == "naïve 🚀\nsecond\n"
    data = whole.text.encode()
    assert whole.next_offset == len(data)
    rest = adapter.logs(job, data.rindex(b"second\n"))
    assert rest.text.startswith("second\n") and rest.next_offset == len(data)
    past_the_end = adapter.logs(job, len(data))
    assert (past_the_end.text, past_the_end.next_offset, past_the_end.complete) == ("", len(data), True)


def test_health_reports_the_pool_gpus(ray_cluster):
    health = ray_cluster.adapter().health()
    assert health.ok, health.message
    # Ray refreshes the usage it reports every few seconds: the previous test's job may still count.
    assert [(p.gpu_type, p.capacity) for p in health.pools] == [("h100", 4)]
    assert 0 <= health.pools[0].in_use <= 4 and "/4 GPUs" in health.message


def test_accelerator_types_pin_jobs_to_their_gpu_model(ray_job, ray_cluster, ray_head, a100):
    Pool.objects.create(cluster=ray_cluster, gpu_type=a100, capacity=4)
    Cluster.objects.filter(pk=ray_cluster.pk).update(
        connection={"address": ray_head.address, "accelerator_types": {"h100": "H100", "a100": "A100"}}
    )
    ray_cluster.refresh_from_db()
    job = ray_job(cluster=ray_cluster, command="sleep 3")
    dispatch_jobs([job.pk])
    run_to(job, lambda j: j.state == JobState.RUNNING)
    assert supervisor_resources(ray_head, job)["accelerator_type:H100"] == 0.001
    health = ray_cluster.adapter().health()
    assert [(p.gpu_type, p.capacity) for p in health.pools] == [("a100", 0), ("h100", 4)]
    assert run_to(job, lambda j: j.is_terminal).state == JobState.SUCCEEDED


def test_one_list_call_syncs_many_jobs(ray_job, ray_cluster):
    jobs = [ray_job(name=f"many-{i}", command="true") for i in range(5)]
    for job in jobs:
        dispatch_jobs([job.pk])
    real_request = RayDashboard.request
    with mock.patch.object(RayDashboard, "request", autospec=True, side_effect=real_request) as request:
        dispatch.sync_cluster(ray_cluster)
        reports = ray_cluster.adapter().statuses(jobs=Job.objects.filter(pk__in=[j.pk for j in jobs]))
    assert [c.args[1:3] for c in request.call_args_list] == [("GET", "/api/jobs/")] * 2
    assert len(reports) == len(jobs)
    assert BackendState.LOST not in {report.state for report in reports.values()}


def test_job_submitted_through_the_portal_runs_on_ray_and_its_log_is_served(ray_cluster, tenant, owner, h100):
    spec = {
        "name": "portal-to-ray",
        # Long enough for a sync to see it running: Ray's own start time is when it accepted the job.
        "command": "echo hello from ray; sleep 3",
        "gpu_type": h100,
        "gpu_count": 1,
        "time_limit_minutes": 5,
        "cpus": 1,
        "memory_gb": 1,
    }
    job, created = submission.submit(tenant=tenant, owner=owner, spec=spec)
    assert created
    assert admit(job, ray_cluster)
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    states = list(job.events.filter(kind="state").values_list("state", flat=True))
    assert states[:3] == ["pending", "admitted", "submitted"] and states[-1] == "succeeded"

    client = APIClient()
    client.force_authenticate(owner)
    response = client.get(f"/api/v1/jobs/{job.pk}/logs/")
    assert response.status_code == 200
    body = response.json()
    assert "hello from ray\n" in body["text"] and body["complete"]
    again = client.get(f"/api/v1/jobs/{job.pk}/logs/", {"offset": body["next_offset"]}).json()
    assert again["text"] == "" and again["next_offset"] == body["next_offset"]
    from tests.integration.test_kubernetes import assert_metered

    assert_metered(job)


# --- jobs on several nodes -------------------------------------------------------------------------

# The job's own code spreads its ranks over the GPUs, as Ray Train does: one placement group
# bundle per node (SPREAD here: the test head is one node), one task per bundle.
RAY_GANG = """\
import os
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init()
world, per_node = int(os.environ["WORLD_SIZE"]), int(os.environ["FACTORY_GPUS_PER_NODE"])
group = placement_group([{"GPU": per_node, "CPU": 1}] * world, strategy="SPREAD")
ray.get(group.ready(), timeout=60)


@ray.remote
def rank(index):
    return index, os.environ.get("CUDA_VISIBLE_DEVICES")


ranks = [
    rank.options(
        num_gpus=per_node,
        num_cpus=1,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
    ).remote(i)
    for i in range(world)
]
for index, gpus in sorted(ray.get(ranks)):
    print(f"rank {index} of {world}: {len(gpus.split(','))} GPUs")
"""


def test_a_gang_s_driver_holds_no_gpu_and_its_code_spreads_all_of_them(ray_job, ray_head):
    import shlex
    import sys

    job = ray_job(
        name="ray-gang",
        command=f"{sys.executable} -c {shlex.quote(RAY_GANG)}",
        nodes=2,
        gpus_per_node=2,
        gpu_count=None,
    )
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal, timeout=120)
    assert job.state == JobState.SUCCEEDED, (job.reason, log_of(job))
    # All 4 GPUs of the head went to the ranks: a driver holding any would leave the group waiting.
    assert "rank 0 of 2: 2 GPUs\nrank 1 of 2: 2 GPUs\n" in output_of(ray_head, job)


def test_the_ray_cluster_s_node_shape_refuses_a_gang_it_cannot_hold(ray_cluster, owner):
    from factory.tasks import refresh_health
    from tests.jobs.test_api import URL, body, client_for

    assert refresh_health(ray_cluster).ok
    pool = ray_cluster.pools.get()
    assert (pool.node_count, pool.node_gpus, pool.node_cpus) == (1, 4, 8)
    gang = {**body(nodes=2, gpus_per_node=2, memory_gb=1, cpus=1), "gpu_count": 4}
    response = client_for(owner).post(URL, gang, format="json")
    assert response.status_code == 400
    assert response.json() == {"nodes": ["Needs 2 nodes; ray-local has 1 h100 node(s)."]}
