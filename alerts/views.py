"""The Alerts form of a server, for its tenant (/servers/<uuid>/alerts/) and for operators
(/operator/servers/<uuid>/alerts/). The form lives on the server's page (templatetags.alerts);
these views take its POST, and show it alone with its errors (or to a GET)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from accounts.models import AuditEntry
from vservers import access
from vservers.views.operator import operator_required

from .forms import AlertsForm
from .models import rules_of, save_rules


def _edit(request: HttpRequest, server, *, can_edit: bool, back: str) -> HttpResponse:
    if request.method == "POST" and not can_edit:
        access.require_act(request.user)  # 403, with the read-only reason
    rules = rules_of(server)
    form = AlertsForm(request.POST or None, rules=rules, read_only=not can_edit)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            changes = save_rules(server, form.settings())
            if changes:
                AuditEntry.record(request, "server.alerts", server, changes=changes)
        messages.success(request, f"{server.name}: alerts saved." if changes else f"{server.name}: nothing changed.")
        return redirect(f"{back}#alerts")
    return render(request, "alerts/edit.html", {"server": server, "form": form, "can_edit": can_edit, "back": back,
                                                "action": request.path})


@login_required
@require_http_methods(["GET", "POST"])
def server_alerts(request: HttpRequest, uuid) -> HttpResponse:
    """The tenant's: 404 for a server of another tenant, 403 for a read-only member's POST."""
    server = access.get_server(request.user, uuid)
    return _edit(request, server, can_edit=access.can_act(request.user),
                 back=reverse("server_detail", kwargs={"uuid": server.uuid}))


@operator_required
@require_http_methods(["GET", "POST"])
def op_server_alerts(request: HttpRequest, uuid) -> HttpResponse:
    server = access.operator_server(request.user, uuid)
    if not server.is_live:
        raise Http404("the server is gone")
    return _edit(request, server, can_edit=True, back=reverse("op_server_detail", kwargs={"uuid": server.uuid}))
