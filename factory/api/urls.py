from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("tenants", views.TenantViewSet)
router.register(
    r"tenants/(?P<tenant_slug>[a-z0-9-]+)/members", views.MembershipViewSet, basename="membership"
)
router.register("gpu-types", views.GpuTypeViewSet)
router.register("clusters", views.ClusterViewSet)
router.register(r"clusters/(?P<cluster_slug>[a-z0-9-]+)/pools", views.PoolViewSet, basename="pool")
router.register("audit-log", views.AuditLogViewSet, basename="audit-log")

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include(router.urls)),
]
