"""The tenant's area: a customer's own servers, what runs inside them, and their history.

Access goes through one helper, `_get_server_for_user`: it scopes by
`VirtualServer.objects.restrict(user)` and answers 404 for anyone else's server, so no view
can forget the tenant check. Read-only members may look but every POST answers 403.
Views never touch the kernel: they record an Operation (vservers.actions) and redirect.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from functools import wraps
from urllib.parse import urlsplit
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import Count, Max
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render, resolve_url
from django.template.defaultfilters import filesizeformat
from django.template.loader import get_template
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from accounts.models import Membership, Tenant

from .. import actions
from ..actions import number
from ..engine import validate
from ..engine.errors import InvalidInput
from ..forms import (
    AccountAddForm,
    AccountKeyForm,
    AccountPasswordForm,
    PlanChangeForm,
    ServerRequestForm,
)
from ..models import (
    ON_NODE,
    GuestAccount,
    IPAddress,
    Operation,
    OperationKind,
    OperationStatus,
    State,
    VirtualServer,
)

SERVER_ACTIONS = {
    "start": OperationKind.START,
    "stop": OperationKind.STOP,
    "restart": OperationKind.RESTART,
    "delete": OperationKind.DELETE,
    "refresh": OperationKind.REFRESH,
}
SERVICE_ACTIONS = {
    "start": OperationKind.SERVICE_START,
    "stop": OperationKind.SERVICE_STOP,
    "restart": OperationKind.SERVICE_RESTART,
}
PENDING = [OperationStatus.QUEUED, OperationStatus.RUNNING]
HISTORY_LENGTH = 20


# -- access ---------------------------------------------------------------------------------


def _membership(user) -> Membership | None:
    try:
        return user.membership
    except Membership.DoesNotExist:
        return None


def _can_act(user) -> bool:
    """Tenant admins act on their servers, read-only members only look. Staff without a
    membership are operators: they may act on any server."""
    membership = _membership(user)
    if membership is None:
        return user.is_staff
    return membership.can_act


def _get_server_for_user(request: HttpRequest, uuid, *, act: bool = False) -> VirtualServer:
    """The user's live server with this UUID, or 404 (also for other tenants' servers: an
    outsider cannot tell "not yours" from "does not exist"). With ACT, read-only members get
    403 after that check."""
    servers = (
        VirtualServer.objects.restrict(request.user)
        .visible()
        .select_related("tenant", "plan", "template", "requested_plan")
    )
    server = get_object_or_404(servers, uuid=uuid)
    if act and not _can_act(request.user):
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


def _no_tenant(request: HttpRequest) -> HttpResponse:
    return render(request, "vservers/tenant/no_tenant.html")


# -- presentation ---------------------------------------------------------------------------


@dataclass
class Meter:
    label: str
    used: str
    limit: str = ""
    percent: int | None = None

    @property
    def level(self) -> str:
        if self.percent is None or self.percent < 75:
            return "ok"
        return "warn" if self.percent < 90 else "danger"


def _percent(used: float, limit: float) -> int | None:
    return min(100, round(100 * used / limit)) if limit else None


def usage(server: VirtualServer) -> list[Meter]:
    """The last sample of the worker against the plan's limits (no queries)."""
    plan = server.plan
    mib = 1024 * 1024
    return [
        Meter("CPU time", f"{server.cpu_seconds:,.1f} s", f"{number(plan.cpus)} CPU"),
        Meter(
            "Memory",
            filesizeformat(server.memory_bytes),
            filesizeformat(plan.memory_mb * mib),
            _percent(server.memory_bytes, plan.memory_mb * mib),
        ),
        Meter("Processes", str(server.pids), str(plan.pids), _percent(server.pids, plan.pids)),
        Meter(
            "Disk",
            filesizeformat(server.disk_used_bytes),
            filesizeformat(plan.disk_mb * mib),
            _percent(server.disk_used_bytes, plan.disk_mb * mib),
        ),
    ]


def quota_meters(tenant: Tenant) -> list[Meter]:
    """What the tenant's live servers take of its quotas (one query)."""
    used = actions.tenant_usage(tenant)
    return [
        Meter("Servers", str(used["servers"]), str(tenant.max_servers), _percent(used["servers"], tenant.max_servers)),
        Meter("CPUs", number(used["cpus"]), number(tenant.max_cpus), _percent(used["cpus"], tenant.max_cpus)),
        Meter(
            "Memory",
            f"{used['memory_mb']} MB",
            f"{tenant.max_memory_mb} MB",
            _percent(used["memory_mb"], tenant.max_memory_mb),
        ),
        Meter(
            "Disk", f"{used['disk_mb']} MB", f"{tenant.max_disk_mb} MB", _percent(used["disk_mb"], tenant.max_disk_mb)
        ),
    ]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _ago(moment) -> str:
    seconds = (timezone.now() - moment).total_seconds()
    return "just now" if seconds < 10 else f"{_duration(seconds)} ago"


def _decorate(server: VirtualServer) -> VirtualServer:
    server.usage = usage(server) if server.sampled_at else []
    server.plan_cpus = number(server.plan.cpus)
    server.sampled_ago = _ago(server.sampled_at) if server.sampled_at else ""
    return server


# The tenant's server list: rows per page, and how often an open page asks for them again.
PER_PAGE = 50
# What a row shows, fetched as plain values: no model objects, no related objects per row.
ROW_FIELDS = (
    "pk", "uuid", "name", "hostname", "state", "state_reason", "requested_plan_id", "tenant__name",
    "plan__name", "plan__cpus", "plan__memory_mb", "plan__disk_mb", "template__name", "template__display_name",
    "memory_bytes", "disk_used_bytes", "sampled_at",
)
STATE_LABELS = dict(State.choices)
_NO_UUID = UUID(int=0)


def _list_servers(user):
    """The servers USER's list shows, in the list's order (a total order, so pages never
    overlap)."""
    return VirtualServer.objects.restrict(user).visible().order_by("tenant__name", "name", "pk")


def _row(values: dict, url_pattern: str, addresses: list[str], size) -> dict:
    """One row of the list as plain values for _server_rows.html (no queries); SIZE formats
    a number of bytes (filesizeformat, remembered for the page: most limits repeat)."""
    mib = 1024 * 1024
    meters = []
    if values["sampled_at"]:
        memory_limit, disk_limit = values["plan__memory_mb"] * mib, values["plan__disk_mb"] * mib
        for label, used, limit in (
            ("Memory", values["memory_bytes"], memory_limit),
            ("Disk", values["disk_used_bytes"], disk_limit),
        ):
            meter = Meter(label, size(used), size(limit), _percent(used, limit))
            meters.append({
                "label": label,
                "percent": meter.percent,
                "value": f"{meter.percent}\xa0%" if meter.percent is not None else meter.used,
                "level": meter.level,
                "title": f"{label}: {meter.used} of {meter.limit}",
            })
    return {
        "url": url_pattern.replace(str(_NO_UUID), str(values["uuid"])),
        "name": values["name"],
        "hostname": values["hostname"],
        "tenant": values["tenant__name"],
        "state": values["state"],
        "state_label": STATE_LABELS.get(values["state"], values["state"]),
        "error": values["state_reason"] if values["state"] == State.ERROR else "",
        "plan_change": values["requested_plan_id"] is not None,
        "addresses": addresses,
        "plan": values["plan__name"],
        "plan_cpus": number(values["plan__cpus"]),
        "plan_memory_mb": values["plan__memory_mb"],
        "template": values["template__display_name"] or values["template__name"],
        "meters": meters,
    }


def _server_page(request: HttpRequest) -> tuple[Page, list[dict]]:
    """The page of the list that REQUEST asks for (?page=N; out of range: the nearest) and
    its rows. Three queries whatever the number of servers: the count, the page's rows with
    their plan, template and tenant, and the page's addresses."""
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
    return page, [_row(values, url_pattern, addresses.get(values["pk"], []), size) for values in found]


def _server_rows(request: HttpRequest) -> list[dict]:
    """The rows of the page REQUEST asks for (bench/panel.py times them apart from rendering)."""
    return _server_page(request)[1]


@functools.cache
def _rows_markup_version() -> str:
    """Part of the rows' ETag: a deployment that changes their markup changes every ETag, so
    no browser keeps rows of the old markup."""
    digest = hashlib.sha256()
    for name in ("vservers/tenant/_server_table.html", "vservers/tenant/_server_rows.html"):
        digest.update(get_template(name).template.source.encode())
    return digest.hexdigest()[:12]


def _rows_etag(request: HttpRequest, can_request: bool) -> str:
    """A validator of the rows fragment, from one aggregate query: whatever a row shows
    changes a server's `updated` (every state change and plan change bumps it), its usage
    sample (`sampled_at`) or its addresses, and servers coming and going change the count.
    The user, their role and the page asked for are part of it too. Not covered: an operator
    renaming a plan, template or tenant; the next full page load shows that."""
    totals = _list_servers(request.user).order_by().aggregate(
        n_servers=Count("pk", distinct=True),
        last_updated=Max("updated"),
        last_sampled=Max("sampled_at"),
        n_addresses=Count("addresses__pk"),
        last_address=Max("addresses__pk"),
    )
    key = "|".join(
        str(part)
        for part in (
            _rows_markup_version(), request.user.pk, request.user.is_staff, can_request, request.GET.get("page", ""),
            PER_PAGE, *totals.values(),
        )
    )
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def _available_actions(server: VirtualServer) -> dict[str, bool]:
    # The same rule request_operation applies; refresh is a guest kind and needs a running server.
    return {
        name: server.may(kind) for name, kind in SERVER_ACTIONS.items()
    }


def _operations(server: VirtualServer) -> tuple[list[Operation], bool]:
    operations = list(server.operations.select_related("requested_by")[:HISTORY_LENGTH])
    for op in operations:
        op.subject = op.params.get("account") or op.params.get("service") or ""
        op.duration = (op.finished - op.started).total_seconds() if op.started and op.finished else None
        op.ago = _ago(op.created)
    return operations, any(op.status in PENDING for op in operations)


def _prefix(form: str, account: str) -> str:
    """Each account's row has its own password and key forms: the prefix keeps their field
    names and ids apart from each other and from the add form's."""
    return f"{form}-{account}"


def _guest_context(server: VirtualServer, bound: dict | None = None) -> dict:
    """Accounts and services as the worker last read them, with their forms; a bound form
    with errors (BOUND: "add" or (form, account name) -> form) replaces the blank one."""
    bound = bound or {}
    rows = []
    accounts = list(server.guest_accounts.all())
    for account in accounts:
        # Reserved system accounts only take a password or key when they are root.
        manageable = not account.is_system or account.uid == 0
        rows.append(
            {
                "account": account,
                "manageable": manageable,
                "deletable": not account.is_system,
                "password_form": bound.get(("password", account.name))
                or AccountPasswordForm(prefix=_prefix("pw", account.name)),
                "key_form": bound.get(("key", account.name)) or AccountKeyForm(prefix=_prefix("key", account.name)),
                "open": ("password", account.name) in bound or ("key", account.name) in bound,
            }
        )
    services = list(server.services.all())
    for service in services:
        service.uptime = _duration(service.seconds) if service.seconds is not None else ""
    add_form = bound.get("add") or AccountAddForm(existing={a.name for a in accounts})
    return {
        "account_rows": rows,
        "add_form": add_form,
        "services": services,
        "guest_running": server.state == State.RUNNING,
    }


def _render_detail(request: HttpRequest, server: VirtualServer, *, plan_form=None, bound=None) -> HttpResponse:
    """The server's page; PLAN_FORM and BOUND carry a submitted form back with its errors."""
    operations, pending = _operations(server)
    context = {
        "server": _decorate(server),
        "addresses": list(server.addresses.select_related("pool")),
        "available": _available_actions(server),
        "can_act": _can_act(request.user),
        "operations": operations,
        "operations_pending": pending,
        "plan_form": plan_form or PlanChangeForm(server=server, auto_id="id_plan_%s"),
        "plan_change_allowed": server.may(OperationKind.CHANGE_PLAN),
        "on_node": server.state in ON_NODE,
        **_guest_context(server, bound),
    }
    return render(request, "vservers/tenant/server_detail.html", context)


def _queue(request: HttpRequest, server: VirtualServer, kind: str, done: str, **params) -> HttpResponse:
    """Record and queue one operation, tell the user, and go back to the server's page."""
    try:
        actions.request_operation(server, kind, request.user, request=request, **params)
    except actions.ActionRefused as exc:
        messages.error(request, f"{server.name}: {exc}.")
    else:
        messages.success(request, f"{server.name}: {done}")
    return redirect("server_detail", uuid=server.uuid)


# -- server list and requests ---------------------------------------------------------------


@login_required
@require_GET
def server_list(request: HttpRequest) -> HttpResponse:
    """The user's servers, PER_PAGE a page (operators: every tenant's). An open page asks
    for its rows again every 5 s (server_list_rows)."""
    membership = _membership(request.user)
    if membership is None and not request.user.is_staff:
        return _no_tenant(request)
    tenant = membership.tenant if membership else None
    page, rows = _server_page(request)
    context = {
        "page": page,
        "servers": rows,
        "tenant": tenant,
        "quota_meters": quota_meters(tenant) if tenant else None,
        "can_request": membership is not None and membership.can_act,
        "show_tenant": request.user.is_staff,  # operators see every tenant's servers
    }
    return render(request, "vservers/tenant/server_list.html", context)


@htmx_fragment
@require_GET
def server_list_rows(request: HttpRequest) -> HttpResponse:
    """The list's table (one page of it, ?page=N) for the page's poll. Answers carry an ETag
    and "Cache-Control: private, no-cache": the browser keeps the last answer and asks with
    If-None-Match, and while nothing has changed the answer is a bodiless 304 after one
    query, with no rows built or rendered. The browser hands its kept copy to htmx as a
    200, so the (unchanged) table is swapped in again."""
    membership = _membership(request.user)
    can_request = membership is not None and membership.can_act
    etag = _rows_etag(request, can_request)
    response = get_conditional_response(request, etag=etag)
    if response is None:
        page, rows = _server_page(request)
        context = {
            "page": page,
            "servers": rows,
            "show_tenant": request.user.is_staff,  # operators see every tenant's servers
            "can_request": can_request,
        }
        response = render(request, "vservers/tenant/_server_table.html", context)
    response["ETag"] = etag
    patch_cache_control(response, private=True, no_cache=True)
    return response


@login_required
def server_request(request: HttpRequest) -> HttpResponse:
    """Ask for a server; it waits in state "requested" until an operator approves it
    (actions.request_server decides, under the tenant's lock)."""
    membership = _membership(request.user)
    if membership is None:
        return _no_tenant(request)
    if not membership.can_act:
        raise PermissionDenied("your role in this tenant is read-only")
    tenant = membership.tenant
    if request.method == "POST":
        form = ServerRequestForm(request.POST, tenant=tenant)
        if form.is_valid():
            data = form.cleaned_data
            try:
                server = actions.request_server(
                    tenant, request.user, name=data["name"], hostname=data["hostname"], plan=data["plan"],
                    template=data["template"], request=request,
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


# -- one server -----------------------------------------------------------------------------


@login_required
@require_GET
def server_detail(request: HttpRequest, uuid) -> HttpResponse:
    return _render_detail(request, _get_server_for_user(request, uuid))


@htmx_fragment
@require_GET
def server_state(request: HttpRequest, uuid) -> HttpResponse:
    server = _get_server_for_user(request, uuid)
    context = {
        "server": _decorate(server),
        "available": _available_actions(server),
        "can_act": _can_act(request.user),
        "on_node": server.state in ON_NODE,
    }
    return render(request, "vservers/tenant/_state.html", context)


@htmx_fragment
@require_GET
def server_operations(request: HttpRequest, uuid) -> HttpResponse:
    """The history; the fragment polls itself only while an operation is queued or running.
    The answer that finds nothing pending also brings fresh accounts and services (out of
    band), since the operation that just ended may have changed them."""
    server = _get_server_for_user(request, uuid)
    operations, pending = _operations(server)
    context = {"server": server, "operations": operations, "operations_pending": pending, "can_act": False}
    if not pending and request.headers.get("HX-Request") == "true":
        context.update(_guest_context(server), oob=True, can_act=_can_act(request.user))
    return render(request, "vservers/tenant/_operations.html", context)


@login_required
@require_POST
def server_action(request: HttpRequest, uuid, kind: str) -> HttpResponse:
    server = _get_server_for_user(request, uuid, act=True)
    if kind not in SERVER_ACTIONS:
        raise Http404("no such action")
    done = {
        "start": "starting.",
        "stop": "stopping.",
        "restart": "restarting.",
        "delete": "deletion queued.",
        "refresh": "reading accounts, services and usage.",
    }[kind]
    return _queue(request, server, SERVER_ACTIONS[kind], done)


@login_required
@require_POST
def plan_change(request: HttpRequest, uuid) -> HttpResponse:
    """Record the plan the tenant wants; an operator applies it (a change_plan operation)."""
    server = _get_server_for_user(request, uuid, act=True)
    if not server.may(OperationKind.CHANGE_PLAN):
        messages.error(request, f"{server.name}: the plan can be changed once the server is running or stopped.")
        return redirect("server_detail", uuid=server.uuid)
    form = PlanChangeForm(request.POST, server=server, auto_id="id_plan_%s")
    if not form.is_valid():
        return _render_detail(request, server, plan_form=form)
    plan = form.cleaned_data["plan"]
    try:
        waiting = actions.request_plan_change(server, plan, request.user, request=request)
    except actions.ActionRefused as exc:
        form.add_error("plan", str(exc))
        return _render_detail(request, server, plan_form=form)
    if waiting:
        messages.success(request, f"{server.name}: change to plan {plan.name} requested; an operator will apply it.")
    else:
        messages.success(request, f"{server.name}: plan change request withdrawn.")
    return redirect("server_detail", uuid=server.uuid)


# -- accounts and services inside a server --------------------------------------------------


def _get_account_for_user(server: VirtualServer, name: str, *, system_ok: bool = False) -> GuestAccount:
    """An account of SERVER as the worker last listed it, or 404: users act on the accounts
    they see. System accounts other than root are the template's, not the tenant's."""
    account = get_object_or_404(server.guest_accounts, name=name)
    if account.is_system and not (system_ok and account.uid == 0):
        raise PermissionDenied(f"{name} is a system account")
    # The guest's root names accounts as he likes; the engine acts only on names it accepts.
    _engine_name(validate.user_name, account.name, allow_reserved=True)
    return account


def _engine_name(check, name: str, **kwargs) -> None:
    try:
        check(name, **kwargs)
    except InvalidInput as exc:
        raise PermissionDenied(f"the panel cannot manage this: {exc}") from None


@login_required
@require_POST
def account_add(request: HttpRequest, uuid) -> HttpResponse:
    server = _get_server_for_user(request, uuid, act=True)
    existing = set(server.guest_accounts.values_list("name", flat=True))
    form = AccountAddForm(request.POST, existing=existing)
    if not form.is_valid():
        return _render_detail(request, server, bound={"add": form})
    data = form.cleaned_data
    params = {"account": data["user"]}
    if data["password"]:
        params["password"] = data["password"]  # only in the operation's params; finish() wipes it
    if data["ssh_key"]:
        params["ssh_key"] = data["ssh_key"]
    return _queue(request, server, OperationKind.ACCOUNT_ADD, f"adding account {data['user']}.", **params)


@login_required
@require_POST
def account_delete(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = _get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name).name
    return _queue(request, server, OperationKind.ACCOUNT_DELETE, f"deleting account {name}.", account=name)


@login_required
@require_POST
def account_password(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = _get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name, system_ok=True).name
    form = AccountPasswordForm(request.POST, prefix=_prefix("pw", name))
    if not form.is_valid():
        return _render_detail(request, server, bound={("password", name): form})
    password = form.cleaned_data["password"]
    return _queue(
        request,
        server,
        OperationKind.ACCOUNT_PASSWORD,
        f"setting the password of {name}.",
        account=name,
        password=password,
    )


@login_required
@require_POST
def account_key(request: HttpRequest, uuid, name: str) -> HttpResponse:
    server = _get_server_for_user(request, uuid, act=True)
    name = _get_account_for_user(server, name, system_ok=True).name
    form = AccountKeyForm(request.POST, prefix=_prefix("key", name))
    if not form.is_valid():
        return _render_detail(request, server, bound={("key", name): form})
    return _queue(
        request,
        server,
        OperationKind.ACCOUNT_KEY,
        f"adding an SSH key for {name}.",
        account=name,
        ssh_key=form.cleaned_data["ssh_key"],
    )


@login_required
@require_POST
def service_action(request: HttpRequest, uuid, name: str, action: str) -> HttpResponse:
    server = _get_server_for_user(request, uuid, act=True)
    if action not in SERVICE_ACTIONS:
        raise Http404("no such service action")
    name = get_object_or_404(server.services, name=name).name  # as the worker last listed them
    _engine_name(validate.service_name, name)
    verb = {"start": "starting", "stop": "stopping", "restart": "restarting"}[action]
    return _queue(request, server, SERVICE_ACTIONS[action], f"{verb} service {name}.", service=name)
