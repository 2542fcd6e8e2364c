"""The ray adapter's own rules, with its one I/O seam (RayDashboard.request) replaced. Its
behaviour against a real Ray head is in tests/integration/test_ray.py."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from unittest import mock

import pytest

from factory.adapters import BackendState, BackendUnavailable, JobRejected
from factory.adapters.base import LOG_CHUNK_BYTES
from factory.adapters.ray import RayConnection, RayDashboard, Reply, entrypoint, slice_log
from factory.models import Cluster, Pool

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ray_cluster(h100) -> Cluster:
    cluster = Cluster.objects.create(
        slug="ray", name="Ray", kind="ray", connection={"address": "http://ray-head:8265", "token": "s3cret"}
    )
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8)
    return cluster


@pytest.fixture
def dashboard():
    with mock.patch.object(RayDashboard, "request", autospec=True) as request:
        yield request


def fake_job(h100, tenant, **overrides):
    job = SimpleNamespace(
        uid=uuid.uuid4(),
        name="t",
        command="echo hi",
        gpu_type=h100,
        gpu_count=2,
        cpus=4,
        memory_gb=16,
        time_limit_minutes=10,
        env={},
        tenant=tenant,
        external_id="",
        started_at=None,
        cancel_requested_at=None,
    )
    for name, value in overrides.items():
        setattr(job, name, value)
    job.external_id = job.external_id or f"aif-{job.uid}"
    return job


# --- connection settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"address": "ray-head:8265"},
        {"address": "file:///etc/passwd"},
        {"address": "http://user:pw@ray-head:8265"},
        {"address": "http://ray-head:8265", "timeout": 0},
        {"address": "http://ray-head:8265", "token": "a\r\nX-Injected: 1"},
        {"address": "http://ray-head:8265", "headers": {"Bad Name": "x"}},
        {"address": "http://ray-head:8265", "accelerator_types": {"h100": "H100; rm"}},
        {"address": "http://ray-head:8265", "port": 8265},
    ],
)
def test_bad_connection_settings_are_refused(data):
    with pytest.raises(ValueError):
        RayConnection.parse(data)


def test_token_is_sent_as_a_bearer_and_never_shown():
    conn = RayConnection.parse({"address": "https://ray.example.org/prefix/", "token": "s3cret"})
    assert "s3cret" not in repr(conn)
    dashboard = RayDashboard(conn)
    assert dashboard.base == "https://ray.example.org/prefix"
    assert dashboard.headers["Authorization"] == "Bearer s3cret"


# --- submitting ---------------------------------------------------------------------------------


def test_entrypoint_gives_bash_the_command_and_values_verbatim(tmp_path):
    command = 'printf \'%s|\' "$A" "$B"; echo "${C}"'
    env = {"A": "$HOME and ${HOME}", "B": "it's `id`", "C": "$(echo no)"}
    # Ray runs the entrypoint with /bin/sh -c; the values travel in the environment as well.
    out = subprocess.run(
        ["/bin/sh", "-c", entrypoint(command, env)],
        capture_output=True,
        text=True,
        env={"HOME": "/root", "PATH": "/usr/bin:/bin", **env},
        check=True,
    ).stdout
    assert out == "$HOME and ${HOME}|it's `id`|$(echo no)\n"


def test_submission_reserves_the_resources_and_carries_the_uid(ray_cluster, h100, tenant, dashboard):
    job = fake_job(h100, tenant, env={"EPOCHS": "3"})
    dashboard.side_effect = [Reply(404, "Job does not exist"), Reply(200, '{"submission_id": "x"}')]
    assert ray_cluster.adapter().submit(job) == f"aif-{job.uid}"
    (_, method, path, body) = dashboard.call_args_list[1].args
    assert (method, path) == ("POST", "/api/jobs/")
    assert body["submission_id"] == f"aif-{job.uid}"
    assert body["entrypoint"] == "bash -c 'echo hi'"
    assert (body["entrypoint_num_gpus"], body["entrypoint_num_cpus"]) == (2, 4)
    assert body["entrypoint_memory"] == 16 * 1024**3
    assert body["runtime_env"] == {
        "env_vars": {"EPOCHS": "3", "FACTORY_JOB_UID": str(job.uid), "FACTORY_JOB_NAME": "t"}
    }
    assert body["metadata"]["aif_tenant"] == "demo-lab"
    assert "entrypoint_resources" not in body


def test_a_job_already_at_ray_is_not_submitted_again(ray_cluster, h100, tenant, dashboard):
    job = fake_job(h100, tenant)
    dashboard.return_value = Reply(200, '{"status": "RUNNING"}')
    assert ray_cluster.adapter().submit(job) == f"aif-{job.uid}"
    assert [c.args[1] for c in dashboard.call_args_list] == ["GET"]


ALREADY_EXISTS = (
    "Traceback ...\nRuntimeError: Request failed with status code 400: Traceback ...\n"
    "ValueError: Job with submission_id aif-x already exists. Please use a different submission_id.\n."
)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (Reply(400, "Traceback ...\nTypeError: entrypoint must be a string"), JobRejected, "TypeError"),
        (Reply(500, ALREADY_EXISTS.replace("already exists", "is bad")), JobRejected, "is bad"),
        (Reply(500, "No available agent to submit job, please try again later."), BackendUnavailable, "500"),
        (Reply(503, "proxy says no"), BackendUnavailable, "503"),
        (Reply(401, "token"), BackendUnavailable, "credentials"),
    ],
)
def test_submit_errors_are_sorted_into_refusals_and_outages(
    ray_cluster, h100, tenant, dashboard, reply, error, message
):
    dashboard.side_effect = [Reply(404, ""), reply]
    with pytest.raises(error, match=message):
        ray_cluster.adapter().submit(fake_job(h100, tenant))


def test_already_exists_counts_as_submitted_once_found(ray_cluster, h100, tenant, dashboard):
    dashboard.side_effect = [Reply(404, ""), Reply(500, ALREADY_EXISTS), Reply(200, "{}")]
    job = fake_job(h100, tenant)
    assert ray_cluster.adapter().submit(job) == f"aif-{job.uid}"


def test_a_gpu_type_the_cluster_lacks_is_refused(ray_cluster, a100, tenant, dashboard):
    dashboard.return_value = Reply(404, "")
    with pytest.raises(JobRejected, match="no a100 GPUs"):
        ray_cluster.adapter().submit(fake_job(a100, tenant))


# --- reading state ------------------------------------------------------------------------------


def ray_entry(status: str, **fields) -> dict:
    return {"type": "SUBMISSION", "status": status, "message": "", "error_type": None, **fields}


def report(cluster, job, entry, now=NOW):
    return cluster.adapter().report(job, entry, now)


def test_waiting_job_says_why(ray_cluster, h100, tenant):
    job = fake_job(h100, tenant)
    assert report(ray_cluster, job, ray_entry("PENDING")).reason.startswith("waiting for free GPUs")
    job.cancel_requested_at = NOW
    assert report(ray_cluster, job, ray_entry("PENDING")).reason.startswith("cancel requested")


def test_failure_carries_exit_code_and_times(ray_cluster, h100, tenant):
    job = fake_job(h100, tenant)
    ended = int(NOW.timestamp() * 1000) + 250
    entry = ray_entry(
        "FAILED",
        driver_exit_code=None,
        message="Job entrypoint command failed with exit code 3, last available logs: ...",
        error_type="JOB_ENTRYPOINT_COMMAND_ERROR",
        start_time=ended - 5000,
        end_time=ended,
    )
    got = report(ray_cluster, job, entry)
    assert (got.state, got.exit_code, got.reason) == (BackendState.FAILED, 3, "")
    assert got.ended_at == NOW + timedelta(milliseconds=250)
    assert got.started_at is None  # Ray's start_time is when it accepted the job


def test_killed_by_a_signal_reads_like_a_shell_exit_code(ray_cluster, h100, tenant):
    got = report(ray_cluster, fake_job(h100, tenant), ray_entry("FAILED", driver_exit_code=-9))
    assert got.exit_code == 137


def test_a_job_whose_supervisor_died_with_its_node_is_a_platform_fault(ray_cluster, h100, tenant):
    entry = ray_entry(
        "FAILED",
        driver_exit_code=None,
        message="Job supervisor actor died: The actor died because its node has died. Node Id: 3f2a",
        error_type="JOB_SUPERVISOR_ACTOR_DIED",
        end_time=1,
    )
    got = report(ray_cluster, fake_job(h100, tenant), entry)
    assert (got.state, got.platform_fault) == (BackendState.FAILED, True)
    own = ray_entry("FAILED", driver_exit_code=3, error_type="JOB_ENTRYPOINT_COMMAND_ERROR", end_time=1)
    assert not report(ray_cluster, fake_job(h100, tenant), own).platform_fault


def test_each_attempt_of_a_job_is_its_own_submission(ray_cluster, h100, tenant):
    from factory.adapters.ray import RayAdapter

    job = fake_job(h100, tenant)
    job.dispatch_key = f"{job.uid}-r2"
    assert RayAdapter.submission_id(job) == f"aif-{job.uid}-r2"


def test_start_timeout_of_a_cancelled_job_is_a_cancel(ray_cluster, h100, tenant):
    entry = ray_entry("FAILED", error_type="JOB_SUPERVISOR_ACTOR_START_TIMEOUT", end_time=1)
    job = fake_job(h100, tenant)
    assert report(ray_cluster, job, entry).state == BackendState.FAILED
    job.cancel_requested_at = NOW
    assert report(ray_cluster, job, entry).state == BackendState.CANCELLED


def test_overdue_job_is_stopped_then_reported_timed_out(ray_cluster, h100, tenant, dashboard):
    dashboard.return_value = Reply(200, '{"stopped": true}')
    job = fake_job(h100, tenant, started_at=NOW - timedelta(minutes=10, seconds=1))
    got = report(ray_cluster, job, ray_entry("RUNNING"))
    assert (got.state, got.reason) == (BackendState.RUNNING, "time limit reached: stopping the job")
    assert dashboard.call_args.args[1:3] == ("POST", f"/api/jobs/aif-{job.uid}/stop")
    stopped = ray_entry("STOPPED", end_time=int((NOW + timedelta(seconds=2)).timestamp() * 1000))
    assert report(ray_cluster, job, stopped).state == BackendState.TIMED_OUT


def test_stop_before_the_limit_is_a_cancel(ray_cluster, h100, tenant):
    job = fake_job(h100, tenant, started_at=NOW - timedelta(minutes=1), cancel_requested_at=NOW)
    stopped = ray_entry("STOPPED", end_time=int(NOW.timestamp() * 1000))
    assert (report(ray_cluster, job, stopped).state, report(ray_cluster, job, stopped).reason) == (
        BackendState.CANCELLED,
        "",
    )


def test_job_missing_from_the_list_is_lost(ray_cluster, h100, tenant, dashboard):
    dashboard.return_value = Reply(200, "[]")
    job = fake_job(h100, tenant)
    assert ray_cluster.adapter().statuses([job])[job.external_id].state == BackendState.LOST


def test_unreadable_answers_are_an_outage_not_a_verdict(ray_cluster, h100, tenant, dashboard):
    dashboard.return_value = Reply(200, "<html>login</html>")
    with pytest.raises(BackendUnavailable):
        ray_cluster.adapter().statuses([fake_job(h100, tenant)])


# --- logs ---------------------------------------------------------------------------------------


def test_log_slices_never_split_a_character():
    data = ("a" * (LOG_CHUNK_BYTES - 1) + "🚀tail").encode()
    first = slice_log(data, 0, finished=True)
    assert first.text == "a" * (LOG_CHUNK_BYTES - 1) and not first.complete
    second = slice_log(data, first.next_offset, finished=True)
    assert (second.text, second.next_offset, second.complete) == ("🚀tail", len(data), True)


def test_downloading_a_long_log_fetches_it_once(client, ray_cluster, h100, make_job, owner, dashboard):
    from tests.support import admit

    job = make_job(gpu_type=h100)
    admit(job, ray_cluster)
    job.mark_submitted(f"aif-{job.uid}")
    log = "".join(f"step {i} loss 0.{i:04d}\n" for i in range(12_000))  # ~250 KiB: four chunks
    assert len(log.encode()) > 3 * LOG_CHUNK_BYTES
    dashboard.return_value = Reply(200, json.dumps({"logs": log}))
    client.force_login(owner)
    response = client.get(f"/jobs/{job.pk}/log/")
    assert response.content.decode() == log
    assert dashboard.call_count == 1
