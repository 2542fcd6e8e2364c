from __future__ import annotations

import django_filters

from factory.filtersets import MonthFilter

from .models import UsageKind, UsageRecord


class UsageRecordFilterSet(django_filters.FilterSet):
    month = MonthFilter()
    kind = django_filters.ChoiceFilter(choices=UsageKind.choices)

    class Meta:
        model = UsageRecord
        fields = ["month", "kind"]
