"""The tenant's forms. Every name, password and key goes through the engine's own validators
(vservers.engine.validate), so the form, the worker and the `vserver` CLI accept exactly the
same input and the user sees the reason next to the field instead of in a failed operation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms

from accounts.models import Tenant

from .engine import validate
from .engine.errors import InvalidInput
from .formatting import number
from .models import TERMINAL, Plan, Template, VirtualServer
from .passwords import sha512_crypt


def engine_check(check: Callable[..., Any], value: Any, **kwargs: Any) -> Any:
    """Run one of the engine's validators as a form's check: the engine decides what a name,
    size or key may be, the panel repeats its answer (its one-line reason becomes the field's
    error). Returns the value as the engine would use it."""
    try:
        return check(value, **kwargs)
    except InvalidInput as exc:
        message = str(exc)
        raise forms.ValidationError(message[:1].upper() + message[1:], code="invalid") from None


# -- fields shared by the request and the accounts' forms -------------------------------------

PASSWORD_HELP = "8-128 characters; no ':' and no line breaks."
KEY_HELP = "One OpenSSH public key line, e.g. ssh-ed25519 AAAA… you@laptop."


def _password_field(required: bool = True) -> forms.CharField:
    return forms.CharField(
        required=required,
        strip=False,
        max_length=128,
        help_text=PASSWORD_HELP,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )


def _key_field(required: bool = True) -> forms.CharField:
    return forms.CharField(
        required=required,
        label="SSH public key",
        help_text=KEY_HELP,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "mono"}),
    )


# -- servers --------------------------------------------------------------------------------


class PlanChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, plan: Plan) -> str:
        return (
            f"{plan.name} · {number(plan.cpus)} CPU · {plan.memory_mb} MB memory · {plan.disk_mb} MB disk"
            f" · {plan.pids} processes"
        )


class ServerRequestForm(forms.Form):
    """Ask for a new server; an operator approves it and the worker provisions it."""

    name = forms.CharField(
        max_length=32,
        help_text="Lowercase letters, digits and '-', starting with a letter; unique among your servers.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autofocus": True}),
    )
    hostname = forms.CharField(
        max_length=253,
        help_text="The server's own host name, e.g. www.example.com.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    # No preselected plan or system: the choice is the customer's, and it is billed.
    plan = PlanChoiceField(queryset=Plan.objects.filter(is_active=True), empty_label="Choose a plan…")
    template = forms.ModelChoiceField(
        queryset=Template.objects.filter(is_active=True), empty_label="Choose a system…", label="Operating system"
    )

    # Optional: root's login once the server runs, applied by provisioning. The password is
    # checked like any other, then kept only as a SHA-512 crypt hash (cleaned_data
    # "root_password_hash"); the plain text is stored nowhere.
    ssh_key = _key_field(required=False)
    root_password = _password_field(required=False)

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["ssh_key"].label = "SSH public key for root (optional)"
        self.fields["ssh_key"].help_text = KEY_HELP + " Added to root's authorized keys when the server is set up."
        self.fields["root_password"].label = "Root password (optional)"
        self.fields["root_password"].help_text = PASSWORD_HELP + " Leave empty to log in with the key only."

    def clean_ssh_key(self) -> str:
        value = self.cleaned_data["ssh_key"].strip()
        return engine_check(validate.ssh_public_key, value) if value else ""

    def clean_root_password(self) -> str:
        value = self.cleaned_data["root_password"]
        if value:
            engine_check(validate.password, value)
            self.cleaned_data["root_password_hash"] = sha512_crypt(value)
        return ""  # the plain text goes no further than this form

    def clean_name(self) -> str:
        name = engine_check(validate.server_name, self.cleaned_data["name"].strip())
        if VirtualServer.objects.filter(tenant=self.tenant, name=name).exclude(state__in=TERMINAL).exists():
            raise forms.ValidationError(f"You already have a server named {name!r}.", code="duplicate")
        return name

    def clean_hostname(self) -> str:
        return engine_check(validate.hostname, self.cleaned_data["hostname"].strip().lower())



class PlanChangeForm(forms.Form):
    """Ask for another plan; an operator approves the change later."""

    plan = PlanChoiceField(queryset=Plan.objects.filter(is_active=True), empty_label=None, label="New plan")

    def __init__(self, *args, server: VirtualServer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        initial = server.requested_plan or server.plan
        self.fields["plan"].initial = initial.pk if initial else None

    def clean_plan(self) -> Plan:
        plan = self.cleaned_data["plan"]
        if plan.pk == self.server.plan_id and self.server.requested_plan_id is None:
            raise forms.ValidationError("The server already has this plan.", code="same")
        return plan


# -- accounts inside a server ---------------------------------------------------------------

class AccountAddForm(forms.Form):
    user = forms.CharField(
        label="User name",
        max_length=32,
        help_text="Lowercase letters, digits, '_' and '-', starting with a letter or '_'.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    password = _password_field(required=False)
    ssh_key = _key_field(required=False)

    def __init__(self, *args, existing: set[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.existing = existing or set()
        self.fields["password"].help_text = PASSWORD_HELP + " Leave empty to log in with the key only."

    def clean_user(self) -> str:
        name = engine_check(validate.user_name, self.cleaned_data["user"].strip())
        if name in self.existing:
            raise forms.ValidationError(f"The server already has an account named {name!r}.", code="duplicate")
        return name

    def clean_password(self) -> str:
        value = self.cleaned_data["password"]
        return engine_check(validate.password, value) if value else ""

    def clean_ssh_key(self) -> str:
        value = self.cleaned_data["ssh_key"].strip()
        return engine_check(validate.ssh_public_key, value) if value else ""

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        if not self.errors and not cleaned.get("password") and not cleaned.get("ssh_key"):
            raise forms.ValidationError("Give a password, an SSH key, or both: otherwise nobody can log in.")
        return cleaned


class AccountPasswordForm(forms.Form):
    password = _password_field()

    def clean_password(self) -> str:
        return engine_check(validate.password, self.cleaned_data["password"])


class AccountKeyForm(forms.Form):
    ssh_key = _key_field()

    def clean_ssh_key(self) -> str:
        return engine_check(validate.ssh_public_key, self.cleaned_data["ssh_key"].strip())
