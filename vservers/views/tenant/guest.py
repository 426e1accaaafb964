"""Accounts and services inside a server, as the worker last listed them."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from ...engine import validate
from ...engine.errors import InvalidInput
from ...forms import AccountAddForm, AccountKeyForm, AccountPasswordForm
from ...models import GuestAccount, OperationKind, VirtualServer
from .access import get_server_for_user
from .detail import form_prefix, queue_operation, render_detail

SERVICE_ACTIONS = {
    "start": OperationKind.SERVICE_START,
    "stop": OperationKind.SERVICE_STOP,
    "restart": OperationKind.SERVICE_RESTART,
}


def _get_account_for_user(server: VirtualServer, name: str, *, system_ok: bool = False) -> GuestAccount:
    """An account of SERVER as the worker last listed it, or 404: users act on the accounts
    they see. System accounts other than root are the template's, not the tenant's."""
    account = get_object_or_404(server.guest_accounts, name=name)
    if account.is_system and not (system_ok and account.uid == 0):
        raise PermissionDenied(f"{name} is a system account")
    # The guest's root names accounts as he likes; the engine acts only on names it accepts.
    _engine_name(validate.user_name, account.name, allow_reserved=True)
    return account


def _engine_name(check, name: str, **kwargs) -> None:
    try:
        check(name, **kwargs)
    except InvalidInput as exc:
        raise PermissionDenied(f"the panel cannot manage this: {exc}") from None


@login_required
@require_POST
def account_add(request: HttpRequest, uuid) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    existing = set(server.guest_accounts.values_list("name", flat=True))
    form = AccountAddForm(request.POST, existing=existing)
    if not form.is_valid():
        return render_detail(request, server, bound={"add": form})
    data = form.cleaned_data
    params = {"account": data["user"]}
    if data["password"]:
        params["password"] = data["password"]  # only in the operation's params; finish() wipes it
    if data["ssh_key"]:
        params["ssh_key"] = data["ssh_key"]
    return queue_operation(request, server, OperationKind.ACCOUNT_ADD, f"adding account {data['user']}.", **params)


@login_required
@require_POST
def account_delete(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name).name
    return queue_operation(request, server, OperationKind.ACCOUNT_DELETE, f"deleting account {name}.", account=name)


@login_required
@require_POST
def account_password(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name, system_ok=True).name
    form = AccountPasswordForm(request.POST, prefix=form_prefix("pw", name))
    if not form.is_valid():
        return render_detail(request, server, bound={("password", name): form})
    password = form.cleaned_data["password"]
    return queue_operation(
        request,
        server,
        OperationKind.ACCOUNT_PASSWORD,
        f"setting the password of {name}.",
        account=name,
        password=password,
    )


@login_required
@require_POST
def account_key(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name, system_ok=True).name
    form = AccountKeyForm(request.POST, prefix=form_prefix("key", name))
    if not form.is_valid():
        return render_detail(request, server, bound={("key", name): form})
    return queue_operation(
        request,
        server,
        OperationKind.ACCOUNT_KEY,
        f"adding an SSH key for {name}.",
        account=name,
        ssh_key=form.cleaned_data["ssh_key"],
    )


@login_required
@require_POST
def service_action(request: HttpRequest, uuid, name: str, action: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    if action not in SERVICE_ACTIONS:
        raise Http404("no such service action")
    name = get_object_or_404(server.services, name=name).name  # as the worker last listed them
    _engine_name(validate.service_name, name)
    verb = {"start": "starting", "stop": "stopping", "restart": "restarting"}[action]
    return queue_operation(request, server, SERVICE_ACTIONS[action], f"{verb} service {name}.", service=name)
