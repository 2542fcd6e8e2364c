from __future__ import annotations

from django.db import models
from django.db.models import functions  # noqa: F401 - models.functions below

from factory.choices import Role
from factory.querysets import TenantOwnedQuerySet

from .choices import ACTIVE_STATES, AT_BACKEND_STATES, HOLDING_STATES


class JobQuerySet(TenantOwnedQuerySet):
    def cancellable_by(self, user) -> JobQuerySet:
        if user.is_staff:
            return self
        return self.filter(
            models.Q(owner=user)
            | models.Q(tenant__memberships__user=user, tenant__memberships__role=Role.ADMIN)
        )

    def active(self) -> JobQuerySet:
        return self.filter(state__in=ACTIVE_STATES)

    def holding(self) -> JobQuerySet:
        return self.filter(state__in=HOLDING_STATES)

    def at_backend(self) -> JobQuerySet:
        return self.filter(state__in=AT_BACKEND_STATES)

    def with_queue_position(self) -> JobQuerySet:
        """Annotate pending jobs with their place in the queue of their GPU type: 1 + the pending
        jobs of that type ahead of them by priority, then submit time (None when not pending)."""
        from .choices import JobState

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
                    then=models.functions.Coalesce(models.Subquery(ahead), 0) + 1,
                ),
                default=None,
                output_field=models.IntegerField(),
            )
        )

    def admit_many(self, placements: dict[int, tuple[int, str]]) -> list[int]:
        """Admit many pending jobs at once: {job id: (cluster id, message)}. The same edge as
        Job.admit (pending → admitted, guarded by the current state, an event each, dispatch on
        commit) in a fixed number of statements. Returns the ids actually admitted: a job cancelled
        meanwhile is left alone."""
        from django.db import transaction
        from django.utils import timezone

        from .choices import EventKind, JobState
        from .models import JobEvent
        from .tasks import enqueue_dispatch

        if not placements:
            return []
        now = timezone.now()
        with transaction.atomic(savepoint=False):
            still_pending = set(
                self.model.objects.filter(pk__in=list(placements), state=JobState.PENDING)
                .select_for_update()
                .values_list("pk", flat=True)
            )
            admitted = [pk for pk in placements if pk in still_pending]  # in admission order
            if not admitted:
                return []
            cluster_of = models.Case(
                *(models.When(pk=pk, then=models.Value(placements[pk][0])) for pk in admitted),
                output_field=models.BigIntegerField(),
            )
            self.model.objects.filter(pk__in=admitted).update(
                state=JobState.ADMITTED, cluster_id=cluster_of, reason="", admitted_at=now, updated_at=now
            )
            JobEvent.objects.bulk_create(
                JobEvent(
                    job_id=pk,
                    kind=EventKind.STATE,
                    state=JobState.ADMITTED,
                    message=placements[pk][1][:1000],
                    at=now,
                )
                for pk in admitted
            )
            transaction.on_commit(lambda: enqueue_dispatch(admitted))
        return admitted

    def mark_submitted_many(self, submissions: dict[int, tuple[str, str]]) -> list[int]:
        """Record many admitted jobs as accepted by their backends: {job id: (external id,
        message)}. The same edge as Job.mark_submitted (admitted → submitted, guarded by the
        current state, an event each) in a fixed number of statements. Returns the ids actually
        moved: a job cancelled meanwhile is left alone."""
        from django.db import transaction
        from django.utils import timezone

        from .choices import EventKind, JobState
        from .models import JobEvent

        if not submissions:
            return []
        now = timezone.now()
        with transaction.atomic(savepoint=False):
            still_admitted = set(
                self.model.objects.filter(pk__in=list(submissions), state=JobState.ADMITTED)
                .select_for_update()
                .values_list("pk", flat=True)
            )
            moved = [pk for pk in submissions if pk in still_admitted]
            if not moved:
                return []
            external_id = models.Case(
                *(models.When(pk=pk, then=models.Value(submissions[pk][0])) for pk in moved),
                output_field=models.CharField(),
            )
            self.model.objects.filter(pk__in=moved).update(
                state=JobState.SUBMITTED, external_id=external_id, submitted_at=now, updated_at=now
            )
            JobEvent.objects.bulk_create(
                JobEvent(
                    job_id=pk,
                    kind=EventKind.STATE,
                    state=JobState.SUBMITTED,
                    message=submissions[pk][1][:1000],
                    at=now,
                )
                for pk in moved
            )
        return moved

    def gpus_in_use(self) -> int:
        return self.holding().aggregate(total=models.Sum("gpu_count"))["total"] or 0
