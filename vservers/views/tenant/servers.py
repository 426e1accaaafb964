"""One server: its page (a live page), its actions and plan changes."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from ... import access, actions
from ...access import servers_for
from ...forms import PlanChangeForm
from ...models import OperationKind
from ..live import live_page, minute, server_changes
from .access import get_server_for_user, membership
from .detail import SERVER_ACTIONS, queue_operation, render_detail


def _detail_fingerprint(request: HttpRequest, uuid) -> tuple:
    """What the server's page shows that can move (live.server_changes, one query), the
    user's role, and the minute (the page says how long ago things happened)."""
    member = membership(request.user)
    found = server_changes(servers_for(request.user).filter(uuid=uuid))
    if found is None:
        raise Http404("no such server")
    return (member.role if member else None, *found, minute())


@login_required
@require_GET
@live_page(_detail_fingerprint, gone=lambda request: reverse("server_list"))
def server_detail(request: HttpRequest, uuid) -> HttpResponse:
    """The server's page, a live page: its state, details, accounts, services and
    operations follow the server."""
    return render_detail(request, get_server_for_user(request, uuid))


@login_required
@require_POST
def server_action(request: HttpRequest, uuid, kind: str) -> HttpResponse:
    server = get_server_for_user(request, uuid, act=True)
    if kind not in SERVER_ACTIONS:
        raise Http404("no such action")
    done = {
        "start": "starting.",
        "stop": "stopping.",
        "restart": "restarting.",
        "delete": "deletion queued.",
        "refresh": "reading accounts, services and usage.",
    }[kind]
    return queue_operation(request, server, SERVER_ACTIONS[kind], done)


@login_required
@require_POST
def server_cancel(request: HttpRequest, uuid) -> HttpResponse:
    """Withdraw a request no operator has decided yet (actions.cancel: nothing exists on a
    node, so nothing is deleted; audited as server.cancel)."""
    server = get_server_for_user(request, uuid, act=True)
    try:
        actions.cancel(server, request=request)
    except actions.ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
        return redirect("server_detail", uuid=server.uuid)
    messages.success(request, f"The request for {server.name} is cancelled.")
    return redirect("server_list")


@login_required
@require_POST
def plan_change(request: HttpRequest, uuid) -> HttpResponse:
    """Record the plan the tenant wants; an operator applies it (a change_plan operation)."""
    server = get_server_for_user(request, uuid, act=True)
    if not server.may(OperationKind.CHANGE_PLAN):
        messages.error(request, f"{server.name}: the plan can be changed once the server is running or stopped.")
        return redirect("server_detail", uuid=server.uuid)
    form = PlanChangeForm(request.POST, server=server, auto_id="id_plan_%s")
    if not form.is_valid():
        return render_detail(request, server, plan_form=form)
    plan = form.cleaned_data["plan"]
    try:
        waiting = actions.request_plan_change(server, plan, request.user, request=request)
    except actions.ActionRefused as exc:
        form.add_error("plan", str(exc))
        return render_detail(request, server, plan_form=form)
    if waiting:
        messages.success(request, f"{server.name}: change to plan {plan.name} requested; an operator will apply it.")
    else:
        messages.success(request, f"{server.name}: plan change request withdrawn.")
    return redirect("server_detail", uuid=server.uuid)


@login_required
@require_POST
def operation_retry(request: HttpRequest, uuid, operation) -> HttpResponse:
    """Retry a failed operation of this server (actions.retry_operation): 404 for an operation
    of another server or tenant, 403 for read-only members and for kinds only operators retry."""
    server = get_server_for_user(request, uuid, act=True)
    failed = access.get_operation(request.user, operation, act=True)
    if failed.server_id != server.pk:
        raise Http404("no such operation")
    try:
        retried = actions.retry_operation(failed, request.user, request=request)
    except actions.ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: {retried.get_kind_display().lower()} is queued again.")
    return redirect("server_detail", uuid=server.uuid)
