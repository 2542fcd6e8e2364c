from __future__ import annotations

from django.contrib import admin

from .models import BillingAccount, BudgetAlert, GridIntensity, Invoice, MonthClose, RateCard, UsageRecord


@admin.register(RateCard)
class RateCardAdmin(admin.ModelAdmin):
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


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["tenant", "currency", "created_at"]


@admin.register(GridIntensity)
class GridIntensityAdmin(admin.ModelAdmin):
    list_display = ["region", "grams_co2e_per_kwh"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger and its history are never edited by hand."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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
