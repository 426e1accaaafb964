"""The snapshots card's actions, for the tenant (their own servers, scoped by
vservers.access: anyone else's server or snapshot is 404) and for the operator. Each queues
an operation and goes back to the server's page; a form with errors shows there again."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from .. import access, snapshot_actions
from ..actions import ActionRefused
from ..models import VirtualServer
from ..snapshot_forms import SnapshotRestoreForm, SnapshotTakeForm
from .operator import operator_required

ANCHOR = "snapshots"


def _back(server: VirtualServer, operator: bool) -> HttpResponse:
    url = reverse("op_server_detail" if operator else "server_detail", kwargs={"uuid": server.uuid})
    return redirect(f"{url}#{ANCHOR}")


def _take(request: HttpRequest, server: VirtualServer, operator: bool) -> HttpResponse:
    form = SnapshotTakeForm(request.POST, taken=set(server.snapshots.values_list("name", flat=True)))
    if not form.is_valid():
        errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
        messages.error(request, f"{server.name}: {errors}")
        return _back(server, operator)
    try:
        operation = snapshot_actions.take(server, request.user, request=request, label=form.cleaned_data["label"],
                                          name=form.cleaned_data["name"])
    except ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: taking snapshot {operation.params['snapshot']}.")
    return _back(server, operator)


def _restore(request: HttpRequest, server: VirtualServer, name: str, operator: bool) -> HttpResponse:
    snapshot = snapshot_actions.get_snapshot(server, name)
    form = SnapshotRestoreForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"{server.name}: tick the box to confirm the restore of {snapshot.name}.")
        return _back(server, operator)
    try:
        snapshot_actions.restore(server, snapshot, request.user, request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: putting snapshot {snapshot.name} back.")
    return _back(server, operator)


def _delete(request: HttpRequest, server: VirtualServer, name: str, operator: bool) -> HttpResponse:
    snapshot = snapshot_actions.get_snapshot(server, name)
    try:
        snapshot_actions.delete(server, snapshot, request.user, request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: deleting snapshot {snapshot.name}.")
    return _back(server, operator)


# -- the tenant's -------------------------------------------------------------------------------


@login_required
@require_POST
def snapshot_take(request: HttpRequest, uuid) -> HttpResponse:
    return _take(request, access.get_server(request.user, uuid, act=True), operator=False)


@login_required
@require_POST
def snapshot_restore(request: HttpRequest, uuid, name: str) -> HttpResponse:
    return _restore(request, access.get_server(request.user, uuid, act=True), name, operator=False)


@login_required
@require_POST
def snapshot_delete(request: HttpRequest, uuid, name: str) -> HttpResponse:
    return _delete(request, access.get_server(request.user, uuid, act=True), name, operator=False)


# -- the operator's -----------------------------------------------------------------------------


@operator_required
@require_POST
def op_snapshot_take(request: HttpRequest, uuid) -> HttpResponse:
    return _take(request, access.operator_server(request.user, uuid), operator=True)


@operator_required
@require_POST
def op_snapshot_restore(request: HttpRequest, uuid, name: str) -> HttpResponse:
    return _restore(request, access.operator_server(request.user, uuid), name, operator=True)


@operator_required
@require_POST
def op_snapshot_delete(request: HttpRequest, uuid, name: str) -> HttpResponse:
    return _delete(request, access.operator_server(request.user, uuid), name, operator=True)
