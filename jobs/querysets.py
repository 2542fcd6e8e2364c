from __future__ import annotations

from django.db import models

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

    def gpus_in_use(self) -> int:
        return self.holding().aggregate(total=models.Sum("gpu_count"))["total"] or 0
