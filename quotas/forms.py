from __future__ import annotations

from django import forms

from .models import Budget, Quota


class QuotaForm(forms.ModelForm):
    class Meta:
        model = Quota
        fields = ["tenant", "gpu_type", *Quota.AUDITED]
        labels = {
            "gpu_type": "GPU type",
            "max_gpus_per_job": "Max GPUs per job",
            "max_gpus_per_user": "Max GPUs per user",
        }
        widgets = {name: forms.NumberInput(attrs={"min": 0}) for name in Quota.AUDITED}


class QuotaLimitsForm(QuotaForm):
    """Inline editing of an existing row: the tenant and GPU type stay."""

    class Meta(QuotaForm.Meta):
        fields = list(Quota.AUDITED)


class BudgetForm(forms.ModelForm):
    class Meta:
        model = Budget
        fields = list(Budget.AUDITED)
        labels = {
            "gpu_hours_per_month": "GPU-hours per month",
            "hard": "Hard budget (hold jobs when spent)",
            "max_priority": "Highest job priority (orders the tenant's own jobs only)",
        }
