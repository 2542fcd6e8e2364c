from __future__ import annotations

from django.db import models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from factory.choices import Role
from factory.querysets import TenantOwnedQuerySet

from .choices import AT_BACKEND_STATES, EventKind, JobState


class JobQuerySet(TenantOwnedQuerySet):
    def cancellable_by(self, user) -> JobQuerySet:
        """Its owner, its tenant's admins, and whoever may change any job (platform admins)."""
        if user.has_perm("jobs.change_job"):
            return self
        return self.filter(
            models.Q(owner=user)
            | models.Q(tenant__memberships__user=user, tenant__memberships__role=Role.ADMIN)
        )

    def at_backend(self) -> JobQuerySet:
        return self.filter(state__in=AT_BACKEND_STATES)

    def with_queue_position(self) -> JobQuerySet:
        """Annotate pending jobs with their place in the queue of their GPU type: 1 + the pending
        jobs of that type ahead of them by priority, then submit time (None when not pending)."""
        ahead = (
            self.model.objects.filter(state=JobState.PENDING, gpu_type=models.OuterRef("gpu_type"))
            .filter(
                models.Q(priority__gt=models.OuterRef("priority"))
                | models.Q(priority=models.OuterRef("priority"), created_at__lt=models.OuterRef("created_at"))
            )
            .order_by()
            .values("gpu_type")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        return self.annotate(
            queue_position=models.Case(
                models.When(
                    state=JobState.PENDING,
                    then=Coalesce(models.Subquery(ahead), 0) + 1,
                ),
                default=None,
                output_field=models.IntegerField(),
            )
        )

    def admit_many(self, placements: dict[int, tuple[int, str]]) -> list[int]:
        """Admit many pending jobs at once: {job id: (cluster id, message)}. The same edge as
        the admit edge (pending → admitted, an event each) in a fixed number of statements; what follows
        (dispatch) is jobs.lifecycle's. Returns the ids actually admitted: a job cancelled
        meanwhile is left alone."""
        return self._move_many(
            JobState.PENDING,
            JobState.ADMITTED,
            {pk: message for pk, (_, message) in placements.items()},
            per_job={"cluster_id": ({pk: c for pk, (c, _) in placements.items()}, models.BigIntegerField())},
            reason="",
            admitted_at=timezone.now(),
            dispatch_enqueued_at=timezone.now(),
        )

    def mark_submitted_many(self, submissions: dict[int, tuple[int, str, str]]) -> list[int]:
        """Record attempts of admitted jobs as accepted by their backends: {job id: (attempt,
        external id, message)}. The same edge as Job.mark_submitted (admitted → submitted, an event
        each) in a fixed number of statements. Returns the ids actually moved: a job cancelled
        meanwhile is left alone, and so is one requeued meanwhile, even if admitted again: its new
        attempt is not the one submitted."""
        return self._move_many(
            JobState.ADMITTED,
            JobState.SUBMITTED,
            {pk: message for pk, (_, _, message) in submissions.items()},
            per_job={"external_id": ({pk: e for pk, (_, e, _) in submissions.items()}, models.CharField())},
            attempts={pk: attempt for pk, (attempt, _, _) in submissions.items()},
            submitted_at=timezone.now(),
        )

    def _move_many(
        self,
        source: str,
        target: str,
        messages: dict[int, str],
        *,
        per_job: dict[str, tuple[dict[int, object], models.Field]],
        attempts: dict[int, int] | None = None,
        **fields,
    ) -> list[int]:
        """Move the jobs of `messages` that are still in `source` (and in the attempt `attempts`
        gives, if any) to `target`, in their order: one locking read, one UPDATE (per_job: a value
        per job for a field) and one INSERT of their events ({job id: message}). Returns the ids
        moved."""
        if not messages:
            return []
        now = timezone.now()
        with transaction.atomic(savepoint=False):
            still = {
                pk
                for pk, attempt in self.model.objects.filter(pk__in=list(messages), state=source)
                .select_for_update()
                .values_list("pk", "attempt")
                if attempts is None or attempts[pk] == attempt
            }
            moved = [pk for pk in messages if pk in still]
            if not moved:
                return []
            values = {
                name: models.Case(
                    *(models.When(pk=pk, then=models.Value(by_job[pk])) for pk in moved), output_field=field
                )
                for name, (by_job, field) in per_job.items()
            }
            self.model.objects.filter(pk__in=moved).update(state=target, updated_at=now, **values, **fields)
            event = self.model._meta.get_field("events").related_model
            event.objects.bulk_create(
                event(job_id=pk, kind=EventKind.STATE, state=target, message=messages[pk][:1000], at=now)
                for pk in moved
            )
        return moved


class JobTemplateQuerySet(models.QuerySet):
    def usable_by(self, user) -> JobTemplateQuerySet:
        """One's own templates, and those shared in a tenant one belongs to (still a member)."""
        if not user.is_authenticated:
            return self.none()
        shared = models.Q(shared=True, tenant__memberships__user=user)
        return self.filter(models.Q(owner=user, tenant__memberships__user=user) | shared).distinct()
