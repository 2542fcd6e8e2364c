"""Helpers that move jobs along the paths production takes."""

from __future__ import annotations

from jobs import lifecycle


def admit(job, cluster) -> bool:
    """Admit one job to a cluster as an admission pass does (dispatch follows on commit)."""
    admitted = lifecycle.admit_many({job.pk: (cluster.pk, f"Admitted: {job.gpu_count} GPU(s) on {cluster}")})
    job.refresh_from_db()
    return bool(admitted)


def trail(model, **filters):
    """The audit trail's entries (django-auditlog's LogEntry) for objects of `model`."""
    from auditlog.models import LogEntry

    return LogEntry.objects.get_for_model(model).filter(**filters).order_by("timestamp", "id")


def trail_changes(model, **filters) -> set[tuple]:
    """(field, before, after) of every change the trail records for objects of `model`."""
    return {
        (name, *values)
        for entry in trail(model, **filters)
        for name, values in (entry.changes or {}).items()
        if isinstance(values, list)
    }
