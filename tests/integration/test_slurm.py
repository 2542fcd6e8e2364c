"""The slurm backend against the real single-node Slurm started by scripts/slurm-dev-cluster
(partition gpu: node gpu1 with 8 fake h100; partition debug: CPU node cpu1; slurmdbd accounting).

Jobs run as their owners' POSIX users, which that script makes: the owner's aif-alice and the
outsider's aif-bob. The tests run as root, which a portal worker never is: every tool the adapter
runs here runs as the portal's unprivileged account aif-portal, so that what it may do as a
researcher is what the sudo rule (/etc/sudoers.d/aifactory) allows, and what it may do to accounts
what it may do as a Slurm Operator."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from factory.adapters import BackendUnavailable, JobRejected
from factory.adapters.slurm import SlurmAdapter
from factory.models import Cluster, Identity, Membership, Pool, Tenant
from jobs import dispatch, lifecycle
from jobs.choices import JobState
from jobs.models import Job
from jobs.tasks import dispatch_jobs
from tests.conftest import OUTSIDER_POSIX_USER, OWNER_POSIX_USER
from tests.support import admit

from .conftest import PORTAL_GROUP, PORTAL_USER, wait_until

if not shutil.which("sbatch"):
    if os.environ.get("FACTORY_REQUIRE_SLURM"):
        raise RuntimeError("Slurm is required (scripts/slurm-dev-cluster) but sbatch is not installed")
    pytest.skip("no Slurm here: run scripts/slurm-dev-cluster", allow_module_level=True)

pytestmark = [pytest.mark.slurm, pytest.mark.django_db]

POLL = 0.3


def scontrol_job(external_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", external_id], capture_output=True, text=True
    ).stdout
    fields = {}
    for item in out.split():
        key, _, value = item.partition("=")
        fields[key] = value
    return fields


@pytest.fixture(autouse=True)
def as_the_portal_account(slurm_tools_as_the_portal):
    """The adapter's tools run as aif-portal (in group aifactory-portal only), not as root."""


@pytest.fixture
def shared_dir():
    """A directory the jobs' owners may enter (pytest's tmp_path is root's alone): job roots and
    the files tests and jobs exchange."""
    path = Path(tempfile.mkdtemp(prefix="aif-slurm-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def slurm_cluster(db, h100, settings, shared_dir) -> Cluster:
    settings.FACTORY_SLURM_JOB_ROOT = shared_dir / "slurm-jobs"
    cluster = Cluster.objects.create(
        slug="slurm-local", name="Slurm", kind="slurm", region="local", connection={"job_group": PORTAL_GROUP}
    )
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8, partition="gpu")
    return cluster


@pytest.fixture
def slurm_job(slurm_cluster, tenant, owner, h100):
    from jobs import submission

    def make(*, tenant=tenant, owner=owner, **overrides):
        spec = {
            "name": "slurm-test",
            "command": "echo hi",
            "gpu_type": h100,
            "gpu_count": 1,
            "time_limit_minutes": 5,
            "cpus": 1,
            "memory_gb": 1,
        }
        spec.update(overrides)
        job, _ = submission.submit(tenant=tenant, owner=owner, spec=spec)
        admit(job, slurm_cluster)
        return job

    return make


@pytest.fixture(autouse=True)
def cancel_leftovers():
    """No job of a test outlives it on the shared cluster."""
    yield
    ids = list(
        Job.objects.filter(cluster__kind="slurm")
        .exclude(external_id="")
        .values_list("external_id", flat=True)
    )
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def run_to(job: Job, predicate, timeout: float = 60.0) -> Job:
    def check():
        dispatch.sync_cluster(job.cluster)
        job.refresh_from_db()
        return predicate(job)

    wait_until(check, timeout, lambda: f"job {job.name} ({job.state}: {job.reason})", interval=POLL)
    return job


def log_of(job: Job) -> str:
    return job.cluster.adapter().logs(job, 0).text


def test_two_gpu_job_sees_two_devices_and_succeeds(slurm_job):
    job = slurm_job(command="echo CUDA=$CUDA_VISIBLE_DEVICES", gpu_count=2)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED and job.external_id.isdigit()
    job = run_to(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0)
    devices = log_of(job).strip().removeprefix("CUDA=").split(",")
    assert len(devices) == 2
    assert job.started_at and job.ended_at and job.started_at <= job.ended_at
    states = list(job.events.filter(kind="state").values_list("state", flat=True))
    assert states == ["pending", "admitted", "submitted", "running", "succeeded"]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_api_job_runs_on_slurm_through_the_worker_and_is_metered(
    slurm_cluster, celery_worker_process, owner, tenant, h100
):
    """From `POST /api/v1/jobs/` to the ledger, with no local cluster: the worker's admission places
    the job in the only h100 pool (Slurm), dispatches it with sbatch, its sync follows it to its
    end, and the release meters it. `slurm_cluster` comes first: the worker inherits its job root."""
    from billing.models import UsageRecord
    from quotas.models import Quota
    from tests.jobs.test_api import client_for

    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=8)
    api = client_for(owner)
    response = api.post(
        "/api/v1/jobs/",
        {
            "tenant": tenant.slug,
            "name": "api-to-slurm",
            # Slurm times runs in whole seconds: a run of under one would meter nothing.
            "command": "echo hello from $FACTORY_JOB_NAME; sleep 2",
            "gpu_type": "h100",
            "gpu_count": 1,
            "time_limit_minutes": 5,
            "cpus": 1,
            "memory_gb": 1,
        },
        format="json",
    )
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]

    def ended():
        job = Job.objects.get(pk=job_id)
        return job if job.is_terminal else None

    job = wait_until(
        ended,
        90,
        lambda: (
            f"the job to end ({Job.objects.get(pk=job_id).state}); worker log:\n"
            + celery_worker_process.log()[-3000:]
        ),
    )
    assert (job.state, job.exit_code) == (JobState.SUCCEEDED, 0), job.reason
    assert job.cluster_id == slurm_cluster.pk and job.external_id.isdigit()
    assert scontrol_job(job.external_id)["Account"] == "demo-lab"
    states = list(job.events.filter(kind="state").values_list("state", flat=True))
    assert states == ["pending", "admitted", "submitted", "running", "succeeded"]
    logs = api.get(f"/api/v1/jobs/{job_id}/logs/")
    assert logs.status_code == 200
    assert (logs.json()["text"], logs.json()["complete"]) == ("hello from api-to-slurm\n", True)

    line = wait_until(
        lambda: UsageRecord.objects.filter(job_id=job_id).first(), 30, "the job's line in the ledger"
    )
    assert (line.tenant_id, line.cluster_id, line.gpu_type_id, line.gpus) == (
        tenant.pk,
        slurm_cluster.pk,
        h100.pk,
        1,
    )
    assert line.gpu_seconds == int((job.ended_at - job.started_at).total_seconds()) >= 2


def test_exit_code_is_recorded(slurm_job):
    job = slurm_job(command="echo about to fail; exit 3")
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal)
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)


def test_fifth_job_waits_for_resources_then_starts(slurm_job, shared_dir):
    gates = [shared_dir / f"gate{i}" for i in range(5)]
    jobs = []
    for i, gate in enumerate(gates):
        job = slurm_job(name=f"fill-{i}", gpu_count=2, command=f"while [ ! -e {gate} ]; do sleep 0.2; done")
        dispatch_jobs([job.pk])
        jobs.append(job)
    try:
        for job in jobs[:4]:
            run_to(job, lambda j: j.state == JobState.RUNNING)
        fifth = run_to(jobs[4], lambda j: "free GPUs" in j.reason, timeout=30)
        assert fifth.state == JobState.SUBMITTED
        assert fifth.reason == "waiting for free GPUs on the cluster"
        gates[0].touch()
        run_to(jobs[0], lambda j: j.is_terminal)
        run_to(fifth, lambda j: j.state == JobState.RUNNING, timeout=30)
    finally:
        for gate in gates:
            gate.touch()
    for job in jobs:
        assert run_to(job, lambda j: j.is_terminal).state == JobState.SUCCEEDED


def test_cancel_running_job(slurm_job, owner):
    from jobs.tasks import cancel_job

    job = slurm_job(command="echo started; sleep 120")
    dispatch_jobs([job.pk])
    run_to(job, lambda j: j.state == JobState.RUNNING)
    lifecycle.cancel(job, owner)
    cancel_job(job.pk)
    job = run_to(job, lambda j: j.is_terminal)
    assert job.state == JobState.CANCELLED


def test_preempting_a_job_whose_dispatcher_died_after_sbatch_cancels_that_attempt(slurm_job, slurm_cluster):
    from factory.adapters.slurm.cli import job_state
    from jobs.tasks import cancel_backend_job

    job = slurm_job(command="sleep 120")
    adapter = slurm_cluster.adapter()
    slurm_id = adapter.submit(job)  # submitted; the dispatcher died before recording it
    first_key = job.dispatch_key
    assert lifecycle.preempt(job, "preempted to return borrowed GPUs")
    try:
        cancel_backend_job(job.pk, slurm_cluster.pk, first_key, "")  # what preempt enqueues
        entry = next(e for e in adapter.squeue() if str(e["job_id"]) == slurm_id)
        assert job_state(entry) in ("CANCELLED", "COMPLETING")
    finally:
        subprocess.run(["scancel", slurm_id], capture_output=True)


def test_dispatching_twice_makes_one_slurm_job(slurm_job, slurm_cluster):
    job = slurm_job(command="sleep 1")
    adapter = slurm_cluster.adapter()
    first = adapter.submit(job)
    # The first attempt died right after sbatch, before recording the id: squeue still finds it.
    adapter.dispatch_marker(job).write_text("")
    second = adapter.submit(job)
    assert first == second
    dispatch_jobs([job.pk])  # the task itself, retried
    job.refresh_from_db()
    assert job.external_id == first
    ours = [e for e in adapter.squeue() if e.get("comment") == f"aif:{job.uid}"]
    assert len(ours) == 1


def test_a_job_that_left_squeue_is_found_in_accounting(slurm_job, slurm_cluster, monkeypatch):
    job = slurm_job(command="true")
    adapter = slurm_cluster.adapter()
    first = adapter.submit(job)
    # slurmdbd answers a search by name a little after the job is accepted (the real case is
    # minutes later): wait until the search the adapter makes can see it.
    wait_until(
        lambda: (
            f"aif:{job.uid}" in adapter.sacct("-S", "now-14days", "--name", job.name, "-o", "JobID,Comment")
        ),
        30,
        "sacct to find the job by name",
    )
    adapter.dispatch_marker(job).write_text("")
    monkeypatch.setattr(SlurmAdapter, "squeue", lambda self: [])  # as after MinJobAge
    assert adapter.submit(job) == first


HOSTILE_VALUES = [
    "line1\nline2",
    "#SBATCH --gres=gpu:h100:8",
    "$(touch /tmp/aif-pwned)",
    "`id`; rm -rf /",
    'it\'s "quoted" \\ back',
    "naïve 日本語 🚀",
]


def test_hostile_command_and_env_values_reach_the_job_verbatim(slurm_job):
    pwned = Path("/tmp/aif-pwned")
    pwned.unlink(missing_ok=True)
    env = {f"V{i}": value for i, value in enumerate(HOSTILE_VALUES)}
    command = "#SBATCH --gres=gpu:h100:8\n#SBATCH --partition=debug\n" + "".join(
        f'printf "%s\\n---\\n" "$V{i}"\n' for i in range(len(HOSTILE_VALUES))
    )
    job = slurm_job(name="hostile.job_1", command=command, env=env, gpu_count=1, cpus=2, memory_gb=2)
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    fields = scontrol_job(job.external_id)
    assert fields["Partition"] == "gpu"
    assert fields["Account"] == "demo-lab"
    assert fields["NumCPUs"] == "2"
    assert "gres:gpu:h100:1" in fields.get("TresPerNode", "")
    assert fields["MinMemoryNode"] == "2G"
    job = run_to(job, lambda j: j.is_terminal)
    assert job.state == JobState.SUCCEEDED
    assert log_of(job) == "".join(f"{value}\n---\n" for value in HOSTILE_VALUES)
    assert not pwned.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "x; rm -rf /"), ("name", "--uid=0"), ("name", "a\nb")],
)
def test_hostile_names_never_reach_sbatch(slurm_cluster, tenant, owner, h100, field, value):
    job = SimpleNamespace(
        uid=uuid.uuid4(),
        name="ok",
        command="true",
        gpu_type=h100,
        gpu_count=1,
        cpus=1,
        memory_gb=1,
        time_limit_minutes=5,
        env={},
        tenant=tenant,
        owner_id=owner.pk,
        external_id="",
    )
    setattr(job, field, value)
    with pytest.raises(JobRejected):
        slurm_cluster.adapter().submit(job)


def test_hostile_env_names_and_partitions_never_reach_sbatch(slurm_cluster, tenant, owner, h100):
    adapter = slurm_cluster.adapter()
    job = SimpleNamespace(
        uid=uuid.uuid4(),
        name="ok",
        command="true",
        gpu_type=h100,
        gpu_count=1,
        cpus=1,
        memory_gb=1,
        time_limit_minutes=5,
        env={"A=1 B": "x"},
        tenant=tenant,
        owner_id=owner.pk,
        external_id="",
    )
    with pytest.raises(JobRejected):
        adapter.submit(job)
    job.env = {}
    Pool.objects.filter(cluster=slurm_cluster).update(partition="gpu --uid=0")
    with pytest.raises(JobRejected):
        slurm_cluster.adapter().submit(job)  # an adapter reads the pools once


def test_new_tenant_becomes_a_slurm_account_its_owners_may_use(slurm_cluster, owner, h100):
    from jobs import submission

    slug = f"team-{uuid.uuid4().hex[:8]}"
    tenant = Tenant.objects.create(slug=slug, name="New team")
    Membership.objects.create(user=owner, tenant=tenant)
    job, _ = submission.submit(
        tenant=tenant,
        owner=owner,
        spec={
            "name": "first",
            "command": "echo first",
            "gpu_type": h100,
            "gpu_count": 1,
            "time_limit_minutes": 5,
            "cpus": 1,
            "memory_gb": 1,
        },
    )
    admit(job, slurm_cluster)
    try:
        dispatch_jobs([job.pk])
        job = run_to(job, lambda j: j.is_terminal)
        assert job.state == JobState.SUCCEEDED
        accounts = subprocess.run(
            ["sacctmgr", "-n", "-P", "show", "account", slug, "format=Account"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert accounts == [slug]
        # The job's owner is the account's one user: not the portal, nor root.
        assert account_users(slug) == [OWNER_POSIX_USER]
    finally:
        subprocess.run(["sacctmgr", "-i", "delete", "account", slug], capture_output=True)


# --- every job runs as its owner ---------------------------------------------------------------------


def ownership(path: Path) -> tuple[str, int, str]:
    """Owner, permission bits and group of a file."""
    info = path.stat()
    return (
        pwd.getpwuid(info.st_uid).pw_name,
        stat.S_IMODE(info.st_mode) & 0o777,
        grp.getgrgid(info.st_gid).gr_name,
    )


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True)


def test_a_job_runs_as_its_owner_in_a_directory_only_they_and_the_portal_may_enter(slurm_job, slurm_cluster):
    job = slurm_job(command="id -un; echo secret > notes.txt")
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert scontrol_job(job.external_id)["UserId"].startswith(f"{OWNER_POSIX_USER}(")
    job = run_to(job, lambda j: j.is_terminal)
    assert (job.state, log_of(job)) == (JobState.SUCCEEDED, f"{OWNER_POSIX_USER}\n")

    job_dir = slurm_cluster.adapter().job_dir(job)
    log = job_dir / "output.log"
    assert ownership(job_dir) == (OWNER_POSIX_USER, 0o710, PORTAL_GROUP)
    assert ownership(log) == (OWNER_POSIX_USER, 0o640, PORTAL_GROUP)
    # The portal reads the log as a member of its group, but cannot list the directory.
    assert as_user(PORTAL_USER, "cat", str(log)).stdout == f"{OWNER_POSIX_USER}\n"
    assert as_user(PORTAL_USER, "ls", str(job_dir)).returncode != 0
    # Another researcher reads nothing of it, and cannot even list the jobs' directories.
    for argv in (["cat", str(log)], ["cat", str(job_dir / "notes.txt")], ["ls", str(job_dir.parent)]):
        denied = as_user(OUTSIDER_POSIX_USER, *argv)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, argv


# A secret as hostile as validation lets through: quotes, shell syntax, a newline, non-ASCII.
HOSTILE_SECRET = "hf_'$(touch /tmp/pwned)`id`\"\nline two; ünïcode ✓"


def test_secrets_reach_the_job_in_a_file_only_its_owner_may_read(slurm_job, slurm_cluster):
    job = slurm_job(
        command='printf %s "$HF_TOKEN" | sha256sum | cut -c1-64; stat -c "%U %a" secrets.env',
        env={"EPOCHS": "3"},
        secrets={"HF_TOKEN": HOSTILE_SECRET},
    )
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED, job.reason
    script = subprocess.run(
        ["scontrol", "write", "batch_script", job.external_id, "-"], capture_output=True, text=True
    )
    assert script.returncode == 0 and "EPOCHS=3" in script.stdout
    assert "hf_" not in script.stdout and "hf_" not in str(scontrol_job(job.external_id))
    job = run_to(job, lambda j: j.is_terminal)
    digest = hashlib.sha256(HOSTILE_SECRET.encode()).hexdigest()
    assert (job.state, log_of(job)) == (JobState.SUCCEEDED, f"{digest}\n{OWNER_POSIX_USER} 600\n")
    assert not Path("/tmp/pwned").exists()

    secrets = slurm_cluster.adapter().job_dir(job) / "secrets.env"
    assert ownership(secrets) == (OWNER_POSIX_USER, 0o600, PORTAL_GROUP)
    for user in (PORTAL_USER, OUTSIDER_POSIX_USER):  # the portal's group reads logs, not secrets
        denied = as_user(user, "cat", str(secrets))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, user


@pytest.fixture
def two_teams(outsider, owner):
    """A tenant of the owner's (aif-alice) and one of the outsider's (aif-bob), each with its
    Slurm account and a GPU limit on it, made here and deleted afterwards."""
    teams = []
    for user, gpus in ((owner, 4), (outsider, 2)):
        slug = f"team-{uuid.uuid4().hex[:8]}"
        tenant = Tenant.objects.create(slug=slug, name=slug)
        Membership.objects.create(user=user, tenant=tenant)
        sacctmgr("add", "account", slug, "Description=test", "Organization=test")
        sacctmgr("modify", "account", "where", f"name={slug}", "set", f"GrpTRES=gres/gpu:h100={gpus}")
        teams.append(tenant)
    yield teams
    for tenant in teams:
        subprocess.run(["scancel", "-A", tenant.slug], capture_output=True)
        wait_until(lambda slug=tenant.slug: not jobs_of(slug), 30, "the tenant's Slurm jobs to go")
        subprocess.run(["sacctmgr", "-i", "delete", "account", tenant.slug], capture_output=True)


def sacctmgr(*argv: str) -> None:
    subprocess.run(["sacctmgr", "-i", *argv], capture_output=True, check=True)


def admin_level(user: str) -> str:
    return subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "user", user, "format=AdminLevel"], capture_output=True, text=True
    ).stdout.strip()


# What a job of one tenant tries against another's: each line prints the attempt and its exit
# status. The first two are controls: the same means do work on the job's own things.
ATTEMPTS = """
attempt() { name=$1; shift; "$@" >/dev/null 2>&1; echo "$name $?"; }
attempt control-own-dir touch own-file
attempt control-own-limit sacctmgr -n -P show assoc account="$OWN_ACCOUNT" format=GrpTRES
attempt list-their-dir ls "$THEIR_DIR"
attempt read-their-log cat "$THEIR_DIR/output.log"
attempt read-their-file cat "$THEIR_DIR/secret.txt"
attempt write-their-dir touch "$THEIR_DIR/planted"
attempt cancel-their-job scancel "$THEIR_JOB"
attempt signal-their-job scancel --signal=KILL "$THEIR_JOB"
attempt lower-their-limit sacctmgr -i modify account where name="$THEIR_ACCOUNT" set GrpTRES=gres/gpu:h100=0
attempt raise-own-limit sacctmgr -i modify account where name="$OWN_ACCOUNT" set GrpTRES=gres/gpu:h100=8
attempt become-admin sacctmgr -i modify user "$(id -un)" set AdminLevel=Administrator
attempt become-their-user sudo -n -u "$THEIR_USER" true
"""


def test_a_job_cannot_touch_another_tenants_job_files_or_limits(
    slurm_job, slurm_cluster, two_teams, owner, outsider, shared_dir
):
    ours, theirs = two_teams
    gate = shared_dir / "gate"
    victim = slurm_job(
        name="victim",
        tenant=ours,
        owner=owner,
        command=f"echo secret > secret.txt; while [ ! -e {gate} ]; do sleep 0.2; done; echo done",
    )
    dispatch_jobs([victim.pk])
    victim = run_to(victim, lambda j: j.state == JobState.RUNNING)
    victim_dir = slurm_cluster.adapter().job_dir(victim)
    limits_before = account_limits(ours.slug), account_limits(theirs.slug)

    attacker = slurm_job(
        name="attacker",
        tenant=theirs,
        owner=outsider,
        command=ATTEMPTS,
        env={
            "THEIR_DIR": str(victim_dir),
            "THEIR_JOB": victim.external_id,
            "THEIR_ACCOUNT": ours.slug,
            "THEIR_USER": OWNER_POSIX_USER,
            "OWN_ACCOUNT": theirs.slug,
        },
    )
    dispatch_jobs([attacker.pk])
    attacker = run_to(attacker, lambda j: j.is_terminal)
    assert attacker.state == JobState.SUCCEEDED, attacker.reason
    outcomes = dict(line.split() for line in log_of(attacker).splitlines())
    assert outcomes.pop("control-own-dir") == outcomes.pop("control-own-limit") == "0"
    assert len(outcomes) == 10 and all(status != "0" for status in outcomes.values()), outcomes

    # Nothing of the victim changed: still running, nothing planted, the limits as they were.
    dispatch.sync_cluster(slurm_cluster)
    victim.refresh_from_db()
    assert victim.state == JobState.RUNNING
    assert scontrol_job(victim.external_id)["JobState"] == "RUNNING"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["output.log", "secret.txt"]
    assert (
        (account_limits(ours.slug), account_limits(theirs.slug))
        == limits_before
        == (
            ("gres/gpu:h100=4", ""),
            ("gres/gpu:h100=2", ""),
        )
    )
    assert (admin_level(OWNER_POSIX_USER), admin_level(OUTSIDER_POSIX_USER)) == ("None", "None")
    gate.touch()
    victim = run_to(victim, lambda j: j.is_terminal)
    assert (victim.state, log_of(victim)) == (JobState.SUCCEEDED, "done\n")
    # The portal associated each owner with their own tenant's account, and with nothing else.
    assert (account_users(ours.slug), account_users(theirs.slug)) == (
        [OWNER_POSIX_USER],
        [OUTSIDER_POSIX_USER],
    )


@pytest.mark.parametrize(
    ("posix_username", "reason"),
    [
        ("", "none is set for the job's owner"),
        ("root", "privileged account"),
        ("aif-nobody", "does not exist on the submit host"),
        ("$(id)", "is not a POSIX user name"),
        ("aif-alice\n", "is not a POSIX user name"),
        (PORTAL_USER, "sudo may not run"),  # a real account, but no researcher's
    ],
)
def test_a_job_whose_owner_has_no_usable_posix_account_is_rejected_at_dispatch(
    slurm_job, slurm_cluster, owner, posix_username, reason
):
    # Stored around the checks an admin's edit goes through, as by a bug or by hand in the database.
    Identity.objects.filter(user=owner).update(posix_username=posix_username)
    job = slurm_job(command="id -un")
    dispatch_jobs([job.pk])
    job.refresh_from_db()
    assert job.state == JobState.REJECTED
    assert reason in job.reason and not job.external_id
    assert not [e for e in slurm_cluster.adapter().squeue() if e.get("comment") == f"aif:{job.uid}"]


def test_the_portal_may_act_as_a_researcher_only_to_submit_cancel_and_make_job_directories():
    """The sudo rule scripts/slurm-dev-cluster installs, as the portal's account meets it."""

    def sudo(*argv: str) -> subprocess.CompletedProcess:
        return as_user(PORTAL_USER, "sudo", "-n", *argv)

    assert sudo("-u", OWNER_POSIX_USER, "/usr/bin/scancel", "--version").returncode == 0
    for argv in (
        ["-u", OWNER_POSIX_USER, "/bin/sh", "-c", "id"],
        ["-u", OWNER_POSIX_USER, "/usr/bin/cat", "/etc/hostname"],
        ["-u", OWNER_POSIX_USER, "/usr/bin/sacctmgr", "show", "user"],
        ["-u", "root", "/usr/bin/sbatch", "--version"],
        ["-u", "slurm", "/usr/bin/sbatch", "--version"],
        ["-u", PORTAL_USER, "/usr/bin/sbatch", "--version"],
        ["-E", "-u", OWNER_POSIX_USER, "/usr/bin/sbatch", "--version"],
    ):
        assert sudo(*argv).returncode != 0, argv
    assert subprocess.run(["visudo", "-c", "-q", "-f", "/etc/sudoers.d/aifactory"]).returncode == 0


def test_health_reports_capacity_per_partition_and_gpu_type(slurm_cluster):
    health = slurm_cluster.adapter().health()
    assert health.ok, health.message
    pools = {p.gpu_type: p.capacity for p in health.pools}
    assert pools["gpu/h100"] == 8


def slurmctld_pid() -> int | None:
    try:
        pid = int(Path("/run/slurmctld.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def start_slurmctld() -> None:
    subprocess.run(["/usr/sbin/slurmctld"], check=True)
    wait_until(
        lambda: "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout,
        30,
        "slurmctld to answer",
    )


def test_controller_outage_keeps_jobs_queued_and_reconciles_once(slurm_job, slurm_cluster, shared_dir):
    gate = shared_dir / "gate"
    running = slurm_job(
        name="through-outage", command=f"while [ ! -e {gate} ]; do sleep 0.2; done; echo survived"
    )
    dispatch_jobs([running.pk])
    run_to(running, lambda j: j.state == JobState.RUNNING)
    waiting = slurm_job(name="waits-for-controller", command="echo late")

    pid = slurmctld_pid()
    assert pid, "slurmctld is not running"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: slurmctld_pid() is None, 30, "slurmctld to stop")
    try:
        with pytest.raises(BackendUnavailable):
            dispatch_jobs([waiting.pk])
        waiting.refresh_from_db()
        assert waiting.state == JobState.ADMITTED and "unreachable" in waiting.reason
        with pytest.raises(BackendUnavailable):
            dispatch.sync_cluster(slurm_cluster)
        gate.touch()  # the job ends while the portal cannot see the controller
        time.sleep(1)
    finally:
        if slurmctld_pid() is None:
            start_slurmctld()

    dispatch_jobs([waiting.pk])
    running = run_to(running, lambda j: j.is_terminal)
    assert (running.state, running.exit_code) == (JobState.SUCCEEDED, 0)
    assert running.events.filter(kind="state", state=JobState.SUCCEEDED).count() == 1
    dispatch.sync_cluster(slurm_cluster)
    assert running.events.filter(kind="state", state=JobState.SUCCEEDED).count() == 1
    assert run_to(waiting, lambda j: j.is_terminal).state == JobState.SUCCEEDED


def test_time_limit_ends_in_timed_out(slurm_job):
    """Slurm's smallest limit is one minute, enforced about a minute later: this one is slow."""
    job = slurm_job(name="too-slow", command="echo start; sleep 600", time_limit_minutes=1)
    dispatch_jobs([job.pk])
    job = run_to(job, lambda j: j.is_terminal, timeout=150)
    assert job.state == JobState.TIMED_OUT
    assert log_of(job).startswith("start\n")


# --- quotas mirrored into Slurm's own limits -----------------------------------------------------------


def account_users(account: str) -> list[str]:
    out = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", "format=User"],
        capture_output=True,
        text=True,
    ).stdout
    return sorted(user for user in out.split() if user)


def account_limits(account: str) -> tuple[str, str]:
    """GrpTRES and MaxTRES (per job) of the account's own association."""
    out = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", "format=User,GrpTRES,MaxTRES"],
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return next((group, per_job) for user, group, per_job in rows if not user)


def squeue_reason(external_id: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", external_id, "-o", "%r"], capture_output=True, text=True
    ).stdout.strip()


def sbatch_as(account: str, gpus: int) -> str:
    """A job a researcher submits to the account directly, not through the portal."""
    out = subprocess.run(
        [
            "runuser",
            "-u",
            OWNER_POSIX_USER,
            "--",
            "sbatch",
            "--parsable",
            f"--account={account}",
            "--partition=gpu",
            f"--gres=gpu:h100:{gpus}",
            "--cpus-per-task=1",
            "--mem=1G",
            "--time=2",
            "--output=/dev/null",
            "--chdir=/tmp",
            "--wrap",
            "sleep 60",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split(";", 1)[0]


@pytest.fixture
def limited_tenant(slurm_cluster, a100):
    """A tenant of its own (its account is made and deleted here), on a cluster whose pools also
    name a GPU type Slurm does not account for (a100)."""
    slug = f"quota-{uuid.uuid4().hex[:8]}"
    tenant = Tenant.objects.create(slug=slug, name="Quota team")
    Pool.objects.create(cluster=slurm_cluster, gpu_type=a100, capacity=8, partition="gpu")
    yield tenant
    subprocess.run(["scancel", "-A", slug], capture_output=True)
    wait_until(lambda: not jobs_of(slug), 30, "the tenant's Slurm jobs to go")
    subprocess.run(["sacctmgr", "-i", "delete", "account", slug], capture_output=True)


def jobs_of(account: str) -> str:
    return subprocess.run(["squeue", "-h", "-A", account], capture_output=True, text=True).stdout.strip()


def test_quotas_become_slurm_limits_that_slurm_enforces(
    slurm_cluster, limited_tenant, h100, a100, platform_admin
):
    from quotas import limits
    from quotas.editing import delete_audited, save_audited
    from quotas.models import Quota

    tenant = limited_tenant
    assert limits.mirror([tenant.pk]) == {}  # no quota: no account made for it
    quota = Quota(tenant=tenant, gpu_type=h100)
    save_audited(quota, {"nominal": 2, "borrowing_limit": 1, "max_gpus_per_job": 2}, platform_admin)
    Quota.objects.create(tenant=tenant, gpu_type=a100, nominal=4)

    assert limits.mirror([tenant.pk]) == {"slurm-local": [tenant.slug]}
    assert account_limits(tenant.slug) == ("gres/gpu:h100=3", "gres/gpu:h100=2")
    assert limits.mirror([tenant.pk]) == {}  # already in line: nothing modified

    # Slurm itself holds jobs that bypass the portal to the ceiling: a researcher of the tenant
    # (associated with its account, as by their first job through the portal) submits directly.
    subprocess.run(
        ["sacctmgr", "-i", "add", "user", OWNER_POSIX_USER, f"Account={tenant.slug}"],
        capture_output=True,
        check=True,
    )
    too_big = sbatch_as(tenant.slug, 3)
    first, second = sbatch_as(tenant.slug, 2), sbatch_as(tenant.slug, 2)
    wait_until(lambda: squeue_reason(too_big) == "AssocMaxGRESPerJob", 15, "the per-job limit")
    wait_until(lambda: squeue_reason(second) == "AssocGrpGRES", 15, "the tenant's GPU limit")
    assert squeue_reason(first) == "None"  # running
    report = slurm_cluster.adapter().report_from_squeue(
        {"job_id": int(second), "job_state": "PENDING", "state_reason": "AssocGrpGRES"}
    )
    assert report.reason == "the tenant's GPU limit on this cluster is reached"

    # Unlimited borrowing: no ceiling; a deleted quota: none of that GPU type.
    save_audited(quota, {"borrowing_limit": None, "max_gpus_per_job": None}, platform_admin)
    limits.mirror([tenant.pk])
    assert account_limits(tenant.slug) == ("", "")
    delete_audited(quota, platform_admin)
    limits.mirror([tenant.pk])
    assert account_limits(tenant.slug) == ("gres/gpu:h100=0", "")


def test_a_quota_change_mirrors_its_tenant(
    limited_tenant, h100, platform_admin, django_capture_on_commit_callbacks
):
    from unittest import mock

    from quotas.editing import save_audited
    from quotas.models import Quota
    from quotas.tasks import mirror_cluster_limits, mirror_limits

    with (
        mock.patch.object(mirror_limits, "delay") as mirror,
        mock.patch("quotas.tasks.admit_pending.delay"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        save_audited(
            Quota(tenant=limited_tenant, gpu_type=h100), {"nominal": 4, "borrowing_limit": 0}, platform_admin
        )
    mirror.assert_called_once_with([limited_tenant.pk])
    slurm = Cluster.objects.get(slug="slurm-local")
    assert mirror_limits([limited_tenant.pk]) == 1  # one task per cluster keeping limits
    assert mirror_cluster_limits(slurm.pk, [limited_tenant.pk]) == [limited_tenant.slug]
    assert account_limits(limited_tenant.slug) == ("gres/gpu:h100=4", "")
