from __future__ import annotations

from django import forms
from django.conf import settings

from .choices import Role
from .models import Tenant


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, required=False, help_text="Where it is used: a laptop, a CI pipeline, a notebook."
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["days"] = forms.IntegerField(
            label="Expires in (days)",
            min_value=1,
            max_value=settings.FACTORY_TOKEN_MAX_DAYS,
            initial=settings.FACTORY_TOKEN_DAYS,
        )


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150, label="Username")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER, label="Role")


class JoinRequestForm(forms.Form):
    tenant = forms.SlugField(
        max_length=63, label="Tenant", help_text="Its short name, as in its pages' addresses."
    )
    message = forms.CharField(
        max_length=500,
        required=False,
        label="Message to its admins",
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class TenantForm(forms.ModelForm):
    """A new organisation, department or project: below the parent chosen, or at the top."""

    parent = forms.ModelChoiceField(
        Tenant.objects.all(),
        to_field_name="slug",
        required=False,
        label="Below",
        empty_label="(the top: a new organisation)",
    )

    class Meta:
        model = Tenant
        fields = ["slug", "name", "parent", "cost_center"]
        labels = {"slug": "Short name", "cost_center": "Cost center"}


class MoveTenantForm(forms.Form):
    tenant = forms.ModelChoiceField(Tenant.objects.all(), to_field_name="slug", label="Tenant to move")
    parent = forms.ModelChoiceField(
        Tenant.objects.all(),
        to_field_name="slug",
        required=False,
        label="New place below",
        empty_label="(the top)",
    )


class NameAdminForm(forms.Form):
    tenant = forms.ModelChoiceField(Tenant.objects.all(), to_field_name="slug", label="Admin of")
    username = forms.CharField(max_length=150, label="Username of the admin")
