from __future__ import annotations

from django.urls import path

from .views import GpuListView, HealthEventListView, TelemetryView

urlpatterns = [
    path("clusters/<slug:slug>/telemetry/", TelemetryView.as_view(), name="api-cluster-telemetry"),
    path("clusters/<slug:slug>/gpus/", GpuListView.as_view(), name="api-cluster-gpus"),
    path(
        "clusters/<slug:slug>/health-events/", HealthEventListView.as_view(), name="api-cluster-health-events"
    ),
]
