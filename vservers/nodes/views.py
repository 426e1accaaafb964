"""The operator's side of joining: add a node (its first join token, shown once) and make a
new token for a node (voids the one before). The token is in the response's page only,
never in a URL, a message or the audit log; the page is not cached."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import AuditEntry

from ..models import Node
from ..views.operator import operator_required
from . import join
from .forms import NodeAddForm


def _token_page(request: HttpRequest, node: Node, token: str) -> HttpResponse:
    response = render(request, "vservers/operator/node_token.html", {
        "section": "nodes", "node": node, "token": token,
        "join_url": request.build_absolute_uri("/"),
        "expires": node.join_token_expires,
    })
    add_never_cache_headers(response)
    return response


@operator_required
@require_http_methods(["GET", "POST"])
def node_add(request: HttpRequest) -> HttpResponse:
    form = NodeAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        node, token = join.add_node(**form.cleaned_data)
        AuditEntry.record(request, "node.added", node, queue=node.queue_name)
        messages.success(request, f"Node {node.name} is added. Join it with the token below.")
        return _token_page(request, node, token)
    return render(request, "vservers/operator/node_add.html", {"section": "nodes", "form": form})


@operator_required
@require_POST
def node_token(request: HttpRequest, name: str) -> HttpResponse:
    node = get_object_or_404(Node, name=name)
    token = join.new_token(node)
    AuditEntry.record(request, "node.join_token", node)
    return _token_page(request, node, token)
