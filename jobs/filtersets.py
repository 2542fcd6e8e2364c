from __future__ import annotations

import django_filters

from factory.models import Cluster, GpuType, Tenant

from .choices import JobState
from .models import Job, JobArray


def _tenants(request):
    # Another tenant's slug must look exactly like one that does not exist.
    return Tenant.objects.visible_to(request.user) if request else Tenant.objects.none()


class JobFilterSet(django_filters.FilterSet):
    """Shared by the API and the job list page."""

    tenant = django_filters.ModelChoiceFilter(
        field_name="tenant", to_field_name="slug", queryset=lambda request: _tenants(request)
    )
    state = django_filters.MultipleChoiceFilter(choices=JobState.choices)
    gpu_type = django_filters.ModelChoiceFilter(
        field_name="gpu_type",
        to_field_name="slug",
        queryset=GpuType.objects.all(),
        label="GPU type",
        empty_label="any",
    )
    cluster = django_filters.ModelChoiceFilter(
        field_name="cluster", to_field_name="slug", queryset=Cluster.objects.all()
    )
    owner = django_filters.CharFilter(field_name="owner__username", label="Owner (username)")
    mine = django_filters.BooleanFilter(method="filter_mine", label="Only my jobs")
    array = django_filters.NumberFilter(field_name="array_id", label="Tasks of the array")

    class Meta:
        model = Job
        fields = ["tenant", "state", "gpu_type", "cluster", "owner", "array"]

    def filter_mine(self, queryset, name, value):
        return queryset.filter(owner=self.request.user) if value and self.request else queryset


class JobArrayFilterSet(django_filters.FilterSet):
    tenant = django_filters.ModelChoiceFilter(
        field_name="tenant", to_field_name="slug", queryset=lambda request: _tenants(request)
    )
    owner = django_filters.CharFilter(field_name="owner__username", label="Owner (username)")
    mine = django_filters.BooleanFilter(method="filter_mine", label="Only my arrays")

    class Meta:
        model = JobArray
        fields = ["tenant", "owner"]

    def filter_mine(self, queryset, name, value):
        return queryset.filter(owner=self.request.user) if value and self.request else queryset
