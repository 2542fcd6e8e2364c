from __future__ import annotations

from datetime import date

from django.db import models

from factory.querysets import TenantOwnedQuerySet, sees_all_of


class RateCardQuerySet(models.QuerySet):
    def billed_through(self) -> dict[int, date]:
        """The last day each of these cards priced a ledger line on (a line is priced by the
        card in force on its start day, UTC), by card id; cards never billed are left out. One
        query, however many cards."""
        from .models import UsageRecord

        rows = (
            UsageRecord.objects.filter(rate_card__in=self.values("pk"))
            .values("rate_card")
            .annotate(last=models.Max("period_start"))
        )
        return {row["rate_card"]: row["last"].date() for row in rows}


class UsageRecordQuerySet(TenantOwnedQuerySet):
    """Finance, auditors and platform admins see every ledger line (billing.view_usagerecord)."""

    def for_month(self, month) -> UsageRecordQuerySet:
        return self.filter(month=month)


class InvoiceQuerySet(models.QuerySet):
    def visible_to(self, user) -> InvoiceQuerySet:
        """Whoever may view every invoice (finance, auditors, platform admins) sees every invoice;
        a billing account's admins its own."""
        from .permissions import administered

        if not user.is_authenticated:
            return self.none()
        if sees_all_of(user, self.model):
            return self
        return self.filter(billing_account__in=administered(user))
