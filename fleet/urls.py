from __future__ import annotations

from django.urls import path

from . import views

app_name = "fleet"
urlpatterns = [
    path("<slug:slug>/fleet/", views.cluster_fleet, name="cluster"),
    path("<slug:slug>/nodes/<str:name>/", views.node_detail, name="node"),
]
