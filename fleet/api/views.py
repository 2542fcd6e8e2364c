"""A cluster's GPU telemetry source over the API: platform admins only (to anyone else the fleet
does not exist, as on its pages)."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import get_object_or_404
from rest_framework import generics, permissions

from factory.api.viewsets import GLOBAL, ScopedViewSetMixin
from factory.models import Cluster

from ..models import ClusterTelemetry
from .serializers import TelemetrySerializer


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
