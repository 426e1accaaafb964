"""Reinstall, rescue mode and root's password from a server's page (the card
templates/vservers/_rescue_card.html, vservers.templatetags.panel_rescue). The same views serve
the tenant's page and the operator's: the server is found through vservers.access (another
tenant's: 404, a read-only member: 403; operators see every live server), and the user goes
back to the page they came from. A form that does not pass says why, on that page."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from .. import access, actions_rescue
from ..actions import ActionRefused
from ..forms_rescue import ReinstallForm, RootPasswordForm
from ..models import VirtualServer

ANCHOR = "#rescue"


def _server(request: HttpRequest, uuid) -> VirtualServer:
    return access.get_server(request.user, uuid, act=True)


def _back(request: HttpRequest, server: VirtualServer) -> HttpResponse:
    operator = access.is_operator(request.user) and access.membership(request.user) is None
    name = "op_server_detail" if operator else "server_detail"
    return redirect(reverse(name, kwargs={"uuid": server.uuid}) + ANCHOR)


def _queue(request: HttpRequest, server: VirtualServer, ask, done: str) -> HttpResponse:
    try:
        ask()
    except ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: {done}")
    return _back(request, server)


def _refused(request: HttpRequest, server: VirtualServer, form) -> HttpResponse:
    for field, errors in form.errors.items():
        label = form.fields[field].label if field in form.fields else ""
        for error in errors:
            messages.error(request, f"{server.name}: {label + ': ' if label else ''}{error}")
    return _back(request, server)


@login_required
@require_POST
def reinstall(request: HttpRequest, uuid) -> HttpResponse:
    server = _server(request, uuid)
    form = ReinstallForm(request.POST, server=server)
    if not form.is_valid():
        return _refused(request, server, form)
    data = form.cleaned_data
    return _queue(request, server, lambda: actions_rescue.reinstall(
        server, request.user, data["template"], snapshot_first=bool(data.get("snapshot_first")), request=request,
    ), f"reinstall from {data['template']} queued" + (", after a snapshot." if data.get("snapshot_first") else "."))


@login_required
@require_POST
def rescue_enter(request: HttpRequest, uuid) -> HttpResponse:
    server = _server(request, uuid)
    return _queue(request, server, lambda: actions_rescue.rescue_enter(server, request.user, request=request),
                  "starting the rescue system; the server's files will be at /mnt.")


@login_required
@require_POST
def rescue_leave(request: HttpRequest, uuid) -> HttpResponse:
    server = _server(request, uuid)
    return _queue(request, server, lambda: actions_rescue.rescue_leave(server, request.user, request=request),
                  "leaving rescue: starting its own system.")


@login_required
@require_POST
def root_password(request: HttpRequest, uuid) -> HttpResponse:
    server = _server(request, uuid)
    form = RootPasswordForm(request.POST, prefix=RootPasswordForm.PAGE_PREFIX)
    if not form.is_valid():
        return _refused(request, server, form)
    return _queue(request, server, lambda: actions_rescue.root_password(
        server, request.user, form.cleaned_data["password"], request=request), "setting root's password.")
