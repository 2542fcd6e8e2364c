from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from factory.api.permissions import ModelPermissionsOrReadOnly
from factory.api.views import SLUG_PATTERN
from factory.api.viewsets import ScopedModelViewSet
from jobs.api.serializers import JobCreateSerializer
from jobs.api.views import validated_spec

from .. import estimate
from ..editing import delete_audited, save_audited
from ..filtersets import QuotaFilterSet
from ..models import Budget, Quota
from ..usage import usage_for
from .serializers import BudgetSerializer, EstimateSerializer, QuotaSerializer


class AuditedSaveMixin:
    """Writes go through the audited save (validated by the model, logged, followed by admission)."""

    def perform_create(self, serializer):
        serializer.instance = self._save(serializer.Meta.model(), serializer.validated_data)

    def perform_update(self, serializer):
        self._save(serializer.instance, serializer.validated_data)

    def _save(self, instance, data):
        try:
            save_audited(instance, data, self.request.user)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return instance


class QuotaViewSet(AuditedSaveMixin, ScopedModelViewSet):
    """GPU quotas per tenant and GPU type. Platform admins write; members read their tenant's."""

    queryset = Quota.objects.select_related("tenant", "gpu_type")
    serializer_class = QuotaSerializer
    permission_classes = [ModelPermissionsOrReadOnly]
    filterset_class = QuotaFilterSet
    cursor_ordering = "id"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_destroy(self, instance):
        try:
            delete_audited(instance, self.request.user)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None

    def get_serializer(self, *args, **kwargs):
        instances = args[0] if args else None
        if instances is not None and not isinstance(instances, dict):
            quotas = list(instances) if kwargs.get("many") else [instances]
            kwargs.setdefault("context", self.get_serializer_context())["usage"] = usage_for(quotas)
        return super().get_serializer(*args, **kwargs)


class BudgetViewSet(AuditedSaveMixin, ScopedModelViewSet):
    """Monthly GPU-hour budgets (hard or soft) and the highest job priority per tenant."""

    queryset = Budget.objects.select_related("tenant")
    serializer_class = BudgetSerializer
    permission_classes = [ModelPermissionsOrReadOnly]
    lookup_field = "tenant__slug"
    lookup_url_kwarg = "tenant"
    lookup_value_regex = SLUG_PATTERN
    cursor_ordering = "id"
    http_method_names = ["get", "post", "patch", "head", "options"]


class EstimateView(APIView):
    """POST a job spec (as for `jobs/`): its cost at the time limit, what it does to the tenant's
    budget, whether admission would place it now, and how long similar jobs waited lately. Nothing
    is created. A spec the submission would refuse gets the same field errors."""

    @extend_schema(request=JobCreateSerializer, responses={200: EstimateSerializer})
    def post(self, request):
        tenant, spec = validated_spec(request)
        try:
            result = estimate.estimate(tenant, request.user, spec)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return Response(EstimateSerializer(result.as_dict()).data)
