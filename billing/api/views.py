from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from factory.api.viewsets import GLOBAL, ScopedModelViewSet, ScopedReadOnlyViewSet
from factory.months import MONTH_HELP, MONTH_SCHEMA, parse_month

from .. import reports
from ..filtersets import UsageRecordFilterSet
from ..models import RateCard, UsageRecord
from ..permissions import IsFinance
from ..views import EXPORT_FORMATS, XLSX_CONTENT_TYPE, export_response
from .serializers import RateCardSerializer, UsageRecordSerializer


def month_param(request):
    try:
        return parse_month(request.query_params.get("month"))
    except ValueError as exc:
        raise ValidationError({"month": [str(exc)]}) from None


class ChargebackView(APIView):
    """The month's chargeback report: JSON, or a CSV / XLSX / FOCUS file."""

    permission_classes = [IsFinance]

    @extend_schema(
        parameters=[
            OpenApiParameter("month", MONTH_SCHEMA, description=f"{MONTH_HELP} Default: this month."),
            OpenApiParameter("format", str, enum=["json", *EXPORT_FORMATS]),
        ],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/csv"): OpenApiTypes.STR,  # csv and focus
            (200, XLSX_CONTENT_TYPE): OpenApiTypes.BINARY,
        },
    )
    def get(self, request):
        month = month_param(request)
        fmt = request.query_params.get("format", "json")
        if fmt == "json":
            return Response(reports.chargeback(month).as_json())
        if fmt not in EXPORT_FORMATS:
            raise ValidationError({"format": [f"Use one of json, {', '.join(EXPORT_FORMATS)}."]})
        return export_response(month, fmt)

    def perform_content_negotiation(self, request, force=False):
        # ?format=csv|xlsx|focus name files this view returns itself, not DRF renderers.
        return super().perform_content_negotiation(request, force=True)


class RateCardViewSet(ScopedModelViewSet):
    """Prices. Finance and platform admins set them; a change never rewrites past charges."""

    scoping = GLOBAL
    queryset = RateCard.objects.select_related("gpu_type", "cluster")
    serializer_class = RateCardSerializer
    permission_classes = [IsFinance]
    cursor_ordering = "id"
    http_method_names = ["get", "post", "patch", "head", "options"]


class UsageViewSet(ScopedReadOnlyViewSet):
    """The usage ledger: finance sees every line, members their tenants'."""

    queryset = UsageRecord.objects.select_related("tenant", "cluster", "gpu_type")
    serializer_class = UsageRecordSerializer
    permission_classes = [IsAuthenticated]
    filterset_class = UsageRecordFilterSet
    cursor_ordering = "id"
