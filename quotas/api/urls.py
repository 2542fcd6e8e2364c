from __future__ import annotations

from rest_framework.routers import SimpleRouter

from .views import BudgetViewSet, QuotaViewSet

router = SimpleRouter()
router.register("quotas", QuotaViewSet)
router.register("budgets", BudgetViewSet)

urlpatterns = router.urls
