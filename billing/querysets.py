from __future__ import annotations

from django.db import models


class UsageRecordQuerySet(models.QuerySet):
    def visible_to(self, user) -> UsageRecordQuerySet:
        """Finance and platform admins see every line; tenant members their tenants' lines."""
        from .permissions import is_finance

        if not user.is_authenticated:
            return self.none()
        if user.is_staff or is_finance(user):
            return self
        return self.filter(tenant__memberships__user=user)

    def for_month(self, month) -> UsageRecordQuerySet:
        return self.filter(month=month)
