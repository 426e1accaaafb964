"""The tenant area's side of vservers.access (the rules, shared with the REST API): the
request-taking helpers."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from ... import access
from ...models import VirtualServer

membership = access.membership
can_act = access.can_act


def get_server_for_user(request: HttpRequest, uuid, *, act: bool = False) -> VirtualServer:
    """The user's live server with this UUID, or 404; with ACT, 403 for read-only members
    (vservers.access.get_server)."""
    return access.get_server(request.user, uuid, act=act)


def no_tenant(request: HttpRequest) -> HttpResponse:
    return render(request, "vservers/tenant/no_tenant.html")
