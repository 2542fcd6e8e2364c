"""How the Slurm tools' errors are sorted: the job's fault, an outage, or neither."""

from __future__ import annotations

import pytest

from factory.adapters import BackendError, BackendUnavailable, JobRejected
from factory.adapters.slurm.cli import classify_error


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("sbatch: error: Batch job submission failed: Invalid partition name specified", JobRejected),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller",
            BackendUnavailable,
        ),
        ("squeue: error: slurm_load_jobs error: Socket timed out on send/recv", BackendUnavailable),
    ],
)
def test_known_errors_are_the_jobs_fault_or_an_outage(message, kind):
    assert type(classify_error("sbatch", message)) is kind


def test_an_unknown_error_is_neither_retried_forever_nor_blamed_on_the_job():
    error = classify_error(
        "sbatch", "sbatch: error: Batch job submission failed: Unexpected message received"
    )
    assert type(error) is BackendError
    assert "Unexpected message received" in str(error)
