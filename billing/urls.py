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
    path("prices/<int:pk>/", views.rate_card, name="rate-card"),
    path("prices/<int:pk>/delete/", views.rate_card_delete, name="rate-card-delete"),
    path("credits/", views.credits, name="credits"),
    path("lines/<int:pk>/correct/", views.correct, name="correct"),
    path("invoices/", views.invoices, name="invoices"),
    path("invoices/<slug:account>/<str:month>/", views.invoice, name="invoice"),
    path("invoices/<slug:account>/<str:month>/pdf/", views.invoice_pdf, name="invoice-pdf"),
    path("invoices/<slug:account>/<str:month>/focus/", views.invoice_focus, name="invoice-focus"),
]
