from __future__ import annotations

from auditlog.models import LogEntry
from axes.helpers import get_cool_off, get_lockout_message
from django.contrib.auth import authenticate, user_logged_in
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from factory import audit, hierarchy, members
from factory.filtersets import AuditFilterSet
from factory.models import ApiToken, Cluster, GpuType, Membership, Pool, Tenant
from factory.roles import VIEW_AUDIT_TRAIL
from factory.signals import blockers

from .exceptions import Conflict
from .permissions import HasPermission, ModelPermissionsOrReadOnly
from .schema import ErrorDetail
from .serializers import (
    AuditEntrySerializer,
    ClusterSerializer,
    GpuTypeSerializer,
    IssuedTokenSerializer,
    MembershipSerializer,
    PoolSerializer,
    TenantSerializer,
    TokenCredentialsSerializer,
)
from .viewsets import GLOBAL, ScopedModelViewSet, ScopedReadOnlyViewSet

# What a slug or a username may hold (the default, "[^/.]+", would let a NUL character reach the
# database, which refuses it: a server error instead of a 404).
SLUG_PATTERN = "[a-z0-9-]+"
USERNAME_PATTERN = r"[\w.@+-]+"


class TokenView(APIView):
    """POST a username and password (and optionally a name and a lifetime in days), get a new
    token for `Authorization: Token <token>`. The token is shown this once; list and revoke your
    tokens at /account/tokens/. Failed attempts count towards the same lockout as the login page
    (per username and client address)."""

    authentication_classes = []  # the credentials are in the body
    permission_classes = [permissions.AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"

    # 400 (wrong credentials, bad input) and 429 (throttled, or locked out) as everywhere: api.schema.
    @extend_schema(request=TokenCredentialsSerializer, responses={200: IssuedTokenSerializer}, auth=[])
    def post(self, request):
        serializer = TokenCredentialsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # django-axes counts the failure (or refuses a locked-out sign-in) inside authenticate().
        user = authenticate(request, username=data["username"], password=data["password"])
        if user is None:
            if getattr(request, "axes_locked_out", False):
                cool_off = get_cool_off(request)
                return Response(
                    {"detail": get_lockout_message()},
                    status=status.HTTP_429_TOO_MANY_REQUESTS,
                    headers={"Retry-After": str(int(cool_off.total_seconds()))} if cool_off else None,
                )
            raise ValidationError({"non_field_errors": ["Unable to log in with provided credentials."]})
        user_logged_in.send(sender=type(user), request=request, user=user)  # resets the failure count
        with audit.acting(user):  # signed in by this very request: the trail names them
            token, key = ApiToken.issue(user, name=data["name"], days=data.get("expires_in_days"))
        return Response(
            IssuedTokenSerializer({"token": key, "name": token.name, "expires_at": token.expires_at}).data
        )


class TenantViewSet(ScopedModelViewSet):
    """Organisations, departments and projects (`parent`: the tenant above). Platform admins
    create, move and delete them; members read theirs, admins also the tenants below theirs. A
    tenant with tenants below it, jobs or ledger lines is not deleted (409)."""

    queryset = Tenant.objects.all()
    serializer_class = TenantSerializer
    permission_classes = [ModelPermissionsOrReadOnly]
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "slug"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_create(self, serializer):
        with transaction.atomic():
            hierarchy.hierarchy_lock()
            serializer.save()

    def perform_update(self, serializer):
        # Checked again under the lock: a move made meanwhile could close a loop with this one.
        with transaction.atomic():
            hierarchy.hierarchy_lock()
            if "parent" in serializer.validated_data:
                try:
                    hierarchy.check_parent(serializer.instance, serializer.validated_data["parent"])
                except DjangoValidationError as exc:
                    raise ValidationError(exc.message_dict) from None
            serializer.save()

    @extend_schema(responses={204: None, 409: ErrorDetail})
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance):
        try:
            hierarchy.delete(instance)
        except DjangoValidationError as exc:
            raise Conflict(" ".join(exc.messages)) from None


class IsTenantAdmin(permissions.BasePermission):
    """Members read their tenant's members; tenant admins and platform admins change them."""

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return members.may_manage(request.user, view.tenant)


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

    def perform_update(self, serializer):
        role = serializer.validated_data.get("role")
        if role is not None and role != serializer.instance.role:
            self._check(serializer.instance, new_role=role)
        serializer.save()

    def perform_destroy(self, instance):
        self._check(instance, removing=True)
        instance.delete()

    def _check(self, membership, **change) -> None:
        try:
            members.check_change(membership, self.request.user, **change)
        except DjangoValidationError as exc:
            raise ValidationError({"detail": exc.messages}) from None


class GpuTypeViewSet(ScopedModelViewSet):
    scoping = GLOBAL
    queryset = GpuType.objects.all()
    serializer_class = GpuTypeSerializer
    permission_classes = [ModelPermissionsOrReadOnly]
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "slug"


class ClusterViewSet(ScopedModelViewSet):
    scoping = GLOBAL
    queryset = Cluster.objects.prefetch_related("pools__gpu_type")
    serializer_class = ClusterSerializer
    permission_classes = [ModelPermissionsOrReadOnly]
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "slug"


class PoolViewSet(ScopedModelViewSet):
    """A cluster's pools, by GPU type: every signed-in user reads them (as the cluster), platform
    admins create, change and delete them. A pool whose GPUs jobs hold is not deleted (409)."""

    scoping = GLOBAL
    queryset = Pool.objects.select_related("gpu_type")  # and narrowed to the URL's cluster
    serializer_class = PoolSerializer
    permission_classes = [ModelPermissionsOrReadOnly]
    lookup_field = "gpu_type__slug"
    lookup_url_kwarg = "gpu_type"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "id"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @property
    def cluster(self) -> Cluster:
        if not hasattr(self, "_cluster"):
            self._cluster = get_object_or_404(Cluster, slug=self.kwargs["cluster_slug"])
        return self._cluster

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no cluster
            return self.queryset.none()
        return super().get_queryset().filter(cluster=self.cluster)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["cluster"] = self.cluster
        return context

    def perform_create(self, serializer):
        serializer.save(cluster=self.cluster)

    @extend_schema(responses={204: None, 409: ErrorDetail})
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance):
        reasons = blockers(Pool, [instance.pk]).get(instance.pk)
        if reasons:
            raise Conflict(f"Still in use by {', '.join(reasons)}; it cannot be deleted.")
        instance.delete()


class AuditLogViewSet(ScopedReadOnlyViewSet):
    """The audit trail: every administrative change, newest first, for platform admins and
    auditors; filtered as on /audit/ (which also exports it as CSV)."""

    scoping = GLOBAL  # no tenant's: the permission decides
    queryset = LogEntry.objects.select_related("actor", "content_type")
    serializer_class = AuditEntrySerializer
    permission_classes = [HasPermission]
    required_permission = VIEW_AUDIT_TRAIL
    filterset_class = AuditFilterSet
    cursor_ordering = "-timestamp"
