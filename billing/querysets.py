from __future__ import annotations

from factory.querysets import TenantOwnedQuerySet


class UsageRecordQuerySet(TenantOwnedQuerySet):
    def sees_everything(self, user) -> bool:
        """Finance (and platform admins) see every ledger line."""
        from .permissions import is_finance

        return is_finance(user)

    def for_month(self, month) -> UsageRecordQuerySet:
        return self.filter(month=month)
