from __future__ import annotations

from django.contrib import admin

from factory.admin_site import ReadOnlyAdmin  # the ledger and its history are never edited by hand

from .models import BillingAccount, BudgetAlert, GridIntensity, Invoice, MonthClose, RateCard, UsageRecord


@admin.register(RateCard)
class RateCardAdmin(admin.ModelAdmin):
    """Prices. One that has billed usage is shown read only but for its end, and is not deleted:
    a new price is a new card from a date."""

    list_display = [
        "gpu_type",
        "cluster",
        "billing_account",
        "price_per_gpu_hour",
        "currency",
        "effective_from",
        "effective_until",
    ]
    list_filter = ["gpu_type", "cluster", "currency"]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.last_billed_day() is not None:
            fields += [*RateCard.BILLED_FIXED, "billed_through"]
        return fields

    @admin.display(description="Billed through")
    def billed_through(self, card: RateCard) -> str:
        last = card.last_billed_day()
        if last is None:
            return "not billed"
        return f"{last:%Y-%m-%d}: this price is never changed or deleted, only ended after that day"

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.last_billed_day() is not None:
            return False
        return super().has_delete_permission(request, obj)


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["tenant", "currency", "created_at"]


@admin.register(GridIntensity)
class GridIntensityAdmin(admin.ModelAdmin):
    list_display = ["region", "grams_co2e_per_kwh"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["id", "month", "tenant", "gpu_type", "kind", "gpu_seconds", "amount", "currency", "job"]
    list_filter = ["month", "kind", "gpu_type", "tenant"]


@admin.register(MonthClose)
class MonthCloseAdmin(ReadOnlyAdmin):
    list_display = ["month", "closed_by", "closed_at"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "month", "threshold", "sent_at", "recipients"]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "month", "account_slug", "totals", "issue_date"]
    list_filter = ["month"]
