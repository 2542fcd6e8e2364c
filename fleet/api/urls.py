from __future__ import annotations

from django.urls import path

from .views import TelemetryView

urlpatterns = [
    path("clusters/<slug:slug>/telemetry/", TelemetryView.as_view(), name="api-cluster-telemetry"),
]
