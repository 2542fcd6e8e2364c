from __future__ import annotations

from datetime import date

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from rest_framework import serializers

from factory.api.serializers import SlugRelatedField, StrictFieldsMixin
from factory.models import Cluster, GpuType, Tenant

from ..models import Invoice, InvoiceLine, RateCard, UsageRecord


class RateCardSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    gpu_type = SlugRelatedField(
        slug_field="slug",
        queryset=GpuType.objects.all(),
        error_messages={"does_not_exist": "Unknown GPU type {value}."},
    )
    cluster = SlugRelatedField(
        slug_field="slug", queryset=Cluster.objects.all(), required=False, allow_null=True
    )
    billing_account = SlugRelatedField(
        slug_field="slug", queryset=Tenant.objects.all(), required=False, allow_null=True
    )

    class Meta:
        model = RateCard
        fields = ["id", *RateCard.EDITABLE, "created_at", "billed_through"]
        read_only_fields = ["created_at"]

    billed_through = serializers.SerializerMethodField(
        help_text="The last day this price billed usage on; null if never. A billed price is never "
        "changed or deleted, only ended after that day: a new price is a new card (`replace`)."
    )

    def get_billed_through(self, card) -> date | None:
        known: dict[int, date] | None = self.context.get("billed_through")
        return known.get(card.pk) if known is not None else card.last_billed_day()

    def validate(self, attrs):
        """The model's own rules, a billed card's included (factory of truth: RateCard.clean)."""
        card = RateCard(**{**({} if self.instance is None else _fields(self.instance)), **attrs})
        if self.instance is not None:
            card.pk = self.instance.pk
            card._state.adding = False  # the stored card itself, not a second one with its id
        try:
            card.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class NewPriceSerializer(StrictFieldsMixin, serializers.Serializer):
    """A new price from a date for a card, which ends that day."""

    effective_from = serializers.DateField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4, min_value=0)
    price_per_cpu_core_hour = serializers.DecimalField(
        max_digits=12,
        decimal_places=4,
        min_value=0,
        required=False,
        help_text="Default: the replaced card's.",
    )
    price_per_memory_gb_hour = serializers.DecimalField(
        max_digits=12,
        decimal_places=4,
        min_value=0,
        required=False,
        help_text="Default: the replaced card's.",
    )


def _fields(card: RateCard) -> dict:
    return {
        f.name: getattr(card, f.name)
        for f in RateCard._meta.concrete_fields
        if f.name not in ("id", "created_at")
    }


class UsageRecordSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    cluster = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    gpu_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = UsageRecord
        fields = [
            "id",
            "job",
            "attempt",
            "kind",
            "month",
            "period_start",
            "period_end",
            "tenant",
            "cost_center",
            "cluster",
            "gpu_type",
            "gpus",
            "gpu_seconds",
            "rate_card",
            "currency",
            "amount",
            "energy_kwh",
            "energy_measured",
            "co2e_kg",
            "note",
            "corrects",
            "created_by",
        ]
        read_only_fields = fields


class MonthField(serializers.CharField):
    def to_internal_value(self, data):
        from factory.months import parse_month

        value = super().to_internal_value(data)
        try:
            return parse_month(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class CreditSerializer(StrictFieldsMixin, serializers.Serializer):
    """A credit finance grants: an amount, or GPU-hours of a GPU type, for a tenant and a month."""

    tenant = SlugRelatedField(slug_field="slug", queryset=Tenant.objects.all())
    month = MonthField(help_text="The month credited, YYYY-MM.")
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, required=False, allow_null=True)
    gpu_hours = serializers.DecimalField(max_digits=12, decimal_places=4, required=False, allow_null=True)
    gpu_type = SlugRelatedField(
        slug_field="slug", queryset=GpuType.objects.all(), required=False, allow_null=True
    )
    currency = serializers.CharField(max_length=3, required=False, allow_blank=True)
    reason = serializers.CharField(max_length=300)


class CorrectionSerializer(StrictFieldsMixin, serializers.Serializer):
    amount = serializers.DecimalField(
        max_digits=14, decimal_places=2, help_text="What the line should have been."
    )
    gpu_hours = serializers.DecimalField(max_digits=12, decimal_places=4, required=False, allow_null=True)
    reason = serializers.CharField(max_length=300)


class InvoiceLineSerializer(serializers.ModelSerializer):
    gpu_hours = serializers.DecimalField(max_digits=20, decimal_places=4, read_only=True)

    class Meta:
        model = InvoiceLine
        fields = [
            "section",
            "gpu_type",
            "cluster",
            "currency",
            "gpu_hours",
            "amount",
            "energy_kwh",
            "co2e_kg",
            "ledger_lines",
        ]
        read_only_fields = fields


class InvoiceSerializer(serializers.ModelSerializer):
    """An issued invoice, as it was issued: its lines and totals never change."""

    billing_account = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    display_number = serializers.CharField(read_only=True, help_text="The number as printed: INV-000042.")
    month = serializers.SerializerMethodField(help_text="The month invoiced, YYYY-MM.")
    totals = serializers.DictField(
        child=serializers.DecimalField(max_digits=16, decimal_places=2),
        read_only=True,
        help_text="Amount due per currency (ISO 4217 code: amount); never added across currencies.",
    )
    lines = InvoiceLineSerializer(many=True, read_only=True)
    pdf = serializers.SerializerMethodField(help_text="Where to download the invoice as PDF.")
    focus = serializers.SerializerMethodField(help_text="Where to download its FOCUS rows (CSV).")

    class Meta:
        model = Invoice
        fields = [
            "number",
            "display_number",
            "billing_account",
            "account_name",
            "month",
            "issue_date",
            "issued_at",
            "totals",
            "energy_kwh",
            "co2e_kg",
            "ledger_lines",
            "lines",
            "pdf",
            "focus",
        ]
        read_only_fields = fields

    def get_month(self, invoice: Invoice) -> str:
        return f"{invoice.month:%Y-%m}"

    def get_pdf(self, invoice: Invoice) -> str:
        return self._url("api-invoice-pdf", invoice)

    def get_focus(self, invoice: Invoice) -> str:
        return self._url("api-invoice-focus", invoice)

    def _url(self, name: str, invoice: Invoice) -> str:
        path = reverse(name, kwargs={"number": invoice.number})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path
