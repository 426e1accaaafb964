"""The console's pages and its tickets, in the tenant's area and in the operator's.

A ticket is what the browser's WebSocket presents (consoles.consumers) and the node's broker
redeems, once: a random secret, of which the database keeps only the SHA-256. Issuing one is a
POST (CSRF-checked like every form), after the same rights checks as every other action
(consoles.rights), and is audited."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.addresses import client_ip
from accounts.models import AuditEntry
from vservers.views.operator import operator_required

from . import rights
from .models import ConsoleSession, ticket_hash

TICKET_BYTES = 32


def websocket_path(server) -> str:
    """Where the browser opens the console's WebSocket (consoles.routing)."""
    return f"/ws/servers/{server.uuid}/console/"


def _page(request: HttpRequest, uuid, area: str) -> HttpResponse:
    server = rights.console_server(request.user, uuid, area)
    if area == rights.OPERATOR:
        ticket_url = reverse("op_console_ticket", kwargs={"uuid": server.uuid})
        back = reverse("op_server_detail", kwargs={"uuid": server.uuid})
    else:
        ticket_url = reverse("console_ticket", kwargs={"uuid": server.uuid})
        back = reverse("server_detail", kwargs={"uuid": server.uuid})
    try:
        rights.check(server, rights.ROOT)
        not_running = ""
    except rights.Refused as exc:
        not_running = str(exc)
    return render(request, f"consoles/{area}.html", {
        "server": server,
        "area": area,
        "section": "servers",
        "accounts": rights.accounts(server),
        "ticket_url": ticket_url,
        "back": back,
        "not_running": not_running,
        "idle_minutes": max(1, settings.PANEL_CONSOLE_IDLE_SECONDS // 60),
    })


def _ticket(request: HttpRequest, uuid, area: str) -> HttpResponse:
    account = request.POST.get("account", rights.ROOT)
    server = rights.console_server(request.user, uuid, area)
    try:
        rights.check(server, account)
    except rights.Refused as exc:
        status = 409 if str(exc) == rights.NOT_RUNNING else 400
        return JsonResponse({"error": str(exc)}, status=status)
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    session = ConsoleSession.objects.create(
        user=request.user,  # type: ignore[misc]  # login_required: a User
        server=server,
        account=account,
        ticket_hash=ticket_hash(ticket),
        client_address=client_ip(request),
        expires=timezone.now() + timedelta(seconds=settings.PANEL_CONSOLE_TICKET_SECONDS),
    )
    AuditEntry.record(request, "console.ticket", server, account=account, session=str(session.uuid), area=area)
    return JsonResponse({"ticket": ticket, "websocket": websocket_path(server), "session": str(session.uuid)})


@login_required
@require_GET
def tenant_page(request: HttpRequest, uuid) -> HttpResponse:
    return _page(request, uuid, rights.TENANT)


@login_required
@require_POST
def tenant_ticket(request: HttpRequest, uuid) -> HttpResponse:
    return _ticket(request, uuid, rights.TENANT)


# The operator's area: like its other views, anonymous visitors sign in and everyone else but
# operators gets 403 whatever the method.
@operator_required
@require_GET
def operator_page(request: HttpRequest, uuid) -> HttpResponse:
    return _page(request, uuid, rights.OPERATOR)


@operator_required
@require_POST
def operator_ticket(request: HttpRequest, uuid) -> HttpResponse:
    return _ticket(request, uuid, rights.OPERATOR)
