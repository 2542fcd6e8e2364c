from __future__ import annotations

from django.urls import path

from . import views

app_name = "billing"
urlpatterns = [
    path("chargeback/", views.chargeback, name="chargeback"),
    path("chargeback/close/", views.chargeback_close, name="close"),
    path("chargeback/export/", views.chargeback_export, name="export"),
    path("chargeback/<str:month>/<slug:tenant>/<slug:gpu_type>/", views.chargeback_lines, name="lines"),
    path("prices/", views.rate_cards, name="rate-cards"),
]
