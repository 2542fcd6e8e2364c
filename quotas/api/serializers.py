from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from factory.api.serializers import SlugRelatedField, StrictFieldsMixin
from factory.models import GpuType, Tenant

from ..models import Budget, Quota
from ..usage import budget_burn


class QuotaSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    tenant = SlugRelatedField(slug_field="slug", queryset=Tenant.objects.all())
    gpu_type = SlugRelatedField(
        slug_field="slug",
        queryset=GpuType.objects.all(),
        error_messages={"does_not_exist": "Unknown GPU type {value}."},
    )
    in_use = serializers.SerializerMethodField(
        help_text="GPUs held by the jobs of the tenant and of the tenants below it."
    )
    borrowed = serializers.SerializerMethodField(help_text="GPUs of those in use above the nominal quota.")
    pending_demand = serializers.SerializerMethodField(
        help_text="GPUs asked for by the pending jobs of the tenant and of the tenants below it."
    )

    class Meta:
        model = Quota
        fields = [
            "id",
            "tenant",
            "gpu_type",
            *Quota.AUDITED,
            "in_use",
            "borrowed",
            "pending_demand",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]
        validators = []  # uniqueness is checked with the model's full_clean, as a field message

    def _usage(self, quota):
        return self.context.get("usage", {}).get(quota.pk)

    def get_in_use(self, quota) -> int | None:
        usage = self._usage(quota)
        return usage.in_use if usage else None

    def get_borrowed(self, quota) -> int | None:
        usage = self._usage(quota)
        return usage.borrowed if usage else None

    def get_pending_demand(self, quota) -> int | None:
        usage = self._usage(quota)
        return usage.pending if usage else None


class BudgetSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    tenant = SlugRelatedField(slug_field="slug", queryset=Tenant.objects.all())
    used_gpu_hours_this_month = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = [
            "tenant",
            *Budget.AUDITED,
            "used_gpu_hours_this_month",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]
        validators = []

    def get_used_gpu_hours_this_month(self, budget) -> str:
        return str(budget_burn(budget.tenant).used.quantize(Decimal("0.01")))


class BudgetEffectSerializer(serializers.Serializer):
    unit = serializers.CharField(help_text="The budget's currency, or GPU-hours.")
    left = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    left_after = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    hard = serializers.BooleanField()
    holds_job = serializers.BooleanField(help_text="Whether the hard budget would hold the job.")
    note = serializers.CharField()


class EstimateSerializer(serializers.Serializer):
    """What a job would cost and how long it would wait; see quotas/estimate.py for how."""

    tasks = serializers.IntegerField(help_text="Jobs the submission makes: 1, or an array's tasks.")
    gpu_hours = serializers.DecimalField(max_digits=14, decimal_places=4)
    price_per_gpu_hour = serializers.DecimalField(max_digits=14, decimal_places=4)
    currency = serializers.CharField()
    cost = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="At the time limit: the most.")
    budget = BudgetEffectSerializer(allow_null=True)
    admits_now = serializers.BooleanField()
    admission = serializers.CharField()
    queued_ahead = serializers.IntegerField()
    wait_seconds_median = serializers.IntegerField(allow_null=True)
    wait_seconds_p90 = serializers.IntegerField(allow_null=True)
    wait_samples = serializers.IntegerField()
    wait_basis = serializers.CharField()
