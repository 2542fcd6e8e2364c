"""Helpers that move jobs along the paths production takes."""

from __future__ import annotations

from jobs import lifecycle


def admit(job, cluster) -> bool:
    """Admit one job to a cluster as an admission pass does (dispatch follows on commit)."""
    admitted = lifecycle.admit_many({job.pk: (cluster.pk, f"Admitted: {job.gpu_count} GPU(s) on {cluster}")})
    job.refresh_from_db()
    return bool(admitted)
