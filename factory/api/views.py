from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import permissions
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.throttling import ScopedRateThrottle

from factory.choices import Role
from factory.models import Cluster, GpuType, Membership, Tenant

from .permissions import IsStaffOrReadOnly
from .serializers import ClusterSerializer, GpuTypeSerializer, MembershipSerializer, TenantSerializer
from .viewsets import GLOBAL, ScopedModelViewSet

# What a slug or a username may hold (the default, "[^/.]+", would let a NUL character reach the
# database, which refuses it: a server error instead of a 404).
SLUG_PATTERN = "[a-z0-9-]+"
USERNAME_PATTERN = r"[\w.@+-]+"


class TokenView(ObtainAuthToken):
    """POST username and password, get {"token": ...} for `Authorization: Token <token>`."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"


class TenantViewSet(ScopedModelViewSet):
    queryset = Tenant.objects.all()
    serializer_class = TenantSerializer
    permission_classes = [IsStaffOrReadOnly]
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "slug"
    http_method_names = ["get", "post", "patch", "head", "options"]


class IsTenantAdmin(permissions.BasePermission):
    """Members read their tenant's members; tenant admins and platform admins change them."""

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        user = request.user
        return user.is_staff or view.tenant.memberships.filter(user=user, role=Role.ADMIN).exists()


class MembershipViewSet(ScopedModelViewSet):
    queryset = Membership.objects.select_related("user__identity")  # and narrowed to the URL's tenant
    serializer_class = MembershipSerializer
    permission_classes = [permissions.IsAuthenticated, IsTenantAdmin]
    lookup_field = "user__username"
    lookup_url_kwarg = "username"
    lookup_value_regex = USERNAME_PATTERN
    cursor_ordering = "id"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @property
    def tenant(self) -> Tenant:
        if not hasattr(self, "_tenant"):
            self._tenant = get_object_or_404(
                Tenant.objects.visible_to(self.request.user), slug=self.kwargs["tenant_slug"]
            )
        return self._tenant

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no tenant
            return self.queryset.none()
        return super().get_queryset().filter(tenant=self.tenant)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "tenant": self.tenant}

    def perform_create(self, serializer):
        serializer.save(tenant=self.tenant)


class GpuTypeViewSet(ScopedModelViewSet):
    scoping = GLOBAL
    queryset = GpuType.objects.all()
    serializer_class = GpuTypeSerializer
    permission_classes = [IsStaffOrReadOnly]
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "slug"


class ClusterViewSet(ScopedModelViewSet):
    scoping = GLOBAL
    queryset = Cluster.objects.prefetch_related("pools__gpu_type")
    serializer_class = ClusterSerializer
    permission_classes = [IsStaffOrReadOnly]
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "slug"
