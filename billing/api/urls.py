from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import ChargebackView, CreditView, InvoiceViewSet, RateCardViewSet, UsageViewSet

router = SimpleRouter()
router.register("rate-cards", RateCardViewSet)
router.register("usage", UsageViewSet)
router.register("invoices", InvoiceViewSet, basename="api-invoice")

urlpatterns = [
    path("reports/chargeback/", ChargebackView.as_view(), name="api-chargeback"),
    path("credits/", CreditView.as_view(), name="api-credits"),
    *router.urls,
]
