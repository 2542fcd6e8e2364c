"""The part of a gang's batch script that decides the job's exit code from its ranks' records
(factory.adapters.slurm.adapter.FIRST_FAILURE), run by bash on records as ranks leave them. The
whole script runs on the real Slurm in tests/integration/test_slurm_gangs.py; the order in which
a failing rank and the ranks stopped because of it end there is up to the machine's load."""

from __future__ import annotations

import subprocess

from factory.adapters.slurm.adapter import FIRST_FAILURE


def first_failure(job_dir, records: dict[int, str]) -> str:
    for rank, record in records.items():
        (job_dir / f"rank-{rank}.exit").write_text(record + "\n")
    script = FIRST_FAILURE + 'first_failure "$1"'
    return subprocess.run(["bash", "-c", script, "bash", str(job_dir)], capture_output=True, text=True).stdout


def test_the_rank_that_failed_first_gives_the_job_its_exit_code(tmp_path):
    """Rank 1 exits 3; rank 0, stopped because of it, ends a little later with SIGTERM's 143."""
    records = {0: "143 1764431000.250000000", 1: "3 1764431000.100000000", 2: "0 1764431000.050000000"}
    assert first_failure(tmp_path, records) == "3\n"


def test_ranks_that_all_succeeded_leave_no_failure(tmp_path):
    assert first_failure(tmp_path, {0: "0 1764431000.1", 1: "0 1764431000.2"}) == ""


def test_no_records_leave_it_to_srun(tmp_path):
    """srun could not start the ranks: the script exits with srun's own code."""
    assert first_failure(tmp_path, {}) == ""
