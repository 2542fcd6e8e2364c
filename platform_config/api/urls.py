from __future__ import annotations

from django.urls import path

from .views import PlanView, SchemaView

urlpatterns = [
    path("platform/plan/", PlanView.as_view(), name="api-platform-plan"),
    path("platform/schema/", SchemaView.as_view(), name="api-platform-schema"),
]
