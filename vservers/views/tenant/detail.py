"""The server's page: its state, usage, operations, accounts and services, and the one
way its views queue an operation."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from ... import access, actions
from ...forms import AccountAddForm, AccountKeyForm, AccountPasswordForm, PlanChangeForm
from ...models import ON_NODE, Operation, OperationKind, OperationStatus, State, VirtualServer
from .access import can_act
from .display import usage

SERVER_ACTIONS = {
    "start": OperationKind.START,
    "stop": OperationKind.STOP,
    "restart": OperationKind.RESTART,
    "delete": OperationKind.DELETE,
    "refresh": OperationKind.REFRESH,
}
PENDING = [OperationStatus.QUEUED, OperationStatus.RUNNING]
HISTORY_LENGTH = 20


def available_actions(server: VirtualServer) -> dict[str, bool]:
    # The same rule request_operation applies; refresh is a guest kind and needs a running server.
    return {
        name: server.may(kind) for name, kind in SERVER_ACTIONS.items()
    }


def operation_history(server: VirtualServer) -> tuple[list[Operation], bool]:
    operations = list(server.operations.select_related("requested_by")[:HISTORY_LENGTH])
    return operations, any(op.status in PENDING for op in operations)


def form_prefix(form: str, account: str) -> str:
    """Each account's row has its own password and key forms: the prefix keeps their field
    names and ids apart from each other and from the add form's."""
    return f"{form}-{account}"


def guest_context(server: VirtualServer, bound: dict | None = None) -> dict:
    """Accounts and services as the worker last read them, with their forms; a bound form
    with errors (BOUND: "add" or (form, account name) -> form) replaces the blank one."""
    bound = bound or {}
    rows = []
    accounts = list(server.guest_accounts.all())
    for account in accounts:
        # Reserved system accounts only take a password or key when they are root.
        manageable = not account.is_system or account.uid == 0
        rows.append(
            {
                "account": account,
                "manageable": manageable,
                "deletable": access.deletable(account),
                "password_form": bound.get(("password", account.name))
                or AccountPasswordForm(prefix=form_prefix("pw", account.name)),
                "key_form": bound.get(("key", account.name)) or AccountKeyForm(prefix=form_prefix("key", account.name)),
                "open": ("password", account.name) in bound or ("key", account.name) in bound,
            }
        )
    services = list(server.services.all())
    add_form = bound.get("add") or AccountAddForm(existing={a.name for a in accounts})
    return {
        "account_rows": rows,
        "add_form": add_form,
        "services": services,
        "guest_running": server.state == State.RUNNING,
    }


def render_detail(request: HttpRequest, server: VirtualServer, *, plan_form=None, bound=None) -> HttpResponse:
    """The server's page; PLAN_FORM and BOUND carry a submitted form back with its errors."""
    operations, pending = operation_history(server)
    context = {
        "server": server,
        "usage_meters": usage(server) if server.sampled_at else [],
        "addresses": list(server.addresses.select_related("pool")),
        "available": available_actions(server),
        "can_act": can_act(request.user),
        "operations": operations,
        "operations_pending": pending,
        "plan_form": plan_form or PlanChangeForm(server=server, auto_id="id_plan_%s"),
        "plan_change_allowed": server.may(OperationKind.CHANGE_PLAN),
        "on_node": server.state in ON_NODE,
        **guest_context(server, bound),
    }
    return render(request, "vservers/tenant/server_detail.html", context)


def queue_operation(request: HttpRequest, server: VirtualServer, kind: str, done: str, *, anchor: str = "",
                    **params) -> HttpResponse:
    """Record and queue one operation, tell the user, and go back to the server's page, at
    ANCHOR ("accounts", "services"): the section the user acted in, not the page's top."""
    try:
        actions.request_operation(server, kind, request.user, request=request, **params)
    except actions.ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: {done}")
    url = reverse("server_detail", kwargs={"uuid": server.uuid})
    return redirect(f"{url}#{anchor}" if anchor else url)
