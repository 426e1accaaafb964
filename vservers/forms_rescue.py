"""The forms of reinstall and root's password (issue 15, 3. and 5.), for the server pages and the
API alike. A reinstall wipes every file of the server: it goes ahead only when the user typed
the server's name exactly."""

from __future__ import annotations

from django import forms
from django.utils.html import escape

from .engine import validate
from .forms import PASSWORD_HELP, _password_field, engine_check
from .models import Template, VirtualServer


class TemplateChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, template: Template) -> str:
        return str(template)


class ReinstallForm(forms.Form):
    template = TemplateChoiceField(queryset=Template.objects.none(), empty_label=None, label="System",
                                   to_field_name="name")
    confirm = forms.CharField(max_length=64, strip=False, label="Type the server's name to confirm",
                              widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}))
    snapshot_first = forms.BooleanField(required=False, label="Take a snapshot first")

    def __init__(self, *args, server: VirtualServer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        field = self.fields["template"]
        field.queryset = Template.objects.filter(is_active=True)  # type: ignore[attr-defined]
        field.initial = server.template.name if server.template_id else None
        field.help_text = "The newest build of the system chosen. The server keeps its name, addresses and plan."
        name = escape(server.name)  # help texts are shown unescaped (includes/form_fields.html)
        self.fields["confirm"].help_text = f"Every file of {name} is deleted. Type {name} to go ahead."
        if snapshots_allowed(server):
            self.fields["snapshot_first"].help_text = "A snapshot of the server as it is now, to restore if need be."
        else:
            del self.fields["snapshot_first"]

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"]
        if value != self.server.name:
            raise forms.ValidationError(
                f"Type the server's name, {self.server.name}, exactly: nothing was reinstalled.", code="mismatch")
        return value


def snapshots_allowed(server: VirtualServer) -> bool:
    """Whether the server's plan keeps snapshots at all."""
    return bool(server.plan_id and server.plan.snapshots_max)


class RootPasswordForm(forms.Form):
    """Root's new password. On the pages its fields carry PAGE_PREFIX: the server page has the
    accounts card's add form, whose fields are named plainly."""

    PAGE_PREFIX = "rootpw"

    password = _password_field()
    password2 = _password_field()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["password"].label = "New root password"
        self.fields["password"].help_text = PASSWORD_HELP
        self.fields["password2"].label = "The same password again"
        self.fields["password2"].help_text = ""

    def clean_password(self) -> str:
        return engine_check(validate.password, self.cleaned_data["password"])

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        if "password" in cleaned and cleaned.get("password2") != cleaned["password"]:
            self.add_error("password2", "The two passwords differ.")
        return cleaned
