"""One server: its page, its live fragments, its actions and plan changes."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from ... import access, actions
from ...forms import PlanChangeForm
from ...models import ON_NODE, OperationKind
from .access import can_act, get_server_for_user, htmx_fragment
from .detail import SERVER_ACTIONS, available_actions, guest_context, operation_history, queue_operation, render_detail
from .display import usage


@login_required
@require_GET
def server_detail(request: HttpRequest, uuid) -> HttpResponse:
    return render_detail(request, get_server_for_user(request, uuid))


@htmx_fragment
@require_GET
def server_state(request: HttpRequest, uuid) -> HttpResponse:
    server = get_server_for_user(request, uuid)
    context = {
        "server": server,
        "usage_meters": usage(server) if server.sampled_at else [],
        "available": available_actions(server),
        "can_act": can_act(request.user),
        "on_node": server.state in ON_NODE,
    }
    return render(request, "vservers/tenant/_state.html", context)


@htmx_fragment
@require_GET
def server_operations(request: HttpRequest, uuid) -> HttpResponse:
    """The history; the fragment polls itself only while an operation is queued or running.
    The answer that finds nothing pending also brings fresh accounts and services (out of
    band), since the operation that just ended may have changed them."""
    server = get_server_for_user(request, uuid)
    operations, pending = operation_history(server)
    context = {"server": server, "operations": operations, "operations_pending": pending, "can_act": False}
    if not pending and request.headers.get("HX-Request") == "true":
        context.update(guest_context(server), oob=True, can_act=can_act(request.user))
    return render(request, "vservers/tenant/_operations.html", context)


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
