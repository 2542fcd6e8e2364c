"""A cluster's GPU telemetry source over the API: platform admins only (to anyone else the fleet
does not exist, as on its pages)."""

from __future__ import annotations

import django_filters
from django.http import Http404
from django.shortcuts import get_object_or_404
from rest_framework import generics, permissions

from factory.api.viewsets import GLOBAL, ScopedViewSetMixin
from factory.models import Cluster

from ..choices import Health
from ..models import ClusterTelemetry, Gpu, HealthEvent, HealthEventKind
from .serializers import GpuSerializer, HealthEventSerializer, TelemetrySerializer


class IsPlatformAdmin(permissions.BasePermission):
    """Reads: whoever sees the fleet (platform admins and auditors); to anyone else it does not
    exist. Writes: whoever may change a cluster's telemetry source (platform admins)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if not request.user.has_perm("fleet.view_node"):
            raise Http404
        return request.method in permissions.SAFE_METHODS or request.user.has_perm(
            "fleet.change_clustertelemetry"
        )


class TelemetryView(ScopedViewSetMixin, generics.RetrieveUpdateAPIView):
    """GET the cluster's telemetry source; PUT or PATCH to change it (`embedded`: the portal scrapes
    each node's exporter; `prometheus`: it asks the site's Prometheus)."""

    scoping = GLOBAL  # the platform's own settings, for platform admins alone (the permission)
    queryset = ClusterTelemetry.objects.all()
    serializer_class = TelemetrySerializer
    permission_classes = [IsPlatformAdmin]

    def get_object(self) -> ClusterTelemetry:
        cluster = get_object_or_404(Cluster, slug=self.kwargs["slug"])
        found = ClusterTelemetry.objects.filter(cluster=cluster).first()
        return found or ClusterTelemetry(cluster=cluster)  # saved on the first change


class GpuFilterSet(django_filters.FilterSet):
    node = django_filters.CharFilter(field_name="node__name", label="Node name")
    health = django_filters.ChoiceFilter(choices=Health.choices)
    drained = django_filters.BooleanFilter(field_name="drained_by_portal", label="Drained by the portal")

    class Meta:
        model = Gpu
        fields = ["node", "health", "drained"]


class HealthEventFilterSet(django_filters.FilterSet):
    node = django_filters.CharFilter(field_name="node__name", label="Node name")
    gpu_uuid = django_filters.CharFilter(label="GPU UUID")
    kind = django_filters.ChoiceFilter(choices=HealthEventKind.choices)
    since = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte", label="At or after")

    class Meta:
        model = HealthEvent
        fields = ["node", "gpu_uuid", "kind", "since"]


class ClusterFleetView(ScopedViewSetMixin, generics.ListAPIView):
    """A read-only list of one cluster's fleet, for whoever sees the fleet (the permission)."""

    scoping = GLOBAL  # the platform's own hardware, for platform admins and auditors alone
    permission_classes = [IsPlatformAdmin]

    def get_queryset(self):
        cluster = get_object_or_404(Cluster, slug=self.kwargs["slug"])
        return super().get_queryset().filter(cluster=cluster)


class GpuListView(ClusterFleetView):
    """The cluster's GPUs with their health, drain and latest sample; `?health=failed`,
    `?drained=true`, `?node=<name>`."""

    queryset = Gpu.objects.select_related("node", "gpu_type")
    serializer_class = GpuSerializer
    filterset_class = GpuFilterSet
    cursor_ordering = "id"


class HealthEventListView(ClusterFleetView):
    """The cluster's hardware history, newest first: health changes of GPUs and exporters, drains
    and resumes by the portal; `?node=`, `?gpu_uuid=`, `?kind=`, `?since=<ISO time>`."""

    queryset = HealthEvent.objects.select_related("node", "gpu")
    serializer_class = HealthEventSerializer
    filterset_class = HealthEventFilterSet
    cursor_ordering = "-id"
