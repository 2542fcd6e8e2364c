from __future__ import annotations

import django_filters

from .models import Quota


class QuotaFilterSet(django_filters.FilterSet):
    tenant = django_filters.CharFilter(field_name="tenant__slug")
    gpu_type = django_filters.CharFilter(field_name="gpu_type__slug", label="GPU type")

    class Meta:
        model = Quota
        fields = ["tenant", "gpu_type"]
