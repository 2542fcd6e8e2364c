from __future__ import annotations

from django import forms

from .models import RateCard


class RateCardForm(forms.ModelForm):
    class Meta:
        model = RateCard
        fields = list(RateCard.EDITABLE)
        labels = {
            "gpu_type": "GPU type",
            "billing_account": "Billing account",
            "price_per_gpu_hour": "Price per GPU-hour",
            "price_per_cpu_core_hour": "Price per CPU-core-hour",
            "price_per_memory_gb_hour": "Price per memory GB-hour",
        }
        widgets = {
            "effective_from": forms.DateInput(attrs={"type": "date"}),
            "effective_until": forms.DateInput(attrs={"type": "date"}),
        }


class NewPriceForm(forms.Form):
    """A new price from a date for the card it replaces (which then ends that day)."""

    replaces = forms.ModelChoiceField(queryset=RateCard.objects.all(), widget=forms.HiddenInput)
    price_per_gpu_hour = forms.DecimalField(
        label="Price per GPU-hour", max_digits=12, decimal_places=4, min_value=0
    )
    price_per_cpu_core_hour = forms.DecimalField(
        label="Price per CPU-core-hour", max_digits=12, decimal_places=4, min_value=0
    )
    price_per_memory_gb_hour = forms.DecimalField(
        label="Price per memory GB-hour", max_digits=12, decimal_places=4, min_value=0
    )
    effective_from = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))

    @classmethod
    def for_card(cls, card: RateCard) -> NewPriceForm:
        return cls(initial={"replaces": card.pk, **{name: getattr(card, name) for name in RateCard.PRICES}})


class MonthField(forms.CharField):
    """A month written YYYY-MM, as everywhere in the portal."""

    widget = forms.TextInput(attrs={"type": "month", "placeholder": "YYYY-MM"})

    def to_python(self, value):
        from factory.months import parse_month

        value = super().to_python(value)
        if not value:
            return None
        try:
            return parse_month(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class CreditForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=None, to_field_name="slug", label="Tenant")
    month = MonthField(label="Period (month credited)")
    amount = forms.DecimalField(label="Amount", required=False, max_digits=14, decimal_places=2)
    gpu_hours = forms.DecimalField(label="GPU-hours", required=False, max_digits=12, decimal_places=4)
    gpu_type = forms.ModelChoiceField(
        queryset=None, to_field_name="slug", required=False, label="GPU type (for GPU-hours)"
    )
    currency = forms.CharField(label="Currency", required=False, max_length=3)
    reason = forms.CharField(label="Reason", max_length=300)

    def __init__(self, *args, **kwargs):
        from factory.models import GpuType, Tenant

        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = Tenant.objects.all()
        self.fields["gpu_type"].queryset = GpuType.objects.all()


class CorrectionForm(forms.Form):
    amount = forms.DecimalField(label="Corrected amount", max_digits=14, decimal_places=2)
    gpu_hours = forms.DecimalField(
        label="Corrected GPU-hours", required=False, max_digits=12, decimal_places=4
    )
    reason = forms.CharField(label="Reason", max_length=300)
