"""The tenant's forms. Every name, password and key goes through the engine's own validators
(vservers.engine.validate), so the form, the worker and the `vserver` CLI accept exactly the
same input and the user sees the reason next to the field instead of in a failed operation."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from django import forms
from django.db.models import Count, Sum

from accounts.models import Tenant

from .engine import validate
from .engine.errors import InvalidInput
from .models import TERMINAL, Plan, Template, VirtualServer


def _engine_check(check: Callable[..., str], value: str, **kwargs) -> str:
    """Run an engine validator; its one-line reason becomes the field's error."""
    try:
        return check(value, **kwargs)
    except InvalidInput as exc:
        message = str(exc)
        raise forms.ValidationError(message[:1].upper() + message[1:], code="invalid") from None


def number(value) -> str:
    """2.00 -> "2", 0.50 -> "0.5" (CPU shares are decimals)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# -- quotas ---------------------------------------------------------------------------------


def tenant_usage(tenant: Tenant, exclude: VirtualServer | None = None) -> dict:
    """What the tenant's live servers add up to (one query)."""
    servers = VirtualServer.objects.filter(tenant=tenant).exclude(state__in=TERMINAL)
    if exclude is not None:
        servers = servers.exclude(pk=exclude.pk)
    totals = servers.aggregate(
        servers=Count("pk"), cpus=Sum("plan__cpus"), memory_mb=Sum("plan__memory_mb"), disk_mb=Sum("plan__disk_mb")
    )
    return {
        "servers": totals["servers"] or 0,
        "cpus": totals["cpus"] or Decimal(0),
        "memory_mb": totals["memory_mb"] or 0,
        "disk_mb": totals["disk_mb"] or 0,
    }


def quota_problems(tenant: Tenant, plan: Plan, replacing: VirtualServer | None = None) -> list[str]:
    """Why one more server on PLAN (or REPLACING moved to PLAN) would exceed the tenant's
    quotas; empty when it fits. Callers hold the tenant's row lock while they check and
    create, so two requests cannot both take the last slot."""
    used = tenant_usage(tenant, exclude=replacing)
    problems = []
    if replacing is None and used["servers"] + 1 > tenant.max_servers:
        problems.append(f"your servers would exceed the limit of {tenant.max_servers}")
    if used["cpus"] + plan.cpus > tenant.max_cpus:
        problems.append(f"CPUs would add up to {number(used['cpus'] + plan.cpus)} of at most {number(tenant.max_cpus)}")
    if used["memory_mb"] + plan.memory_mb > tenant.max_memory_mb:
        problems.append(
            f"memory would add up to {used['memory_mb'] + plan.memory_mb} MB of at most {tenant.max_memory_mb} MB"
        )
    if used["disk_mb"] + plan.disk_mb > tenant.max_disk_mb:
        problems.append(f"disk would add up to {used['disk_mb'] + plan.disk_mb} MB of at most {tenant.max_disk_mb} MB")
    return problems


def _quota_error(problems: list[str]) -> forms.ValidationError:
    return forms.ValidationError(
        "This plan does not fit your quota: " + "; ".join(problems) + ". Choose a smaller plan or ask the operator.",
        code="quota",
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

    def __init__(self, *args, tenant: Tenant, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def clean_name(self) -> str:
        name = _engine_check(validate.server_name, self.cleaned_data["name"].strip())
        if VirtualServer.objects.filter(tenant=self.tenant, name=name).exclude(state__in=TERMINAL).exists():
            raise forms.ValidationError(f"You already have a server named {name!r}.", code="duplicate")
        return name

    def clean_hostname(self) -> str:
        return _engine_check(validate.hostname, self.cleaned_data["hostname"].strip().lower())

    def clean(self) -> dict:
        cleaned = super().clean()
        plan = cleaned.get("plan")
        if plan is not None:
            problems = quota_problems(self.tenant, plan)
            if problems:
                self.add_error("plan", _quota_error(problems))
        return cleaned


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
        if plan.pk != self.server.plan_id:
            problems = quota_problems(self.server.tenant, plan, replacing=self.server)
            if problems:
                raise _quota_error(problems)
        return plan


# -- accounts inside a server ---------------------------------------------------------------

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
        name = _engine_check(validate.user_name, self.cleaned_data["user"].strip())
        if name in self.existing:
            raise forms.ValidationError(f"The server already has an account named {name!r}.", code="duplicate")
        return name

    def clean_password(self) -> str:
        value = self.cleaned_data["password"]
        return _engine_check(validate.password, value) if value else ""

    def clean_ssh_key(self) -> str:
        value = self.cleaned_data["ssh_key"].strip()
        return _engine_check(validate.ssh_public_key, value) if value else ""

    def clean(self) -> dict:
        cleaned = super().clean()
        if not self.errors and not cleaned.get("password") and not cleaned.get("ssh_key"):
            raise forms.ValidationError("Give a password, an SSH key, or both: otherwise nobody can log in.")
        return cleaned


class AccountPasswordForm(forms.Form):
    password = _password_field()

    def clean_password(self) -> str:
        return _engine_check(validate.password, self.cleaned_data["password"])


class AccountKeyForm(forms.Form):
    ssh_key = _key_field()

    def clean_ssh_key(self) -> str:
        return _engine_check(validate.ssh_public_key, self.cleaned_data["ssh_key"].strip())
