from __future__ import annotations

from datetime import date

from django.db import models

from factory.querysets import TenantOwnedQuerySet


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
