from __future__ import annotations

from django import forms
from django.conf import settings


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
