from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import BudgetViewSet, EstimateView, QuotaViewSet

router = SimpleRouter()
router.register("quotas", QuotaViewSet)
router.register("budgets", BudgetViewSet)

urlpatterns = [
    path("jobs/estimate/", EstimateView.as_view(), name="job-estimate"),
    *router.urls,
]
