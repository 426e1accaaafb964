"""The tenant area's side of vservers.access (the rules, shared with the REST API): the
request-taking helpers and the htmx fragments' handling of signed-out users and gone servers."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.urls import reverse
from django.utils.http import urlencode

from ... import access
from ...models import VirtualServer

membership = access.membership
can_act = access.can_act


def get_server_for_user(request: HttpRequest, uuid, *, act: bool = False) -> VirtualServer:
    """The user's live server with this UUID, or 404; with ACT, 403 for read-only members
    (vservers.access.get_server)."""
    return access.get_server(request.user, uuid, act=act)


def htmx_fragment(view):
    """For the htmx fragments a page polls: a signed-out user or a server that is gone sends
    the whole page elsewhere (HX-Redirect) instead of the login page or nothing being swapped
    into a table cell. Non-htmx requests get the plain login redirect and 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        is_htmx = request.headers.get("HX-Request") == "true"
        if not request.user.is_authenticated:
            if is_htmx:
                page = urlsplit(request.headers.get("HX-Current-URL", "")).path or request.path
                login = f"{resolve_url(settings.LOGIN_URL)}?{urlencode({'next': page})}"
                return HttpResponse(status=401, headers={"HX-Redirect": login})
            return login_required(view)(request, *args, **kwargs)
        try:
            return view(request, *args, **kwargs)
        except Http404:
            if not is_htmx:
                raise
            return HttpResponse(status=404, headers={"HX-Redirect": reverse("server_list")})

    return wrapper


def no_tenant(request: HttpRequest) -> HttpResponse:
    return render(request, "vservers/tenant/no_tenant.html")
