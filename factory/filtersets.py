"""Filters every app's FilterSets share."""

from __future__ import annotations

import django_filters
from auditlog.models import LogEntry
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


def _audited_type_choices() -> list[tuple[str, str]]:
    from .audit import audited_types, type_label

    return [(f"{t.app_label}.{t.model}", type_label(t)) for t in audited_types()]


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class AuditTypeFilter(django_filters.MultipleChoiceFilter):
    """Kinds of object, as "app.model" (the models the trail records: set when the FilterSet is made)."""


class IntegerFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField


ACTION_CHOICES = [("created", "created"), ("changed", "changed"), ("deleted", "deleted")]


class AuditFilterSet(django_filters.FilterSet):
    """The audit trail by kind of object, object, user, what was done and when: shared by the
    trail's page, its CSV export and the API."""

    type = AuditTypeFilter(
        method="filter_type",
        label="Kind of object",
        help_text='"app.model", e.g. factory.cluster; repeatable.',
    )
    object = django_filters.CharFilter(
        method="filter_object", label="Object", help_text="Its id, or part of its name."
    )
    user = django_filters.CharFilter(
        field_name="actor__username", lookup_expr="iexact", label="User", help_text="Who made the change."
    )
    action = django_filters.ChoiceFilter(choices=ACTION_CHOICES, method="filter_action", label="Action")
    since = django_filters.DateFilter(field_name="timestamp__date", lookup_expr="gte", label="From (UTC)")
    until = django_filters.DateFilter(field_name="timestamp__date", lookup_expr="lte", label="Until (UTC)")
    change_set = IntegerFilter(
        field_name="additional_data__change_set", label="Change set", help_text="An applied platform file."
    )

    class Meta:
        model = LogEntry
        fields: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.filters["type"].extra["choices"] = _audited_type_choices()  # the models registered

    def filter_type(self, queryset, name, value):
        from django.contrib.contenttypes.models import ContentType
        from django.db.models import Q

        wanted = Q()
        for label in value:
            app_label, model = label.split(".", 1)
            wanted |= Q(app_label=app_label, model=model)
        return queryset.filter(content_type__in=ContentType.objects.filter(wanted))

    def filter_object(self, queryset, name, value):
        from django.db.models import Q

        value = value.strip()
        return queryset.filter(Q(object_pk=value) | Q(object_repr__icontains=value))

    def filter_action(self, queryset, name, value):
        actions = {
            "created": LogEntry.Action.CREATE,
            "changed": LogEntry.Action.UPDATE,
            "deleted": LogEntry.Action.DELETE,
        }
        return queryset.filter(action=actions[value])
