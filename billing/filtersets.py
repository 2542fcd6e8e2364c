from __future__ import annotations

import django_filters

from factory.filtersets import MonthFilter

from .models import Invoice, UsageKind, UsageRecord


class UsageRecordFilterSet(django_filters.FilterSet):
    month = MonthFilter()
    kind = django_filters.ChoiceFilter(choices=UsageKind.choices)

    class Meta:
        model = UsageRecord
        fields = ["month", "kind"]


class InvoiceFilterSet(django_filters.FilterSet):
    month = MonthFilter(help_text="The month invoiced, YYYY-MM: a closed month (409 otherwise).")
    account = django_filters.CharFilter(
        field_name="billing_account__slug", help_text="The billing account, by its tenant's slug."
    )

    class Meta:
        model = Invoice
        fields = ["month", "account"]
