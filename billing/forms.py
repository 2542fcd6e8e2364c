from __future__ import annotations

import re
from datetime import date

from django import forms
from django.utils import timezone

from .models import RateCard

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_month(value: str | None) -> date:
    """'YYYY-MM' → the first of that month; ValueError with a message otherwise."""
    if not value:
        now = timezone.now()
        return date(now.year, now.month, 1)
    match = MONTH.match(value)
    if not match:
        raise ValueError("Give the month as YYYY-MM, e.g. 2026-11.")
    return date(int(match[1]), int(match[2]), 1)


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
