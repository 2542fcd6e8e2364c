from __future__ import annotations

from django import forms

from .models import RateCard


class RateCardForm(forms.ModelForm):
    class Meta:
        model = RateCard
        fields = list(RateCard.EDITABLE)
        labels = {
            "gpu_type": "GPU type",
            "price_per_gpu_hour": "Price per GPU-hour",
            "price_per_cpu_core_hour": "Price per CPU-core-hour",
            "price_per_memory_gb_hour": "Price per memory GB-hour",
        }
        widgets = {
            "effective_from": forms.DateInput(attrs={"type": "date"}),
            "effective_until": forms.DateInput(attrs={"type": "date"}),
        }
