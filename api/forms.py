from __future__ import annotations

from django import forms
from django.conf import settings

from vservers import access

from .models import ApiToken

LIFETIMES = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "a year")]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=60, help_text="What it is for, e.g. billing or backup script.",
                           widget=forms.TextInput(attrs={"autocomplete": "off"}))
    scope = forms.ChoiceField(choices=ApiToken.SCOPES, initial=ApiToken.READ,
                              help_text="Read-only tokens can look at everything you see but change nothing.")
    days = forms.TypedChoiceField(choices=LIFETIMES, coerce=int, initial=90, label="Expires after")

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Operators' tokens may be limited to reading (PANEL_API_OPERATOR_WRITE); read-only
        # members' tokens could not write anyway.
        if not access.can_act(user) or (user.is_staff and not settings.PANEL_API_OPERATOR_WRITE):
            self.fields["scope"].choices = [(ApiToken.READ, "Read-only")]  # type: ignore[attr-defined]
        self.fields["days"].choices = [  # type: ignore[attr-defined]
            (days, label) for days, label in LIFETIMES if days <= settings.PANEL_API_TOKEN_MAX_DAYS
        ]
