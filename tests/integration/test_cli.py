"""The `factory` command line tool, run as a real process against the running portal (uvicorn) and
a real Celery worker running jobs on the local backend."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from factory.models import ApiToken
from jobs.choices import JobState
from jobs.models import Job

from .conftest import PROJECT_DIR, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(home):
    """Run `factory ...` in its own process, as a user would (this checkout's code, a home of its
    own, nothing of the test's environment that the tool reads)."""

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 60):
        environ = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "PYTHONPATH": str(PROJECT_DIR),
            "COLUMNS": "200",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "factory.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=home,
            env=environ,
            timeout=timeout,
        )

    return run


def logged_in(cli, base_url: str, user: str = "researcher", password: str = "pw-researcher"):
    done = cli("login", base_url, "--username", user, "--password-stdin", stdin=f"{password}\n")
    assert done.returncode == 0, done.stderr
    return done


def test_the_tool_is_the_projects_entry_point():
    (script,) = metadata.entry_points(group="console_scripts", name="factory")
    assert script.value == "factory.cli.app:main"
    assert (Path(sys.executable).parent / "factory").exists()  # scripts/bootstrap installed it


def test_a_researcher_submits_follows_and_waits_from_the_command_line(
    cli, home, asgi_server, celery_worker_process, owner, cluster, quotas
):
    done = logged_in(cli, asgi_server)
    config = home / ".config" / "factory" / "config.json"
    assert "token stored in" in done.stdout and str(config) in done.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    token = json.loads(config.read_text())["token"]
    assert ApiToken.objects.filter(user=owner).count() == 1
    assert not ApiToken.objects.filter(digest=token).exists()  # stored hashed, not as given

    spec = home / "job.yaml"
    spec.write_text(
        "name: from-yaml\n"
        "command: |\n"
        '  echo "hello $GREETING"\n'
        "  sleep 1\n"
        "  exit 3\n"
        "gpu_type: h100\n"
        "gpu_count: 1\n"
        "time_limit_minutes: 5\n"
        "env:\n"
        "  GREETING: world\n"
    )
    submitted = cli("submit", str(spec), "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    job = Job.objects.get(pk=job_id)
    assert (job.owner, job.tenant.slug, job.env) == (owner, "demo-lab", {"GREETING": "world"})

    follow = cli("logs", "-f", str(job_id))
    assert (follow.returncode, follow.stdout) == (0, "hello world\n")
    waited = cli("wait", str(job_id))
    assert waited.returncode == 3  # the job's own exit code
    assert f"job {job_id}: failed" in waited.stderr

    status = json.loads(cli("status", str(job_id), "--json").stdout)
    assert (status["state"], status["exit_code"]) == ("failed", 3)
    text = cli("status", str(job_id)).stdout
    assert "failed" in text and "exit code  3" in text

    # sbatch-like flags; the job is cancelled while it runs, and `wait` says so.
    sleeper = cli(
        "submit", "-J", "sleeper", "-G", "1", "--gpu-type", "h100", "-t", "0:10:00", "--wrap", "sleep 600"
    )
    assert sleeper.returncode == 0, sleeper.stderr
    sleeper_id = int(sleeper.stdout.split()[-1])
    assert Job.objects.get(pk=sleeper_id).time_limit_minutes == 10
    wait_until(lambda: Job.objects.get(pk=sleeper_id).state == JobState.RUNNING, 30, "the sleeper to run")
    listed = json.loads(cli("ls", "--json").stdout)
    assert [j["id"] for j in listed] == [sleeper_id, job_id]
    table = cli("ls").stdout
    assert "sleeper" in table and "running" in table and "1×h100" in table
    cancelled = cli("cancel", str(sleeper_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert cli("wait", str(sleeper_id), "--timeout", "30").returncode == 130

    quick = cli(
        "submit", "--wait", "-J", "quick", "-G", "1", "--gpu-type", "h100", "-t", "5", "--wrap", "true"
    )
    assert quick.returncode == 0, quick.stderr


def test_bad_input_gets_a_clear_message_and_submits_nothing(
    cli, home, asgi_server, owner, outsider, other_tenant, cluster, quotas, make_job
):
    not_yet = cli("ls")
    assert not_yet.returncode == 2 and "factory login" in not_yet.stderr and "Traceback" not in not_yet.stderr
    refused = cli("login", asgi_server, "--username", "researcher", "--password-stdin", stdin="wrong\n")
    assert refused.returncode == 2 and "Unable to log in" in refused.stderr
    logged_in(cli, asgi_server)

    broken = home / "broken.yaml"
    broken.write_text("name: x\ncommand: [unclosed\ngpu_count: 1\n")
    result = cli("submit", str(broken))
    assert result.returncode == 2 and f"{broken}:3:" in result.stderr and "not valid YAML" in result.stderr

    typo = home / "typo.yaml"
    typo.write_text(
        "name: x\ncommand: 'true'\ngpu_type: h100\ngpu_count: 1\ntime_limit_minutes: 5\ngpus: 2\n"
    )
    result = cli("submit", str(typo))
    assert result.returncode == 2
    assert f"{typo}:6: gpus: Unknown field." in result.stderr

    result = cli("submit", "-J", "x", "-G", "99", "--gpu-type", "h100", "-t", "5", "--wrap", "true")
    assert result.returncode == 2 and "gpu_count: At most 4 h100 GPUs fit on one cluster" in result.stderr
    gang = ("-N", "2", "--gpus-per-node", "2", "--gpu-type", "h100", "-t", "5", "--wrap", "true")
    result = cli("submit", "-J", "x", *gang)
    assert result.returncode == 2 and "nodes: Local runs one-node jobs only." in result.stderr
    assert cli("submit", "-t", "abc", "--wrap", "true").returncode == 2
    secretless = cli("submit", "--secret", "HF_TOKEN", "--wrap", "true")
    assert secretless.returncode == 2 and "no environment variable HF_TOKEN" in secretless.stderr
    assert not Job.objects.exists()

    theirs = make_job(tenant=other_tenant, owner=outsider)
    for command in (["status"], ["logs"], ["cancel"], ["wait"]):
        hidden = cli(*command, str(theirs.pk))
        assert hidden.returncode == 1 and f"no job {theirs.pk} that you can see" in hidden.stderr, command
    assert Job.objects.get(pk=theirs.pk).state == JobState.PENDING


def test_arrays_and_sweeps_from_the_command_line(
    cli, home, asgi_server, celery_worker_process, owner, cluster, quotas
):
    from jobs.models import JobArray

    logged_in(cli, asgi_server)
    bad = cli(
        "submit", "--array", "5-1", "-J", "x", "-G", "1", "--gpu-type", "h100", "-t", "5", "--wrap", "true"
    )
    assert bad.returncode == 2 and "array: The range 5-1 runs backwards" in bad.stderr
    assert not Job.objects.exists()

    command = 'echo "shard $FACTORY_ARRAY_INDEX"; [ "$FACTORY_ARRAY_INDEX" = 1 ] && exit 3; true'
    flags = ("-J", "shards", "-G", "1", "--gpu-type", "h100", "-t", "5", "--wrap", command)
    waited = cli("submit", "--array", "0-3%2", *flags, "--wait", timeout=120)
    assert waited.returncode == 1, waited.stderr  # not every task succeeded
    array = JobArray.objects.get(name="shards")
    assert f"Submitted array {array.pk}: 4 tasks" in waited.stderr
    assert f"array {array.pk}: 1 failed, 3 succeeded" in waited.stderr
    assert (array.size, array.max_running) == (4, 2)
    failed = array.tasks.get(state=JobState.FAILED)
    assert (failed.array_index, failed.exit_code) == (1, 3)
    assert cli("logs", str(failed.pk)).stdout == "shard 1\n"
    assert "shards[1]" in cli("ls").stdout

    spec = home / "sweep.yaml"
    spec.write_text(
        "name: sweep\n"
        "command: 'echo lr=$LR batch=$BATCH; sleep 600'\n"
        "gpu_type: h100\n"
        "gpu_count: 1\n"
        "time_limit_minutes: 5\n"
        "array: '%1'\n"
        "sweep:\n"
        "  - {LR: 0.1, BATCH: 32}\n"
        "  - {LR: 0.01, BATCH: 64}\n"
    )
    submitted = json.loads(cli("submit", str(spec), "--json").stdout)
    assert submitted["size"] == 2 and submitted["array"] == "%1" and len(submitted["job_ids"]) == 2
    first = submitted["job_ids"][0]
    wait_until(lambda: cli("logs", str(first)).stdout == "lr=0.1 batch=32\n", 60, "the first set to run")
    cancelled = cli("cancel", "--array", str(submitted["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    final = json.loads(cli("status", str(first), "--json").stdout)
    wait_until(
        lambda: json.loads(cli("status", str(first), "--json").stdout)["state"] == "cancelled",
        60,
        "the cancel",
    )
    assert final["array"] == submitted["id"] and final["array_index"] == 0
    second = Job.objects.get(pk=submitted["job_ids"][1])
    assert second.state == JobState.CANCELLED and second.started_at is None  # it never ran


def test_platform_admins_list_a_clusters_gpus_and_their_history_from_the_command_line(
    cli, asgi_server, platform_admin, owner, cluster, h100
):
    from django.utils import timezone

    from fleet.models import Gpu, HealthEvent, HealthEventKind, Node

    node = Node.objects.create(
        cluster=cluster, name="gpu-node-7", gpu_type=h100, exporter_url="http://127.0.0.1:9/"
    )
    for index in range(2):
        Gpu.objects.create(node=node, cluster=cluster, gpu_type=h100, index=index, uuid=f"GPU-cli-{index}")
    bad = Gpu.objects.filter(index=1).get()
    Gpu.objects.filter(pk=bad.pk).update(
        health="failed", health_reason="XID 79 (GPU has fallen off the bus) on GPU 1"
    )
    bad.refresh_from_db()
    HealthEvent.of(
        cluster.pk, bad, HealthEventKind.HEALTH, timezone.now(), health="failed", reason=bad.health_reason
    ).save()

    logged_in(cli, asgi_server, "platform", "pw-platform")
    listed = cli("gpus", "local", "--health", "failed")
    assert listed.returncode == 0, listed.stderr
    assert "gpu-node-7" in listed.stdout and "GPU-cli-1" in listed.stdout and "XID 79" in listed.stdout
    assert "GPU-cli-0" not in listed.stdout
    as_json = json.loads(cli("gpus", "local", "--json").stdout)
    assert sorted(g["uuid"] for g in as_json) == ["GPU-cli-0", "GPU-cli-1"]
    history = cli("gpu-history", "local", "--gpu", "GPU-cli-1")
    assert history.returncode == 0 and "failed" in history.stdout and "XID 79" in history.stdout

    logged_in(cli, asgi_server)  # a researcher: the fleet does not exist for them
    refused = cli("gpus", "local")
    assert refused.returncode == 1 and "no cluster local whose fleet you can see" in refused.stderr
