from __future__ import annotations

from django import forms
from django.conf import settings

from .choices import Role


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
