"""Filters every app's FilterSets share."""

from __future__ import annotations

import django_filters
from django import forms
from drf_spectacular.utils import extend_schema_field

from .months import MONTH_HELP, MONTH_SCHEMA, parse_month


class MonthField(forms.CharField):
    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return None
        try:
            return parse_month(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@extend_schema_field({**MONTH_SCHEMA, "description": MONTH_HELP})
class MonthFilter(django_filters.Filter):
    """A month, written YYYY-MM as everywhere (the first day of the month, as a date field stores it)."""

    field_class = MonthField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("help_text", MONTH_HELP)
        super().__init__(*args, **kwargs)
