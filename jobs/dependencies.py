"""Job dependencies, as Slurm's `--dependency=afterok:…,afterany:…`: a pending job waits until the
jobs it names succeeded (after_ok) or ended (after_any); when an after_ok dependency ends in any
other way, the job can never run and is cancelled, with the reason on its timeline. The portal
holds the job back itself, so this works the same on every backend."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from .choices import MAX_DEPENDENCIES, TERMINAL_STATES, DependencyKind, JobState
from .models import Job, JobDependency


def check(tenant, after_ok: list[int], after_any: list[int]) -> None:
    """Raise ValidationError per field for dependencies that cannot be: jobs not in this tenant
    (whether they exist elsewhere is not said), one named twice, too many."""
    errors: dict[str, list[str]] = {}
    if len(after_ok) + len(after_any) > MAX_DEPENDENCIES:
        errors["after_ok"] = [f"At most {MAX_DEPENDENCIES} dependencies."]
    both = sorted(set(after_ok) & set(after_any))
    if both:
        errors["after_any"] = [f"Job {', '.join(map(str, both))} is also in after_ok."]
    named = set(after_ok) | set(after_any)
    found = (
        set(Job.objects.filter(tenant=tenant, pk__in=named).values_list("pk", flat=True)) if named else set()
    )
    for field, ids in (("after_ok", after_ok), ("after_any", after_any)):
        missing = sorted(set(ids) - found)
        if missing:
            listed = ", ".join(f"#{pk}" for pk in missing)
            errors.setdefault(field, []).append(f"No job {listed} in tenant {tenant.slug}.")
    if errors:
        raise ValidationError(errors)


def record(job: Job, after_ok: list[int], after_any: list[int]) -> None:
    JobDependency.objects.bulk_create(
        [JobDependency(job=job, on_id=pk, kind=DependencyKind.AFTER_OK) for pk in dict.fromkeys(after_ok)]
        + [JobDependency(job=job, on_id=pk, kind=DependencyKind.AFTER_ANY) for pk in dict.fromkeys(after_any)]
    )


def record_many(job_ids: list[int], after_ok: list[int], after_any: list[int]) -> None:
    """The same dependencies for many jobs (an array's tasks), in one INSERT."""
    JobDependency.objects.bulk_create(
        [
            JobDependency(job_id=job_id, on_id=pk, kind=kind)
            for job_id in job_ids
            for kind, ids in ((DependencyKind.AFTER_OK, after_ok), (DependencyKind.AFTER_ANY, after_any))
            for pk in dict.fromkeys(ids)
        ],
        batch_size=5000,
    )


def resolve() -> dict[int, str]:
    """For the admission pass: cancel the pending jobs whose after_ok dependency ended otherwise,
    and answer {job id: why it waits} for those still waiting on theirs. One query, plus one
    transition per job cancelled."""
    waiting: dict[int, str] = {}
    doomed: dict[int, str] = {}
    rows = JobDependency.objects.filter(job__state=JobState.PENDING).values_list(
        "job_id", "kind", "on_id", "on__state"
    )
    for job_id, kind, on_id, on_state in rows.order_by("job_id", "on_id"):
        if on_state == JobState.SUCCEEDED or (
            kind == DependencyKind.AFTER_ANY and on_state in TERMINAL_STATES
        ):
            continue
        if on_state in TERMINAL_STATES:
            doomed.setdefault(job_id, f"job #{on_id} it runs after ended {JobState(on_state).label.lower()}")
        else:
            wanted = "succeed" if kind == DependencyKind.AFTER_OK else "end"
            waiting.setdefault(job_id, f"waiting for job #{on_id} to {wanted}")
    for job in Job.objects.filter(pk__in=list(doomed), state=JobState.PENDING):
        job.finish(JobState.CANCELLED, reason=f"dependency: {doomed[job.pk]}")
    return {job_id: reason for job_id, reason in waiting.items() if job_id not in doomed}
