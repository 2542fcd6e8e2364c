from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from factory.api.exceptions import Conflict
from factory.api.permissions import HasPermission, ModelPermissions
from factory.api.schema import ErrorDetail
from factory.api.viewsets import GLOBAL, ScopedModelViewSet, ScopedReadOnlyViewSet
from factory.months import MONTH_HELP, MONTH_SCHEMA, parse_month

from .. import reports
from ..credits import correct_line, grant_credit
from ..filtersets import InvoiceFilterSet, UsageRecordFilterSet
from ..models import Invoice, MonthClose, RateCard, UsageRecord
from ..permissions import SET_PRICES, BillingAccess
from ..views import EXPORT_FORMATS, XLSX_CONTENT_TYPE, export_response, focus_response, pdf_response
from .serializers import (
    CorrectionSerializer,
    CreditSerializer,
    InvoiceSerializer,
    NewPriceSerializer,
    RateCardSerializer,
    UsageRecordSerializer,
)


def refused(exc: DjangoValidationError) -> ValidationError:
    """A refusal of the billing rules, as the API's field errors."""
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages})


def month_param(request):
    try:
        return parse_month(request.query_params.get("month"))
    except ValueError as exc:
        raise ValidationError({"month": [str(exc)]}) from None


class ChargebackView(APIView):
    """The month's chargeback report: JSON, or a CSV / XLSX / FOCUS file."""

    permission_classes = [BillingAccess]

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
    """Prices. Whoever reads billing reads them; finance sets them. A price that has billed usage
    is never changed (400, per field) or deleted (409), only ended after its last billed day: a
    new price is a new card from a date (`replace`)."""

    scoping = GLOBAL
    queryset = RateCard.objects.select_related("gpu_type", "cluster", "billing_account")
    serializer_class = RateCardSerializer
    permission_classes = [ModelPermissions]
    cursor_ordering = "id"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    required_permission = SET_PRICES  # `replace` adds a card and ends one

    def get_serializer(self, *args, **kwargs):
        cards = args[0] if args else None
        if kwargs.get("many") and cards is not None:
            cards = list(cards)
            billed = RateCard.objects.filter(pk__in=[c.pk for c in cards]).billed_through()
            kwargs.setdefault("context", self.get_serializer_context())["billed_through"] = billed
            args = (cards, *args[1:])
        return super().get_serializer(*args, **kwargs)

    @extend_schema(responses={204: None, 409: ErrorDetail})
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance):
        try:
            instance.delete()
        except DjangoValidationError as exc:
            raise Conflict(" ".join(exc.messages)) from None

    @extend_schema(request=NewPriceSerializer, responses={201: RateCardSerializer})
    @action(detail=True, methods=["post"], permission_classes=[HasPermission])
    def replace(self, request, pk=None):
        """A new price from a date: this card ends that day (refused on a day it already billed)
        and a new one, the same but for its prices, starts then."""
        card = self.get_object()
        body = NewPriceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        try:
            new = card.supersede(data.pop("effective_from"), **data)
        except DjangoValidationError as exc:
            raise refused(exc) from None
        return Response(
            RateCardSerializer(new, context={"request": request}).data, status=status.HTTP_201_CREATED
        )


class UsageViewSet(ScopedReadOnlyViewSet):
    """The usage ledger: finance sees every line, members their tenants'."""

    queryset = UsageRecord.objects.select_related("tenant", "cluster", "gpu_type")
    serializer_class = UsageRecordSerializer
    permission_classes = [IsAuthenticated]
    filterset_class = UsageRecordFilterSet
    cursor_ordering = "id"

    @extend_schema(request=CorrectionSerializer, responses={201: UsageRecordSerializer})
    @action(detail=True, methods=["post"], permission_classes=[BillingAccess])
    def correct(self, request, pk=None):
        """Correct a line of a closed month: a new line of the difference, naming it."""
        line = self.get_object()
        body = CorrectionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            fix = correct_line(
                line, data["amount"], data["reason"], request.user, gpu_hours=data.get("gpu_hours")
            )
        except DjangoValidationError as exc:
            raise refused(exc) from None
        return Response(UsageRecordSerializer(fix).data, status=status.HTTP_201_CREATED)


class CreditView(APIView):
    """Finance grants a tenant a credit for a month: a new ledger line, billed in the first open
    month. Refused when it exceeds what the month billed."""

    permission_classes = [BillingAccess]

    @extend_schema(request=CreditSerializer, responses={201: UsageRecordSerializer})
    def post(self, request):
        body = CreditSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            line = grant_credit(
                data["tenant"],
                data["month"],
                data["reason"],
                request.user,
                amount=data.get("amount"),
                gpu_hours=data.get("gpu_hours"),
                gpu_type=data.get("gpu_type"),
                currency=(data.get("currency") or "").upper(),
            )
        except DjangoValidationError as exc:
            raise refused(exc) from None
        return Response(UsageRecordSerializer(line).data, status=status.HTTP_201_CREATED)


INVOICE_NUMBER = OpenApiParameter(
    "number", int, OpenApiParameter.PATH, description="The invoice's number (42 for INV-000042)."
)


@extend_schema_view(
    retrieve=extend_schema(parameters=[INVOICE_NUMBER]),
    pdf=extend_schema(parameters=[INVOICE_NUMBER]),
    focus=extend_schema(parameters=[INVOICE_NUMBER]),
)
class InvoiceViewSet(ScopedReadOnlyViewSet):
    """Invoices issued at month close, one per billing account and month: finance (and platform
    admins) see every one, a billing account's admins their own; anyone else's is a 404."""

    queryset = Invoice.objects.select_related("billing_account").prefetch_related("lines")
    serializer_class = InvoiceSerializer
    filterset_class = InvoiceFilterSet
    lookup_field = "number"
    lookup_value_regex = r"[0-9]+"
    cursor_ordering = "-number"

    @extend_schema(responses={200: InvoiceSerializer(many=True), 409: ErrorDetail})
    def list(self, request, *args, **kwargs):
        """Invoices, newest first. Asked for a month that is not closed, the answer is 409: its
        invoices are issued at its close."""
        filters = self.filterset_class(request.query_params, queryset=self.get_queryset())
        month = filters.form.cleaned_data.get("month") if filters.is_valid() else None
        if month and not MonthClose.objects.filter(month=month).exists():
            raise Conflict(f"{month:%B %Y} is not closed: its invoices are issued at the close.")
        return super().list(request, *args, **kwargs)

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"], url_path="pdf", url_name="pdf")
    def pdf(self, request, number=None):
        """The invoice as PDF."""
        return pdf_response(self.get_object())

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"], url_path="focus", url_name="focus")
    def focus(self, request, number=None):
        """The FOCUS 1.2 rows that make up the invoice (CSV); their BilledCost adds up to its totals."""
        return focus_response(self.get_object())

    def perform_content_negotiation(self, request, force=False):
        # The PDF and CSV are files these actions return themselves; errors stay JSON.
        return super().perform_content_negotiation(request, force=True)
