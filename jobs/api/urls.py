from __future__ import annotations

from rest_framework.routers import SimpleRouter

from .views import JobArrayViewSet, JobViewSet

router = SimpleRouter()
router.register("jobs", JobViewSet)
router.register("arrays", JobArrayViewSet)

urlpatterns = router.urls
