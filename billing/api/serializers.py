from __future__ import annotations

from rest_framework import serializers

from factory.api.serializers import SlugRelatedField, StrictFieldsMixin
from factory.models import Cluster, GpuType

from ..models import RateCard, UsageRecord


class RateCardSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    gpu_type = SlugRelatedField(
        slug_field="slug",
        queryset=GpuType.objects.all(),
        error_messages={"does_not_exist": "Unknown GPU type {value}."},
    )
    cluster = SlugRelatedField(
        slug_field="slug", queryset=Cluster.objects.all(), required=False, allow_null=True
    )

    class Meta:
        model = RateCard
        fields = ["id", *RateCard.EDITABLE, "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        card = RateCard(**{**({} if self.instance is None else _fields(self.instance)), **attrs})
        if self.instance is not None:
            card.pk = self.instance.pk
        from django.core.exceptions import ValidationError as DjangoValidationError

        try:
            card.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs


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
            "co2e_kg",
            "note",
        ]
        read_only_fields = fields
