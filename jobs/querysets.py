from __future__ import annotations

from django.db import models
from django.db.models import functions  # noqa: F401 - models.functions below

from factory.choices import Role

from .choices import ACTIVE_STATES, AT_BACKEND_STATES, HOLDING_STATES


class JobQuerySet(models.QuerySet):
    def visible_to(self, user) -> JobQuerySet:
        """The one place that decides whose jobs a user may see: staff all, others their tenants'."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(tenant__memberships__user=user)

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

    def gpus_in_use(self) -> int:
        return self.holding().aggregate(total=models.Sum("gpu_count"))["total"] or 0
