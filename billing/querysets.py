from __future__ import annotations

from django.db import models

from factory.querysets import TenantOwnedQuerySet


class UsageRecordQuerySet(TenantOwnedQuerySet):
    def sees_everything(self, user) -> bool:
        """Finance (and platform admins) see every ledger line."""
        from .permissions import is_finance

        return is_finance(user)

    def for_month(self, month) -> UsageRecordQuerySet:
        return self.filter(month=month)


class InvoiceQuerySet(models.QuerySet):
    def visible_to(self, user) -> InvoiceQuerySet:
        """Finance (and platform admins) see every invoice; a billing account's admins its own."""
        from .permissions import administered, is_finance

        if not user.is_authenticated:
            return self.none()
        if is_finance(user):
            return self
        return self.filter(billing_account__in=administered(user))
