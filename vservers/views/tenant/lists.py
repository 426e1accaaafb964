"""The server list (paged, a live page) and the request for a new server."""

from __future__ import annotations

import functools
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from ... import access, actions
from ...formatting import number
from ...forms import ServerRequestForm
from ...models import IPAddress, State, VirtualServer
from ...nodes import status
from .. import sparklines
from ..live import live_page
from .access import membership, no_tenant
from .display import Meter, percent, quota_meters

# The tenant's server list: rows per page, and how often an open page asks for them again.
PER_PAGE = 50
# What a row shows, fetched as plain values: no model objects, no related objects per row.
ROW_FIELDS = (
    "pk", "uuid", "name", "hostname", "state", "state_reason", "requested_plan_id", "tenant__name",
    "plan__name", "plan__cpus", "plan__memory_mb", "plan__disk_mb", "template__name", "template__display_name",
    "memory_bytes", "disk_used_bytes", "sampled_at", "node__last_seen",
)
_NO_UUID = UUID(int=0)


def _list_servers(user):
    """The servers USER's list shows, in the list's order (a total order, so pages never
    overlap)."""
    return access.servers_for(user).order_by("tenant__name", "name", "pk")


def _row(values: dict, url_pattern: str, addresses: list[str], size) -> dict:
    """One row of the list as plain values for _server_rows.html (no queries); SIZE formats
    a number of bytes (filesizeformat, remembered for the page: most limits repeat)."""
    mib = 1024 * 1024
    online = status.is_online(values["node__last_seen"])  # no node: nothing on one to be unknown
    meters = []
    if values["sampled_at"]:
        memory_limit, disk_limit = values["plan__memory_mb"] * mib, values["plan__disk_mb"] * mib
        for label, used, limit in (
            ("Memory", values["memory_bytes"], memory_limit),
            ("Disk", values["disk_used_bytes"], disk_limit),
        ):
            meter = Meter(label, size(used), size(limit), percent(used, limit))
            meters.append({
                "label": label,
                "percent": meter.percent,
                "value": f"{meter.percent}\xa0%" if meter.percent is not None else meter.used,
                "level": meter.level,
                "title": f"{label}: {meter.used} of {meter.limit}",
            })
    return {
        "url": url_pattern.replace(str(_NO_UUID), str(values["uuid"])),
        "uuid": values["uuid"],
        "name": values["name"],
        "hostname": values["hostname"],
        "tenant": values["tenant__name"],
        # "unknown" while its node is unreachable (vservers.nodes.status).
        "state": status.shown_state(values["state"], online),
        "state_label": status.shown_label(values["state"], online),
        "error": values["state_reason"] if values["state"] == State.ERROR else "",
        "plan_change": values["requested_plan_id"] is not None,
        "addresses": addresses,
        "plan": values["plan__name"],
        "plan_cpus": number(values["plan__cpus"]),
        "plan_memory_mb": values["plan__memory_mb"],
        "template": values["template__display_name"] or values["template__name"],
        "meters": meters,
    }


def server_page(request: HttpRequest) -> tuple[Page, list[dict]]:
    """The page of the list that REQUEST asks for (?page=N; out of range: the nearest) and
    its rows. Four queries whatever the number of servers: the count, the page's rows with
    their plan, template and tenant, the page's addresses, and their CPU history."""
    servers = _list_servers(request.user).values(*ROW_FIELDS)
    page = Paginator(servers, PER_PAGE).get_page(request.GET.get("page"))
    found = list(page.object_list)
    addresses: dict[int, list[str]] = {}
    if found:
        for server_id, address in IPAddress.objects.filter(server_id__in=[v["pk"] for v in found]).values_list(
            "server_id", "address"
        ):
            addresses.setdefault(server_id, []).append(address)
    url_pattern = reverse("server_detail", args=[_NO_UUID])
    size = functools.cache(filesizeformat)
    rows = [_row(values, url_pattern, addresses.get(values["pk"], []), size) for values in found]
    # The CPU sparklines of the whole page from one query of the usage history.
    lines = sparklines.sparklines_for([(values["pk"], float(values["plan__cpus"])) for values in found])
    for values, row in zip(found, rows, strict=True):
        row["cpu_line"] = lines.get(values["pk"])
    return page, rows


def server_rows(request: HttpRequest) -> list[dict]:
    """The rows of the page REQUEST asks for (bench/panel.py times them apart from rendering)."""
    return server_page(request)[1]


def _list_fingerprint(request: HttpRequest) -> tuple:
    """What the list shows that can move (live.live_page), from one aggregate query: every
    row's state, plan change, usage sample and addresses, servers coming and going (which
    moves the quota meters too), and the user's role."""
    member = membership(request.user)
    return (member.role if member else None, PER_PAGE, *_list_servers(request.user).fingerprint())


@login_required
@require_GET
@live_page(_list_fingerprint)
def server_list(request: HttpRequest) -> HttpResponse:
    """The user's servers, PER_PAGE a page (operators: every tenant's); a live page."""
    member = membership(request.user)
    if member is None and not request.user.is_staff:
        return no_tenant(request)
    tenant = member.tenant if member else None
    page, rows = server_page(request)
    context = {
        "page": page,
        "servers": rows,
        # The tenant's rejected requests, with the operator's reason, until dismissed.
        "rejected": (
            VirtualServer.objects.filter(tenant=tenant).rejected_undismissed().order_by("-updated")
            if tenant else []
        ),
        "can_act": member is not None and member.can_act,
        "tenant": tenant,
        "quota_meters": quota_meters(tenant) if tenant else None,
        "can_request": member is not None and member.can_act,
        "show_tenant": request.user.is_staff,  # operators see every tenant's servers
    }
    return render(request, "vservers/tenant/server_list.html", context)


@login_required
@require_POST
def dismiss_rejected(request: HttpRequest, uuid) -> HttpResponse:
    """The tenant has read why a request was rejected: hide it from the list (audited). Only
    the tenant's own members find it (another tenant, and an operator, get 404); read-only
    members get 403."""
    actions.dismiss(access.get_rejected(request.user, uuid), request=request)
    return redirect("server_list")


@login_required
def server_request(request: HttpRequest) -> HttpResponse:
    """Ask for a server; it waits in state "requested" until an operator approves it
    (actions.request_server decides, under the tenant's lock)."""
    member = membership(request.user)
    if member is None:
        return no_tenant(request)
    if not member.can_act:
        raise PermissionDenied("your role in this tenant is read-only")
    tenant = member.tenant
    if request.method == "POST":
        form = ServerRequestForm(request.POST, tenant=tenant)
        if form.is_valid():
            data = form.cleaned_data
            try:
                server = actions.request_server(
                    tenant, request.user, name=data["name"], hostname=data["hostname"], plan=data["plan"],
                    template=data["template"], request=request, ssh_key=data["ssh_key"],
                    password_hash=data.get("root_password_hash", ""),
                )
            except actions.QuotaExceeded as exc:
                form.add_error("plan", str(exc))
            except actions.NameTaken:
                form.add_error("name", "You already have a server with this name.")
            else:
                messages.success(request, f"Requested {server.name}. An operator will set it up shortly.")
                return redirect("server_detail", uuid=server.uuid)
    else:
        form = ServerRequestForm(tenant=tenant)
    meters = quota_meters(tenant)
    context = {"form": form, "tenant": tenant, "quota_meters": meters, "quota_full": meters[0].percent == 100}
    return render(request, "vservers/tenant/server_request.html", context)
