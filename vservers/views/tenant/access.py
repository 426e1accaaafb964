"""Who may see and act on which server: the one place the tenant area scopes objects."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render, resolve_url
from django.urls import reverse
from django.utils.http import urlencode

from accounts.models import Membership

from ...models import VirtualServer


def membership(user) -> Membership | None:
    try:
        return user.membership
    except Membership.DoesNotExist:
        return None


def can_act(user) -> bool:
    """Tenant admins act on their servers, read-only members only look. Staff without a
    membership are operators: they may act on any server."""
    member = membership(user)
    if member is None:
        return user.is_staff
    return member.can_act


def get_server_for_user(request: HttpRequest, uuid, *, act: bool = False) -> VirtualServer:
    """The user's live server with this UUID, or 404 (also for other tenants' servers: an
    outsider cannot tell "not yours" from "does not exist"). With ACT, read-only members get
    403 after that check."""
    servers = (
        VirtualServer.objects.restrict(request.user)
        .visible()
        .select_related("tenant", "plan", "template", "requested_plan")
    )
    server = get_object_or_404(servers, uuid=uuid)
    if act and not can_act(request.user):
        raise PermissionDenied("your role in this tenant is read-only")
    return server


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
