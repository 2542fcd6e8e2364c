"""Arrays on the real Slurm of scripts/slurm-dev-cluster (see test_slurm.py for its layout and for
how the adapter's tools run as the portal's own account): one `sbatch --array` per array, its
tasks released as admission admits them, each task's state, exit code and log mapped back from
"<array job id>_<index>", one task or the whole array cancelled."""

from __future__ import annotations

import os
import subprocess

import pytest

from factory.adapters.slurm.cli import SlurmCLI
from factory.models import Cluster
from jobs import arrays, dispatch, lifecycle, submission
from jobs.choices import JobState
from jobs.models import Job, JobArray
from jobs.tasks import cancel_array, cancel_job, dispatch_jobs
from quotas.admission import admit_pending
from quotas.models import Quota
from tests.conftest import job_spec

from . import test_slurm
from .conftest import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.django_db]

# The Slurm fixtures of test_slurm.py, used here as they are there.
as_the_portal_account = test_slurm.as_the_portal_account
shared_dir = test_slurm.shared_dir
slurm_cluster = test_slurm.slurm_cluster
cancel_leftovers = test_slurm.cancel_leftovers

POLL = 0.3


@pytest.fixture(autouse=True)
def cancel_arrays():
    """No array of a test outlives it on the shared cluster, held tasks included."""
    yield
    ids = list(JobArray.objects.exclude(external_id="").values_list("external_id", flat=True))
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture
def tools(monkeypatch):
    """The Slurm tools the adapter runs, in order (the first word of each call)."""
    ran: list[str] = []
    execute = SlurmCLI.execute

    def counted(cli, argv, **kwargs):
        ran.append(argv[0] if argv[0] != "scontrol" else " ".join(argv[:2]))
        return execute(cli, argv, **kwargs)

    monkeypatch.setattr(SlurmCLI, "execute", counted)
    return ran


@pytest.fixture
def make_array(slurm_cluster, tenant, owner, h100):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=8)

    def make(array: str, command: str, **overrides) -> JobArray:
        spec = job_spec(
            gpu_type=h100, command=command, cpus=1, memory_gb=1, time_limit_minutes=5, **overrides
        )
        made, _ = submission.submit_array(
            tenant=tenant, owner=owner, spec=spec, tasks=arrays.parse(array, None)
        )
        return made

    return make


def admit_and_dispatch() -> list[int]:
    """An admission pass, then the dispatch of what it admitted, as the worker does on commit."""
    admit_pending()
    admitted = list(
        Job.objects.filter(state=JobState.ADMITTED).order_by("array_index").values_list("pk", flat=True)
    )
    if admitted:
        dispatch_jobs(admitted)
    return admitted


def run_array(array: JobArray, until, timeout: float = 90.0) -> list[Job]:
    """Sync, admit and dispatch, as the worker's beat does, until `until(tasks)`."""

    def check():
        dispatch.sync_cluster(Cluster.objects.get(kind="slurm"))
        admit_and_dispatch()
        tasks = list(array.tasks.select_related("cluster", "array", "gpu_type").order_by("array_index"))
        return tasks if until(tasks) else None

    return wait_until(
        check, timeout, lambda: f"{[(t.array_index, t.state, t.reason) for t in array.tasks.all()]}"
    )


def slurm_states(external_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", external_id, "-o", "%i %T"], capture_output=True, text=True
    ).stdout
    return dict(line.split() for line in out.splitlines())


# Every task runs over a second, the failing one too: Slurm times jobs to the second, and a job
# that starts and ends within the same second used no time the ledger would bill.
COMMAND = """\
echo "task=$FACTORY_ARRAY_INDEX slurm=$SLURM_ARRAY_TASK_ID uid=$FACTORY_JOB_UID"
sleep 1.5
[ "$FACTORY_ARRAY_INDEX" = 2 ] && exit 3
exit 0
"""


def test_an_array_is_one_sbatch_each_task_sees_its_index_and_only_the_failing_task_fails(make_array, tools):
    array = make_array("0-3%2", COMMAND)
    first_two = array.tasks.filter(array_index__in=[0, 1]).order_by("array_index")
    assert admit_and_dispatch() == list(first_two.values_list("pk", flat=True))
    array.refresh_from_db()
    assert array.external_id.isdigit()
    assert tools.count("sbatch") == 1 and "scontrol release" in tools
    held = slurm_states(array.external_id)
    assert any(state == "PENDING" for state in held.values()), held  # tasks 2 and 3, held for the portal

    tasks = run_array(array, lambda tasks: all(t.is_terminal for t in tasks))
    assert [(t.state, t.exit_code) for t in tasks] == [
        (JobState.SUCCEEDED, 0),
        (JobState.SUCCEEDED, 0),
        (JobState.FAILED, 3),
        (JobState.SUCCEEDED, 0),
    ]
    assert tools.count("sbatch") == 1  # tasks 2 and 3 were released, never submitted again
    assert [t.external_id for t in tasks] == [f"{array.external_id}_{i}" for i in range(4)]
    for task in tasks:
        log = task.cluster.adapter().logs(task, 0).text
        assert log.startswith(f"task={task.array_index} slurm={task.array_index} uid={task.uid}\n"), log
        assert task.started_at and task.ended_at
    shown = subprocess.run(
        ["scontrol", "show", "job", array.external_id], capture_output=True, text=True
    ).stdout
    assert "ArrayTaskThrottle=2" in shown  # the limit, %2, is Slurm's too

    from billing import metering
    from billing.models import UsageRecord

    metering.meter_finished()  # what each task's release meters (its signal runs on commit)
    lines = {line.job_id: line for line in UsageRecord.objects.filter(job__array=array)}
    assert sorted(lines) == [t.pk for t in tasks]
    for task in tasks:
        assert lines[task.pk].gpu_seconds == int((task.ended_at - task.started_at).total_seconds())


def test_a_retried_dispatch_finds_the_array_instead_of_submitting_it_again(make_array, slurm_cluster, tools):
    array = make_array("0-1", "sleep 1")
    admit_pending()
    tasks = list(array.tasks.select_related("cluster", "array", "gpu_type", "tenant").order_by("array_index"))
    adapter = slurm_cluster.adapter()
    first, _ = adapter.submit_array(array, tasks, lambda: tasks)
    # That dispatcher died right after sbatch, before it wrote the id down or recorded anything:
    marker = adapter.array_marker(array)
    marker.write_text("")
    old = marker.stat().st_mtime - 3600
    os.utime(marker, (old, old))
    sbatches = tools.count("sbatch")
    dispatch_jobs([t.pk for t in tasks])  # the sweep's retry
    assert tools.count("sbatch") == sbatches
    array.refresh_from_db()
    assert array.external_id == first
    assert sorted(array.tasks.values_list("external_id", flat=True)) == [f"{first}_0", f"{first}_1"]
    dispatch_jobs([t.pk for t in tasks])  # and again: already submitted, nothing to do
    assert tools.count("sbatch") == sbatches
    ours = [e for e in adapter.squeue() if e.get("comment") == f"aif:{array.uid}"]
    assert {str(e.get("array_job_id")) for e in ours} == {first}


def test_one_task_then_the_whole_array_are_cancelled(make_array, owner):
    array = make_array("0-3", "echo started; sleep 300")
    admit_and_dispatch()
    array.refresh_from_db()
    run_array(array, lambda tasks: all(t.state == JobState.RUNNING for t in tasks))

    one = array.tasks.get(array_index=1)
    assert lifecycle.cancel(one, owner)
    cancel_job(one.pk)  # what the cancel enqueues
    tasks = run_array(array, lambda tasks: tasks[1].is_terminal)
    assert [t.state for t in tasks] == ["running", "cancelled", "running", "running"]
    assert slurm_states(f"{array.external_id}_1") == {f"{array.external_id}_1": "CANCELLED"}

    assert lifecycle.cancel_array(array, owner)
    cancel_array(array.pk)  # what the array's cancel enqueues: one scancel of the Slurm array
    tasks = run_array(array, lambda tasks: all(t.is_terminal for t in tasks))
    assert {t.state for t in tasks} == {JobState.CANCELLED}
    assert set(slurm_states(array.external_id).values()) == {"CANCELLED"}


def test_cancelling_an_array_also_ends_the_tasks_slurm_holds_for_the_portal(make_array, owner, tools):
    array = make_array("0-3%1", "sleep 300")
    admit_and_dispatch()
    array.refresh_from_db()
    assert "PENDING" in slurm_states(array.external_id).values()  # the held tasks
    assert lifecycle.cancel_array(array, owner)
    cancel_array(array.pk)
    assert "PENDING" not in slurm_states(array.external_id).values()
    assert tools.count("scancel") == 1
    tasks = run_array(array, lambda tasks: all(t.is_terminal for t in tasks))
    assert {t.state for t in tasks} == {JobState.CANCELLED}
