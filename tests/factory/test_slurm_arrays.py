"""How the Slurm adapter reads arrays in what squeue prints, and writes an array's batch script
(the real cluster: tests/integration/test_slurm_arrays.py)."""

from __future__ import annotations

import subprocess
import uuid
from types import SimpleNamespace

from factory.adapters.slurm.adapter import SlurmAdapter, pending_reason
from factory.adapters.slurm.cli import job_keys


def test_squeue_entries_are_named_by_job_task_or_each_waiting_task():
    assert job_keys({"job_id": 12, "array_job_id": 0, "array_task_id": None}) == ["12"]
    assert job_keys({"job_id": 22, "array_job_id": 21, "array_task_id": 0}) == ["21_0"]
    waiting = {"job_id": 21, "array_job_id": 21, "array_task_id": None, "array_task_string": "2-3,7%2"}
    assert job_keys(waiting) == ["21_2", "21_3", "21_7"]
    newer = {
        "job_id": 22,
        "array_job_id": {"set": True, "number": 21},
        "array_task_id": {"set": True, "number": 4},
    }
    assert job_keys(newer) == ["21_4"]


def test_a_handed_over_task_is_not_said_to_be_held():
    assert pending_reason("JobHeldUser,JobArrayTaskLimit") == "JobArrayTaskLimit"
    assert pending_reason("Resources") == "Resources"
    assert pending_reason("JobHeldUser") == "JobHeldUser"


def task(index: int, **env) -> SimpleNamespace:
    return SimpleNamespace(uid=uuid.uuid4(), name="sweep", env=env, array_id=9, array_index=index)


def test_the_array_script_sets_each_tasks_own_variables_by_its_index(tmp_path):
    tasks = [task(0, LR="0.1", EPOCHS="3"), task(4, LR="it's", EPOCHS="3")]
    first = SimpleNamespace(command='echo "$FACTORY_ARRAY_INDEX $LR $EPOCHS $FACTORY_JOB_UID"')
    script = SlurmAdapter.array_script(first, tasks)
    assert "export EPOCHS=3" in script  # shared by every task: once
    for index, member in ((0, tasks[0]), (4, tasks[1]), (5, None)):
        result = subprocess.run(
            ["bash", "-c", script], env={"SLURM_ARRAY_TASK_ID": str(index)}, capture_output=True, text=True
        )
        if member is None:
            assert result.returncode == 1 and "not one of this array's" in result.stderr
        else:
            assert result.stdout == f"{index} {member.env['LR']} 3 {member.uid}\n"
