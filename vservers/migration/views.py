"""The operator's pages: move one server (from its page), evacuate a node (from the node's)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from .. import access
from ..actions import ActionRefused
from ..models import Node
from ..views.operator import operator_required
from .actions import evacuate, request_migration
from .forms import MigrateForm


@operator_required
@require_POST
def server_migrate(request: HttpRequest, uuid) -> HttpResponse:
    server = access.operator_server(request.user, uuid)
    form = MigrateForm(request.POST, server=server)
    if not form.is_valid():
        messages.error(request, f"{server}: " + " ".join(str(e) for errors in form.errors.values() for e in errors))
        return redirect("op_server_detail", uuid=server.uuid)
    try:
        operation = request_migration(server, request.user, target=form.cleaned_data["target"], request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server}: {exc}.")
    else:
        plan = operation.placement  # type: ignore[attr-defined]
        keeps = "it takes new addresses there" if plan.readdress else "it keeps its addresses"
        messages.success(request, f"Moving {server} to node {plan.node.name} is queued ({plan.reason}); {keeps}.")
    return redirect("op_server_detail", uuid=server.uuid)


@operator_required
@require_POST
def node_evacuate(request: HttpRequest, name: str) -> HttpResponse:
    node = get_object_or_404(Node, name=name)
    result = evacuate(node, request.user, request=request)
    text = f"Node {node.name} is draining. {result.message}"
    (messages.warning if result.refused else messages.success)(request, text)
    return redirect("op_node_edit", name=node.name)
