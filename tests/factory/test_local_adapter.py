"""The local backend against real processes on this machine."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory.adapters import BackendError, BackendState, JobRejected
from factory.adapters.local import LocalAdapter
from factory.adapters.local_guard import check_local_clusters
from factory.adapters.local_runner import runner_alive

pytestmark = pytest.mark.django_db


def fake_job(h100, command: str, *, gpu_count: int = 1, minutes: int = 5, env=None, name="t", secrets=None):
    return SimpleNamespace(
        uid=uuid.uuid4(),
        name=name,
        command=command,
        gpu_type=h100,
        gpu_count=gpu_count,
        time_limit_minutes=minutes,
        env=env or {},
        secret_values=lambda: dict(secrets or {}),
        external_id="",
    )


def wait_for(adapter, job, predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = adapter.statuses([job])[str(job.uid)]
        if predicate(report):
            return report
        time.sleep(0.1)
    raise AssertionError(f"timed out; last report {report}")


def finished(report) -> bool:
    return report.state.is_terminal


def full_log(adapter, job) -> str:
    return adapter.logs(job, 0).text


@pytest.fixture
def adapter(cluster) -> LocalAdapter:
    return LocalAdapter(cluster)


def test_job_sees_its_gpu_slots_and_env_and_exit_code(adapter, h100):
    job = fake_job(
        h100,
        'echo "gpus=$CUDA_VISIBLE_DEVICES greeting=$GREETING"; exit 3',
        gpu_count=2,
        env={"GREETING": "héllo $(whoami) 'x'"},
    )
    assert adapter.submit(job) == str(job.uid)
    report = wait_for(adapter, job, finished)
    assert report.state == BackendState.FAILED
    assert report.exit_code == 3
    assert report.started_at and report.ended_at and report.started_at <= report.ended_at
    assert full_log(adapter, job) == "gpus=0,1 greeting=héllo $(whoami) 'x'\n"


def test_success_records_exit_code_zero(adapter, h100):
    job = fake_job(h100, "echo ok")
    adapter.submit(job)
    report = wait_for(adapter, job, finished)
    assert (report.state, report.exit_code) == (BackendState.SUCCEEDED, 0)


def test_jobs_wait_when_slots_are_exhausted_and_never_share_a_slot(adapter, h100, job_scratch):
    gate = job_scratch / "gate"
    holders = [
        fake_job(h100, f"echo $CUDA_VISIBLE_DEVICES; while [ ! -e {gate} ]; do sleep 0.1; done", gpu_count=2)
        for _ in range(2)
    ]
    for job in holders:
        adapter.submit(job)
    for job in holders:
        wait_for(adapter, job, lambda r: r.state == BackendState.RUNNING)
    waiter = fake_job(h100, "echo $CUDA_VISIBLE_DEVICES", gpu_count=1)
    adapter.submit(waiter)
    report = wait_for(adapter, waiter, lambda r: "waiting" in r.reason)
    assert report.state == BackendState.QUEUED
    assert "0 free" not in report.reason and "4 of 4 in use" in report.reason

    gate.touch()
    wait_for(adapter, waiter, finished)
    used = sorted(full_log(adapter, job).strip() for job in holders)
    assert used == ["0,1", "2,3"]
    assert full_log(adapter, waiter).strip() in {"0", "1", "2", "3"}


def test_time_limit_reached_means_timed_out(adapter, h100):
    import json

    job = fake_job(h100, "echo start; sleep 60")
    job_dir = adapter.job_dir(job)
    adapter._create_job_dir(job, job_dir)
    spec = json.loads((job_dir / "spec.json").read_text())
    spec["time_limit_seconds"] = 1
    (job_dir / "spec.json").write_text(json.dumps(spec))
    adapter.submit(job)
    report = wait_for(adapter, job, finished)
    assert report.state == BackendState.TIMED_OUT
    assert (report.ended_at - report.started_at).total_seconds() < 10
    assert full_log(adapter, job) == "start\n"


def test_cancel_running_job_kills_its_processes(adapter, h100, job_scratch):
    marker = job_scratch / "child-alive"
    job = fake_job(h100, f"(sleep 30; touch {marker}) & echo started; wait")
    adapter.submit(job)
    wait_for(adapter, job, lambda r: r.state == BackendState.RUNNING and "started" in full_log(adapter, job))
    adapter.cancel(job)
    report = wait_for(adapter, job, finished)
    assert report.state == BackendState.CANCELLED
    assert not runner_alive(adapter.job_dir(job))


def test_cancel_queued_job_never_runs_it(adapter, h100, job_scratch):
    gate = job_scratch / "gate"
    blocker = fake_job(h100, f"while [ ! -e {gate} ]; do sleep 0.1; done", gpu_count=4)
    adapter.submit(blocker)
    wait_for(adapter, blocker, lambda r: r.state == BackendState.RUNNING)
    queued = fake_job(h100, "echo ran")
    adapter.submit(queued)
    wait_for(adapter, queued, lambda r: r.state == BackendState.QUEUED and r.reason)
    adapter.cancel(queued)
    assert wait_for(adapter, queued, finished).state == BackendState.CANCELLED
    gate.touch()
    wait_for(adapter, blocker, finished)
    assert full_log(adapter, queued) == ""


def test_submitting_twice_runs_the_command_once(adapter, h100, job_scratch):
    counter = job_scratch / "runs"
    job = fake_job(h100, f"echo run >> {counter}; sleep 0.5")
    adapter.submit(job)
    adapter.submit(job)  # a retried dispatch
    wait_for(adapter, job, finished)
    adapter.submit(job)  # a very late retry changes nothing either
    assert counter.read_text() == "run\n"


def test_a_dead_runner_is_never_replaced_by_a_second_run(adapter, h100, job_scratch):
    """If the supervisor dies while the job runs, the job is reported failed, not started again."""
    import json
    import os
    import signal

    counter = job_scratch / "runs"
    job = fake_job(h100, f"echo run >> {counter}; sleep 30")
    adapter.submit(job)
    wait_for(adapter, job, lambda r: r.state == BackendState.RUNNING)
    state = json.loads((adapter.job_dir(job) / "state.json").read_text())
    runner_pids = [p for p in _pids_holding(adapter.job_dir(job) / "runner.lock")]
    for pid in runner_pids:
        os.kill(pid, signal.SIGKILL)
    os.killpg(state["pid"], signal.SIGKILL)
    report = wait_for(adapter, job, finished)
    assert report.state == BackendState.FAILED
    assert "stopped while the job was running" in report.reason
    assert counter.read_text() == "run\n"


def _pids_holding(path) -> list[int]:
    import os

    target = os.stat(path)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
                    pids.append(int(pid))
                    break
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return pids


def test_logs_resume_from_an_offset_without_splitting_characters(adapter, h100):
    job = fake_job(h100, "printf 'ab€cd\\n'")
    adapter.submit(job)
    wait_for(adapter, job, finished)
    first = adapter.logs(job, 0)
    assert first.text == "ab€cd\n" and first.complete
    # Offsets count bytes: 'ab€' is five.
    tail = adapter.logs(job, 5)
    assert tail.text == "cd\n"
    assert adapter.logs(job, first.next_offset).text == ""


def test_unknown_job_is_reported_lost(adapter, h100):
    job = fake_job(h100, "true")
    assert adapter.statuses([job])[str(job.uid)].state == BackendState.LOST


def test_health_reports_pools_and_slots_in_use(adapter):
    health = adapter.health()
    assert health.ok
    assert {(p.gpu_type, p.capacity, p.in_use) for p in health.pools} == {("a100", 4, 0), ("h100", 4, 0)}


def test_connection_settings_are_validated(cluster):
    from factory.adapters.local import LocalAdapter

    with pytest.raises(ValueError, match="Unknown connection setting"):
        LocalAdapter.parse_connection({"rooot": "/tmp"})
    with pytest.raises(ValueError, match="wrong type"):
        LocalAdapter.parse_connection({"root": 5})


def test_hostile_command_and_env_reach_the_job_verbatim_and_run_nothing_else(adapter, h100):
    tricky = "line 1\nline 2 $(touch subst) `touch backtick` 'single' \"double\" ; touch semi ünï ☃"
    command = "printf '%s\\n' \"$TRICKY\"\necho 'ünï $(touch quoted)'\nls -A"
    job = fake_job(h100, command, env={"TRICKY": tricky})
    adapter.submit(job)
    assert wait_for(adapter, job, finished).state == BackendState.SUCCEEDED
    # `ls -A` of the working directory prints nothing: no substitution ran, nothing was touched.
    assert full_log(adapter, job) == f"{tricky}\nünï $(touch quoted)\n"


def test_secrets_reach_the_job_environment_from_a_file_only_the_runner_reads(adapter, h100):
    secret = "hf_'$(touch pwned)`id`\"\nline two ünï"
    job = fake_job(h100, 'printf %s "$HF_TOKEN"; ls -A', env={"EPOCHS": "3"}, secrets={"HF_TOKEN": secret})
    adapter.submit(job)
    assert wait_for(adapter, job, finished).state == BackendState.SUCCEEDED
    assert full_log(adapter, job) == secret  # verbatim, and nothing ran or appeared in its directory
    job_dir = adapter.job_dir(job)
    assert (job_dir / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert "hf_" not in (job_dir / "spec.json").read_text() + (job_dir / "script.sh").read_text()


def test_nul_in_the_command_or_env_is_refused_before_anything_runs(adapter, h100):
    for job in (fake_job(h100, "echo a\x00b"), fake_job(h100, "true", env={"X": "a\x00b"})):
        with pytest.raises(JobRejected, match="NUL"):
            adapter.submit(job)
        assert not adapter.job_dir(job).exists()


def test_local_backend_refuses_every_verb_under_production_settings(cluster, h100, settings):
    from factory.tasks import refresh_health

    settings.DEBUG = False
    settings.FACTORY_ALLOW_LOCAL_BACKEND = False
    adapter = LocalAdapter(cluster)  # made in loops over all clusters: only its verbs refuse
    job = fake_job(h100, "echo never")
    verbs = [
        lambda: adapter.submit(job),
        lambda: adapter.find(job),
        lambda: adapter.statuses([job]),
        lambda: adapter.cancel(job),
        lambda: adapter.logs(job),
        adapter.health,
    ]
    for verb in verbs:
        with pytest.raises(BackendError, match=r"DEBUG=1.*FACTORY_ALLOW_LOCAL_BACKEND=1"):
            verb()
    assert not settings.FACTORY_LOCAL_BACKEND_ROOT.exists()
    health = refresh_health(cluster)
    assert not health.ok and "FACTORY_ALLOW_LOCAL_BACKEND=1" in health.message

    settings.FACTORY_ALLOW_LOCAL_BACKEND = True
    adapter.submit(job)
    assert wait_for(adapter, job, finished).state == BackendState.SUCCEEDED


def test_deploy_check_reports_local_clusters_under_production_settings(cluster, settings):
    from django.core.checks import registry

    assert check_local_clusters in registry.registry.get_checks(include_deployment_checks=True)
    settings.DEBUG = False
    settings.FACTORY_ALLOW_LOCAL_BACKEND = False
    errors = check_local_clusters()
    assert [error.id for error in errors] == ["factory.E002"]
    assert "local" in errors[0].msg and "FACTORY_ALLOW_LOCAL_BACKEND=1" in errors[0].msg
    settings.FACTORY_ALLOW_LOCAL_BACKEND = True
    assert check_local_clusters() == []
    settings.FACTORY_ALLOW_LOCAL_BACKEND = False
    settings.DEBUG = True
    assert check_local_clusters() == []


def test_deploy_check_is_quiet_without_local_clusters(db, settings):
    settings.DEBUG = False
    settings.FACTORY_ALLOW_LOCAL_BACKEND = False
    assert check_local_clusters() == []


needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only a root worker can run jobs as another user; as any other user they run as that user",
)


@needs_root
def test_a_root_worker_needs_an_unprivileged_user_for_its_jobs(adapter, h100, settings):
    for name, problem in (("no-such-user-for-jobs", "not a user on this host"), ("root", "unprivileged")):
        settings.FACTORY_LOCAL_RUN_AS = name
        job = fake_job(h100, "true")
        with pytest.raises(BackendError, match=problem):
            adapter.submit(job)
        assert not adapter.job_dir(job).exists()


@needs_root
def test_a_work_root_the_jobs_user_cannot_reach_is_refused(adapter, h100, settings, tmp_path):
    settings.FACTORY_LOCAL_WORK_ROOT = tmp_path / "work"  # pytest's directories are root's alone
    with pytest.raises(BackendError, match="cannot reach"):
        adapter.submit(fake_job(h100, "true"))


@pytest.fixture
def dev_host(settings):
    """A host laid out as `make run` leaves it, in a directory anyone may enter: var/ made by the
    settings (the SQLite database holding a secret, the filesystem broker's folders holding a
    message), a SECRET_KEY_FILE readable by its owner only, and the local backend's root."""
    base = Path(tempfile.mkdtemp(prefix="factory-test-host-"))
    base.chmod(0o755)
    names = ("db", "broker", "key-file", "key-env", "url", "keys", "job")
    secrets = {name: f"{name}-{uuid.uuid4().hex}" for name in names}
    secret_file = base / "secret-key"
    secret_file.write_text(secrets["key-file"])
    secret_file.chmod(0o600)
    setup = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    c.execute('CREATE TABLE leak (v text)')\n"
        f"    c.execute('INSERT INTO leak VALUES (%s)', [{secrets['db']!r}])\n"
        "connection.close()\n"
        "from factory.celery import app\n"
        f"app.send_task('nothing.at.all', args=[{secrets['broker']!r}])\n"
    )
    subprocess.run(
        [sys.executable, "-c", setup],
        cwd=Path(__file__).resolve().parents[2],
        env={
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "factory.settings",
            "DEBUG": "1",
            "FACTORY_VAR_DIR": str(base / "var"),
            "SECRET_KEY_FILE": str(secret_file),
        },
        check=True,
        timeout=60,
    )
    settings.FACTORY_LOCAL_BACKEND_ROOT = base / "local-backend"
    yield SimpleNamespace(base=base, var=base / "var", secret_file=secret_file, secrets=secrets)
    shutil.rmtree(base, ignore_errors=True)


# Each target is named by an environment variable; `cat` of it must fail. Then who the job is, its
# own directory, and its whole environment.
PROBE = """
for name in $targets; do
  if out=$(cat -- "${!name}" 2>&1); then echo "$name read: $out"; else echo "$name refused: $out"; fi
done
echo "id: $(id -u) $(id -g) $(id -G)"
echo written > "$HOME/probe" && [ "$PWD" = "$HOME" ] && echo "home: $(cat probe)"
echo env:
env
"""


@needs_root
def test_a_job_runs_unprivileged_and_reads_nothing_of_the_portal_or_other_jobs(
    adapter, h100, settings, dev_host, monkeypatch
):
    var, secrets = dev_host.var, dev_host.secrets
    assert secrets["db"].encode() in (var / "factory.sqlite3").read_bytes()
    assert any((var / "celery-broker" / "queue").iterdir())
    # What a worker's environment holds, which the job must not inherit.
    monkeypatch.setenv("SECRET_KEY", secrets["key-env"])
    monkeypatch.setenv("SECRET_KEY_FILE", str(dev_host.secret_file))
    monkeypatch.setenv("DATABASE_URL", f"postgresql://factory:{secrets['url']}@db/factory")
    monkeypatch.setenv("REDIS_URL", f"redis://:{secrets['url']}@redis:6379/0")
    monkeypatch.setenv("FACTORY_SECRET_KEYS", secrets["keys"])

    other = fake_job(h100, f"echo {secrets['url']}-other-job", secrets={"TOKEN": secrets["job"]})
    adapter.submit(other)
    wait_for(adapter, other, finished)

    job = fake_job(h100, "true")
    targets = {
        "DB": var / "factory.sqlite3",
        "BROKER": var / "celery-broker",
        "BROKER_QUEUE": var / "celery-broker" / "queue",
        "SECRET_FILE": dev_host.secret_file,
        "SLOTS": adapter.slots_dir / "h100.json",
        "JOBS": adapter.jobs_dir,
        "OWN_STATE": adapter.job_dir(job) / "state.json",
        "OWN_SPEC": adapter.job_dir(job) / "spec.json",
        "OTHER_LOG": adapter.job_dir(other) / "output.log",
        "OTHER_SECRETS": adapter.job_dir(other) / "secrets.json",
    }
    job.env = {name: str(path) for name, path in targets.items()}
    job.command = f"targets='{' '.join(targets)}'\n{PROBE}"
    adapter.submit(job)
    report = wait_for(adapter, job, finished)
    log = full_log(adapter, job)
    assert (report.state, report.exit_code) == (BackendState.SUCCEEDED, 0), log

    for name, path in targets.items():
        assert f"{name} refused: cat: {path}: Permission denied\n" in log
    assert " read: " not in log
    for secret in secrets.values():
        assert secret not in log
    user = pwd.getpwnam(settings.FACTORY_LOCAL_RUN_AS)
    assert f"id: {user.pw_uid} {user.pw_gid} {user.pw_gid}\n" in log  # no root group, no other group
    assert "home: written\n" in log
    names = {line.split("=", 1)[0] for line in log.split("env:\n", 1)[1].splitlines()}
    from_bash = {"PWD", "SHLVL", "_"}
    own = {"PATH", "HOME", "LANG", "CUDA_VISIBLE_DEVICES", "FACTORY_JOB_UID", "FACTORY_JOB_NAME", *targets}
    assert names == own | from_bash
    assert (var.stat().st_mode & 0o777, adapter.root.stat().st_mode & 0o777) == (0o700, 0o700)
