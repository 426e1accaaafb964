"""Accounts and services inside a server, as the worker last listed them."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from ... import access
from ...forms import AccountAddForm, AccountKeyForm, AccountPasswordForm
from ...models import GuestAccount, OperationKind, VirtualServer
from .access import get_server_for_user
from .detail import form_prefix, queue_operation, render_detail

SERVICE_ACTIONS = {
    "start": OperationKind.SERVICE_START,
    "stop": OperationKind.SERVICE_STOP,
    "restart": OperationKind.SERVICE_RESTART,
}


def _get_account_for_user(server: VirtualServer, name: str, *, system_ok: bool = False,
                          deleting: bool = False) -> GuestAccount:
    return access.get_account(server, name, system_ok=system_ok, deleting=deleting)


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
    return queue_operation(request, server, OperationKind.ACCOUNT_ADD, f"adding account {data['user']}.",
                           anchor="accounts", **params)


@login_required
@require_POST
def account_delete(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name, deleting=True).name
    return queue_operation(request, server, OperationKind.ACCOUNT_DELETE, f"deleting account {name}.",
                           anchor="accounts", account=name)


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
        anchor="accounts",
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
        anchor="accounts",
        account=name,
        ssh_key=form.cleaned_data["ssh_key"],
    )


@login_required
@require_POST
def service_action(request: HttpRequest, uuid, name: str, action: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    if action not in SERVICE_ACTIONS:
        raise Http404("no such service action")
    name = access.get_service(server, name).name  # as the worker last listed them
    verb = {"start": "starting", "stop": "stopping", "restart": "restarting"}[action]
    return queue_operation(request, server, SERVICE_ACTIONS[action], f"{verb} service {name}.",
                           anchor="services", service=name)
