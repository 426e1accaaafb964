"""The operator's area (/operator/): approvals, every server and operation, and the catalogue
(tenants and members, plans, templates, address pools, nodes).

Every view is for staff users only (operator_required). Changes go through vservers.actions
where one exists, so the checks and the audit entry are the same as for tenants; everything
else records its own AuditEntry. A refused action becomes a message, never an error page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Page, Paginator
from django.db.models import Count, Exists, Max, OuterRef, Prefetch, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import two_factor
from accounts.models import AuditEntry, Membership, Tenant

from .. import access, actions, snapshot_actions
from ..actions import ActionRefused
from ..capacity import Allocation, NodeCapacity, approval_warnings, node_capacities, request_amounts
from ..models import (
    TERMINAL,
    BuiltTemplate,
    IPAddress,
    IPPool,
    Node,
    Operation,
    OperationKind,
    Plan,
    State,
    Template,
    TemplateBuild,
    VirtualServer,
)
from ..nodes import status as node_status
from ..operator_forms import (
    BULK_LABELS,
    ApproveForm,
    AuditFilterForm,
    BulkForm,
    MemberAddForm,
    MemberRoleForm,
    NodeForm,
    OperationFilterForm,
    PlanForm,
    PoolForm,
    PoolShareForm,
    RejectForm,
    ServerCreateForm,
    ServerFilterForm,
    TemplateForm,
    TenantForm,
)
from . import sparklines
from .live import live_page, minute, operation_changes, server_changes

PER_PAGE = 50
LIVE_STATES = [s for s in State if s not in TERMINAL]
# What an operator may do to a server directly; the rest goes through approvals.
DIRECT_KINDS = [OperationKind.START, OperationKind.STOP, OperationKind.RESTART, OperationKind.DELETE]


def operator_required(view: Callable) -> Callable:
    """Staff only: anonymous users go to the login page, everyone else gets 403.

    Put it outermost, above require_POST and friends, so that a tenant learns nothing about
    an operator URL, not even which methods it takes."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        access.require_operator(request.user)
        return view(request, *args, **kwargs)

    return wrapper


# -- helpers -------------------------------------------------------------------------------


def _page(request: HttpRequest, items: QuerySet) -> Page:
    return Paginator(items, PER_PAGE).get_page(request.GET.get("page"))


def _back(request: HttpRequest, fallback: str, *args, **kwargs) -> HttpResponse:
    """Redirect to the form's "next" (a page of this site) or to FALLBACK."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return redirect(target)
    return redirect(fallback, *args, **kwargs)


def _get_server(request: HttpRequest, uuid) -> VirtualServer:
    return access.operator_server(request.user, uuid)


def _percent(used, total) -> int:
    return min(100, round(100 * float(used) / float(total))) if total else 0


class _Shows:
    """A row of a table: its own figures, and the model's fields for the template (which
    reads `row.name` as the node's or pool's name)."""

    subject: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.subject, name)


@dataclass
class PoolUsage(_Shows):
    subject: IPPool
    used: int

    @property
    def capacity(self) -> int:
        return self.subject.size

    @property
    def free(self) -> int:
        return self.capacity - self.used

    @property
    def percent(self) -> int:
        return _percent(self.used, self.capacity)

    @property
    def usage_text(self) -> str:
        return f"{self.used} of {self.capacity}"


@dataclass
class NodeUsage(_Shows):
    """A node with what its live servers' plans add up to (vservers.capacity), and its pools."""

    subject: Node
    capacity: NodeCapacity
    pool_list: list[PoolUsage] = field(default_factory=list)

    @property
    def server_count(self) -> int:
        return self.capacity.server_count

    @property
    def cpus_allocated(self) -> Decimal:
        return self.capacity.cpus

    @property
    def memory_allocated(self) -> int:
        return self.capacity.memory_mb

    @property
    def disk_allocated(self) -> int:
        return self.capacity.disk_mb

    @property
    def resources(self) -> list[Allocation]:
        return self.capacity.allocations()

    @property
    def cpu_percent(self) -> int:
        return self.capacity.cpu.percent

    @property
    def memory_percent(self) -> int:
        return self.capacity.memory.percent

    @property
    def disk_percent(self) -> int:
        return self.capacity.disk.percent


def nodes_with_usage() -> list[NodeUsage]:
    """Active and inactive nodes with what their live servers' plans add up to (one query)."""
    return [NodeUsage(found.node, found) for found in node_capacities()]


def _pools_with_usage(pools: QuerySet[IPPool]) -> list[PoolUsage]:
    return [PoolUsage(pool, pool.used)
            for pool in pools.select_related("node").prefetch_related("shared_with").annotate(used=Count("addresses"))]


# -- live pages' fingerprints (views/live.py): what each shows that can move ----------------


def _everything(request: HttpRequest) -> tuple:
    """Every server and operation: the dashboard's counts, nodes and recent operations, and
    the approvals (whose capacity figures depend on every server); which nodes are unreachable
    now (a heartbeat stops: no row changes, the clock does)."""
    return (*VirtualServer.objects.all().fingerprint(nodes=True), *operation_changes(Operation.objects.all()))


def _servers_shown(request: HttpRequest) -> tuple:
    return ServerFilterForm(request.GET or None).filter(VirtualServer.objects.all()).fingerprint()


def _server_shown(request: HttpRequest, uuid) -> tuple:
    found = server_changes(VirtualServer.objects.filter(uuid=uuid))
    if found is None:
        raise Http404("no such server")
    return (*found, minute())


def _templates_shown(request: HttpRequest) -> tuple:
    """The Templates page: the builds (queued, started, finished), and from one more query the
    templates (added, toggled), what the nodes have built (a new version moves built_at) and
    how many live servers use them. Counts are distinct: the two joins multiply the rows."""
    catalog = Template.objects.order_by().aggregate(
        n=Count("pk", distinct=True), last=Max("pk"),
        active=Count("pk", filter=Q(is_active=True), distinct=True),
        n_built=Count("built", distinct=True), last_built=Max("built__built_at"),
        servers=Count("servers", filter=Q(servers__state__in=LIVE_STATES), distinct=True),
    )
    return (*operation_changes(TemplateBuild.objects.all()), *catalog.values())


def _operations_shown(request: HttpRequest) -> tuple:
    return operation_changes(OperationFilterForm(request.GET or None).filter(Operation.objects.all()))


# -- dashboard and approvals ---------------------------------------------------------------


@operator_required
@live_page(_everything)
def dashboard(request: HttpRequest) -> HttpResponse:
    counts = VirtualServer.objects.aggregate(
        awaiting=Count("pk", filter=Q(state=State.REQUESTED)),
        # Running as far as anyone knows: on a node that is online (vservers.nodes.status).
        running=Count("pk", filter=Q(state=State.RUNNING, node__last_seen__gte=node_status.cutoff())),
        errors=Count("pk", filter=Q(state=State.ERROR)),
        unknown=Count("pk", filter=node_status.unknown_servers()),
        plan_changes=Count("pk", filter=Q(requested_plan__isnull=False, state__in=LIVE_STATES)),
    )
    recent = Operation.objects.select_related("server__tenant", "requested_by")[:10]
    return render(request, "vservers/operator/dashboard.html", {
        "section": "dashboard", "counts": counts, "nodes": nodes_with_usage(), "operations": recent,
    })


@operator_required
@live_page(_everything)
def approvals(request: HttpRequest) -> HttpResponse:
    requested = (
        VirtualServer.objects.filter(state=State.REQUESTED)
        .select_related("tenant", "plan", "template", "requested_by")
        .order_by("created", "pk")
    )
    plan_changes = (
        VirtualServer.objects.filter(requested_plan__isnull=False, state__in=LIVE_STATES)
        .select_related("tenant", "plan", "requested_plan", "node")
        .order_by("updated", "pk")
    )
    active = node_capacities(Node.objects.filter(is_active=True).order_by("pk"))
    return render(request, "vservers/operator/approvals.html", {
        "section": "approvals",
        "requested": [Waiting(server, _warnings(server, active)) for server in requested],
        "plan_changes": [Waiting(server, _warnings(server, active)) for server in plan_changes],
        "nodes": [found.node for found in active],
    })


@dataclass
class Waiting(_Shows):
    """A request or plan change waiting for approval, with what approving it would pass."""

    subject: VirtualServer
    capacity_warnings: list[str]


def _warnings(server: VirtualServer, active: list[NodeCapacity]) -> list[str]:
    """What approving SERVER's request would pass on each active node the operator may choose
    (each warning names its node), or its plan change on its own node."""
    if server.state == State.REQUESTED:
        return [w for node in active for w in node.warnings(request_amounts(server))]
    return [w for node in active if node.node.pk == server.node_id for w in node.warnings(request_amounts(server))]


@operator_required
@require_POST
def approve(request: HttpRequest, uuid) -> HttpResponse:
    server = _get_server(request, uuid)
    form = ApproveForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"{server}: choose an active node.")
        return _back(request, "op_approvals")
    try:
        approval = actions.approve_placed(server, request.user, node=form.cleaned_data["node"], request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server} was not approved: {exc}.")
    else:
        addresses = ", ".join(server.ip_list())
        messages.success(request, f"{server} is approved on {server.node} with {addresses}; provisioning is queued. "
                                  f"{approval.message}.")
        for warning in approval.warnings:
            messages.warning(request, f"{warning}.")
    return _back(request, "op_approvals")


@operator_required
@require_POST
def reject(request: HttpRequest, uuid) -> HttpResponse:
    server = _get_server(request, uuid)
    form = RejectForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"{server} was not rejected: give the tenant a reason.")
        return _back(request, "op_approvals")
    try:
        actions.reject(server, form.cleaned_data["reason"], request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server} was not rejected: {exc}.")
    else:
        messages.success(request, f"{server} is rejected.")
    return _back(request, "op_approvals")


@operator_required
@require_POST
def plan_change(request: HttpRequest, uuid, decision: str) -> HttpResponse:
    """Approve (queue a change_plan operation) or reject a tenant's plan change request
    (actions.decide_plan_change)."""
    if decision not in ("approve", "reject"):
        raise Http404("no such decision")
    server = _get_server(request, uuid)
    if server.requested_plan is None:
        messages.info(request, f"{server} has no plan change waiting.")
        return _back(request, "op_approvals")
    warnings = approval_warnings(server, server.node, "This puts") if decision == "approve" else []
    try:
        plan = actions.decide_plan_change(server, decision == "approve", request.user, request=request)
    except ActionRefused as exc:
        messages.error(request, f"The plan change of {server} was not decided: {exc}.")
    else:
        if decision == "approve":
            messages.success(request, f"{server} moves to plan {plan.name}; the change is queued.")
            for warning in warnings:
                messages.warning(request, f"{warning}.")
        else:
            messages.success(request, f"The change of {server} to plan {plan.name} is rejected.")
    return _back(request, "op_approvals")


# -- servers -------------------------------------------------------------------------------


def _server_listing() -> QuerySet[VirtualServer]:
    return (
        VirtualServer.objects.select_related("tenant", "plan", "template", "node")
        .prefetch_related("addresses")
        .order_by("tenant__name", "name", "pk")
    )


def _filter_items(data) -> list[tuple[str, str]]:
    """The server list's filter as given in DATA (GET or the bulk form's POST), to carry along."""
    return [(name, data[name]) for name in ServerFilterForm.base_fields if data.get(name)]


@operator_required
@live_page(_servers_shown)
def servers(request: HttpRequest) -> HttpResponse:
    form = ServerFilterForm(request.GET or None)
    found = form.filter(_server_listing())
    page = _page(request, found)
    page.object_list = list(page.object_list)
    # Each row's CPU sparkline, from one query for the page.
    lines = sparklines.sparklines_for([(server.pk, float(server.plan.cpus)) for server in page.object_list])
    for server in page.object_list:
        server.cpu_line = lines.get(server.pk)
    return render(request, "vservers/operator/servers.html", {
        "section": "servers", "form": form, "page": page, "filters": _filter_items(request.GET),
        "bulk_actions": BULK_LABELS,
    })


@operator_required
@require_POST
def servers_bulk(request: HttpRequest) -> HttpResponse:
    """A bulk action on the server list: each server chosen goes through the same action as a
    click on its own page (actions.bulk). Without a confirmed count, the answer is a page that
    asks once, naming it ("Stop 4 servers?"); the page's script asks the same in a dialog and
    says it did (confirmed), so either way there is exactly one question."""
    filters = _filter_items(request.POST)
    back = reverse("op_servers") + (f"?{urlencode(filters)}" if filters else "")
    form = BulkForm(request.POST)
    if not form.is_valid():
        for error in form.non_field_errors() or ["Choose one of the actions."]:
            messages.error(request, str(error))
        return redirect(back)
    listing = _server_listing()
    chosen = form.chosen(listing, ServerFilterForm(request.POST).filter(listing))
    if not chosen:
        messages.info(request, "No server matches any more; nothing was done.")
        return redirect(back)
    if not form.cleaned_data["confirmed"]:
        return render(request, "vservers/operator/servers_bulk_confirm.html", {
            "section": "servers", "question": form.question(len(chosen)), "servers": chosen, "bulk": form,
            "filters": filters, "back": back,
        })
    result = actions.bulk(chosen, form.cleaned_data["action"], request.user, request=request)
    if result.queued:
        count = len(result.queued)
        messages.success(request, f"{form.label}: {count} server{'s' if count != 1 else ''} queued.")
    if result.refused:
        refusals = "; ".join(f"{server} ({reason})" for server, reason in result.refused)
        messages.warning(request, f"{len(result.refused)} refused: {refusals}.")
    return redirect(back)


@operator_required
@live_page(_server_shown)
def server_detail(request: HttpRequest, uuid) -> HttpResponse:
    server = _get_server(request, uuid)
    operations = server.operations.select_related("requested_by")[:PER_PAGE]
    kinds = [kind for kind in DIRECT_KINDS if server.may(kind)]
    nodes = node_capacities(Node.objects.filter(is_active=True).order_by("pk"))
    waiting = server.state == State.REQUESTED or (server.requested_plan_id is not None and server.is_live)
    return render(request, "vservers/operator/server_detail.html", {
        "section": "servers",
        "server": server,
        "addresses": server.addresses.select_related("pool"),
        "operations": operations,
        "kinds": kinds,
        "nodes": [found.node for found in nodes],
        "capacity_warnings": _warnings(server, nodes) if waiting else [],
    })


@operator_required
@require_POST
def server_action(request: HttpRequest, uuid, kind: str) -> HttpResponse:
    if kind not in DIRECT_KINDS:
        raise Http404("no such action")
    server = _get_server(request, uuid)
    try:
        actions.request_operation(server, kind, request.user, request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server}: {exc}.")
    else:
        messages.success(request, f"{OperationKind(kind).label} of {server} is queued.")
    return _back(request, "op_server_detail", uuid=server.uuid)


@operator_required
@require_http_methods(["GET", "POST"])
def server_create(request: HttpRequest) -> HttpResponse:
    """An operator's server for a tenant, requested and approved at once (actions.create_server)."""
    initial = {}
    if request.GET.get("tenant"):
        initial["tenant"] = Tenant.objects.filter(slug=request.GET["tenant"]).first()
    form = ServerCreateForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            server = actions.create_server(
                request.user, tenant=data["tenant"], name=data["name"], hostname=data["hostname"],
                plan=data["plan"], template=data["template"], node=data["node"], autostart=data["autostart"],
                request=request,
            )
        except actions.NameTaken:
            form.add_error("name", "this tenant has a server of this name already")
        except ActionRefused as exc:
            form.add_error(None, f"The server could not be approved, so it was not created: {exc}.")
        else:
            messages.success(request, f"{server} is created and approved; provisioning is queued.")
            return redirect("op_server_detail", uuid=server.uuid)
    return render(request, "vservers/operator/server_form.html", {"section": "servers", "form": form})


# -- tenants and members -------------------------------------------------------------------


@operator_required
@require_http_methods(["GET", "POST"])
def tenants(request: HttpRequest) -> HttpResponse:
    form = TenantForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        tenant = actions.create_tenant(form, request=request)
        messages.success(request, f"Tenant {tenant} is created.")
        return redirect("op_tenant_detail", uuid=tenant.uuid)
    listed = Tenant.objects.annotate(
        server_count=Count("servers", filter=Q(servers__state__in=LIVE_STATES), distinct=True),
        member_count=Count("memberships", distinct=True),
    )
    return render(request, "vservers/operator/tenants.html", {"section": "tenants", "tenants": listed, "form": form})


@operator_required
@require_http_methods(["GET", "POST"])
def tenant_detail(request: HttpRequest, uuid) -> HttpResponse:
    tenant = get_object_or_404(Tenant, uuid=uuid)
    form = TenantForm(request.POST or None, instance=tenant)
    if request.method == "POST" and form.is_valid():
        actions.update_tenant(form, request=request)
        messages.success(request, f"Tenant {tenant} is saved.")
        return redirect("op_tenant_detail", uuid=tenant.uuid)
    servers = tenant.servers.select_related("plan", "node").prefetch_related("addresses").order_by("name", "pk")
    used = actions.tenant_usage(tenant)
    snaps = snapshot_actions.snapshot_mb(tenant)
    return render(request, "vservers/operator/tenant_detail.html", {
        "section": "tenants",
        "tenant": tenant,
        "form": form,
        "roles": Membership.ROLES,
        "members": tenant.memberships.select_related("user").order_by("user__username").annotate(
            two_factor=Exists(TOTPDevice.objects.filter(user_id=OuterRef("user_id"), confirmed=True))
        ),
        "servers": servers,
        "usage": {"servers": used["servers"], "cpus": used["cpus"], "memory": used["memory_mb"],
                  "disk": used["disk_mb"] + snaps, "snapshots": snaps},
    })


@operator_required
@require_http_methods(["GET", "POST"])
@never_cache
def member_add(request: HttpRequest, uuid) -> HttpResponse:
    """A new user in TENANT. A generated password is shown on the answer to the POST and
    nowhere else: not stored, not in a message, not cached."""
    tenant = get_object_or_404(Tenant, uuid=uuid)
    form = MemberAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        membership, generated = actions.add_member(form, tenant, request=request)
        return render(request, "vservers/operator/member_created.html", {
            "section": "tenants", "tenant": tenant, "membership": membership, "password": generated,
        })
    return render(request, "vservers/operator/member_form.html", {"section": "tenants", "tenant": tenant, "form": form})


def _membership(uuid, user_id: int) -> Membership:
    return get_object_or_404(Membership.objects.select_related("user", "tenant"), tenant__uuid=uuid, user_id=user_id)


@operator_required
@require_POST
def member_remove(request: HttpRequest, uuid, user_id: int) -> HttpResponse:
    """Take a member out of the tenant (actions.remove_member: their account is disabled; the
    last admin stays)."""
    membership = _membership(uuid, user_id)
    try:
        actions.remove_member(membership, request=request)
    except ActionRefused as exc:
        messages.error(request, f"{membership.user} was not removed: {exc}.")
    else:
        messages.success(request, f"{membership.user} is removed from {membership.tenant}; their account is disabled.")
    return redirect("op_tenant_detail", uuid=membership.tenant.uuid)


@operator_required
@require_POST
def member_role(request: HttpRequest, uuid, user_id: int) -> HttpResponse:
    """Make a member an admin or read-only (actions.set_member_role: the last admin stays)."""
    membership = _membership(uuid, user_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"The role of {membership.user} was not changed: choose a role.")
        return redirect("op_tenant_detail", uuid=membership.tenant.uuid)
    try:
        changed = actions.set_member_role(membership, form.cleaned_data["role"], request=request)
    except ActionRefused as exc:
        messages.error(request, f"The role of {membership.user} was not changed: {exc}.")
    else:
        if changed:
            messages.success(request, f"{membership.user} is now {membership.get_role_display().lower()}.")
        else:
            messages.info(request, f"{membership.user} already has this role.")
    return redirect("op_tenant_detail", uuid=membership.tenant.uuid)


@operator_required
@require_POST
def member_two_factor_reset(request: HttpRequest, uuid, user_id: int) -> HttpResponse:
    """A member lost the phone: their authenticator and recovery codes go, their sessions
    end, and they sign in with the password alone until they set it up again. Audited
    (accounts.two_factor.reset). Members of tenants only: operators' own second factor is
    not for another operator to remove."""
    membership = get_object_or_404(Membership.objects.select_related("user", "tenant"), tenant__uuid=uuid,
                                   user_id=user_id)
    if two_factor.reset(request, membership.user):
        messages.success(request, f"Two-factor sign-in of {membership.user} is reset; their sessions are ended.")
    else:
        messages.info(request, f"{membership.user} had no two-factor sign-in.")
    return redirect("op_tenant_detail", uuid=membership.tenant.uuid)


# -- plans and templates -------------------------------------------------------------------


@operator_required
@require_http_methods(["GET", "POST"])
def plans(request: HttpRequest) -> HttpResponse:
    form = PlanForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        plan = actions.create_plan(form, request=request)
        messages.success(request, f"Plan {plan.name} is created.")
        return redirect("op_plans")
    listed = Plan.objects.annotate(server_count=Count("servers", filter=Q(servers__state__in=LIVE_STATES)))
    return render(request, "vservers/operator/plans.html", {"section": "plans", "plans": listed, "form": form})


@operator_required
@require_http_methods(["GET", "POST"])
def plan_edit(request: HttpRequest, uuid) -> HttpResponse:
    plan = get_object_or_404(Plan, uuid=uuid)
    form = PlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        actions.update_plan(form, request=request)
        messages.success(request, f"Plan {plan.name} is saved; running servers keep their limits until changed.")
        return redirect("op_plans")
    return render(request, "vservers/operator/plan_form.html", {"section": "plans", "plan": plan, "form": form})


@operator_required
@require_http_methods(["GET", "POST"])
@live_page(_templates_shown)
def templates(request: HttpRequest) -> HttpResponse:
    form = TemplateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        template = actions.create_template(form, request=request)
        messages.success(request, f"Template {template.name} is added.")
        return redirect("op_templates")
    listed = list(
        Template.objects.annotate(server_count=Count("servers", filter=Q(servers__state__in=LIVE_STATES)))
        .prefetch_related(Prefetch("built", queryset=BuiltTemplate.objects.select_related("node")))
    )
    # The latest build of each template on each node (what the worker recorded on its row).
    latest = TemplateBuild.objects.values("template_id", "node_id").annotate(last=Max("pk")).values("last")
    builds: dict[int, list[TemplateBuild]] = {}
    for build in TemplateBuild.objects.filter(pk__in=latest).select_related("node").order_by("node__name"):
        builds.setdefault(build.template_id, []).append(build)
    for template in listed:
        template.last_builds = builds.get(template.pk, [])  # type: ignore[attr-defined]
    return render(request, "vservers/operator/templates.html", {
        "section": "templates", "templates": listed, "form": form,
    })


@operator_required
@require_POST
def template_build(request: HttpRequest, name: str) -> HttpResponse:
    """Build (or rebuild) a template on every active node, as a job of each node's worker
    (actions.build_template); the Templates page shows how it went."""
    template = get_object_or_404(Template, name=name)
    try:
        outcome = actions.build_template(template, request.user, request=request)
    except ActionRefused as exc:
        messages.error(request, f"Template {template.name} is not built: {exc}.")
        return redirect("op_templates")
    queued = [o.node.name for o in outcome if isinstance(o, TemplateBuild)]
    refused = [o for o in outcome if isinstance(o, str)]
    if queued:
        messages.success(request, f"A build of {template.name} is queued on {', '.join(queued)}.")
    if refused:
        messages.info(request, f"{template.name}: {'; '.join(refused)}.")
    return redirect("op_templates")


@operator_required
@require_POST
def template_toggle(request: HttpRequest, name: str) -> HttpResponse:
    template = get_object_or_404(Template, name=name)
    # Flip what this request read (a compare-and-swap): two clicks make two flips.
    template = actions.set_template_active(template, not template.is_active, request=request)
    state = "offered to tenants" if template.is_active else "no longer offered for new servers"
    messages.success(request, f"Template {template.name} is {state}.")
    return redirect("op_templates")


# -- address pools and nodes ---------------------------------------------------------------


@operator_required
@require_http_methods(["GET", "POST"])
def pools(request: HttpRequest) -> HttpResponse:
    form = PoolForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        pool = actions.create_pool(form, request=request)
        messages.success(request, f"Pool {pool} is created.")
        return redirect("op_pool_detail", pk=pool.pk)
    return render(request, "vservers/operator/pools.html", {
        "section": "pools", "pools": _pools_with_usage(IPPool.objects.all()), "form": form,
    })


@operator_required
@require_http_methods(["GET", "POST"])
def pool_detail(request: HttpRequest, pk: int) -> HttpResponse:
    found = _pools_with_usage(IPPool.objects.filter(pk=pk))
    if not found:
        raise Http404("no such pool")
    pool = found[0]
    share = PoolShareForm(request.POST or None, instance=pool.subject)
    share.fields["shared_with"].queryset = Node.objects.exclude(pk=pool.subject.node_id)  # type: ignore[attr-defined]
    if request.method == "POST" and share.is_valid():
        actions.share_pool(share, request=request)
        messages.success(request, f"Pool {pool.subject.name} is saved.")
        return redirect("op_pool_detail", pk=pk)
    allocations = IPAddress.objects.filter(pool=pool.subject).select_related("server__tenant", "server__node").order_by(
        "allocated", "pk")
    return render(request, "vservers/operator/pool_detail.html", {
        "section": "pools", "pool": pool, "page": _page(request, allocations), "form": share,
    })


@operator_required
def nodes(request: HttpRequest) -> HttpResponse:
    pools_by_node: dict[int, list[PoolUsage]] = {}
    for pool in _pools_with_usage(IPPool.objects.all()):
        pools_by_node.setdefault(pool.subject.node_id, []).append(pool)
    listed = nodes_with_usage()
    for node in listed:
        node.pool_list = pools_by_node.get(node.subject.pk, [])
    return render(request, "vservers/operator/nodes.html", {"section": "nodes", "nodes": listed})


@operator_required
@require_http_methods(["GET", "POST"])
def node_edit(request: HttpRequest, name: str) -> HttpResponse:
    """A node's physical capacity and overcommit ratios (also in the admin)."""
    node = get_object_or_404(Node, name=name)
    form = NodeForm(request.POST or None, instance=node)
    if request.method == "POST" and form.is_valid():
        actions.update_node(form, request=request)
        messages.success(request, f"Node {node.name} is saved.")
        return redirect("op_nodes")
    return render(request, "vservers/operator/node_form.html", {"section": "nodes", "node": node, "form": form})


# -- logs ----------------------------------------------------------------------------------


@operator_required
@live_page(_operations_shown)
def operations(request: HttpRequest) -> HttpResponse:
    form = OperationFilterForm(request.GET or None)
    found = form.filter(Operation.objects.select_related("server__tenant", "requested_by").order_by("-created", "-pk"))
    return render(request, "vservers/operator/operations.html", {
        "section": "operations", "form": form, "page": _page(request, found),
    })


@operator_required
@require_POST
def operation_retry(request: HttpRequest, uuid) -> HttpResponse:
    """Retry a failed operation (actions.retry_operation); back to the page it was asked from."""
    failed = access.get_operation(request.user, uuid, act=True)
    server = failed.server
    try:
        retried = actions.retry_operation(failed, request.user, request=request)
    except ActionRefused as exc:
        messages.error(request, f"{server}: {exc}.")
    else:
        messages.success(request, f"{retried.get_kind_display()} of {server} is queued again.")
    return _back(request, "op_server_detail", uuid=server.uuid)


@operator_required
def audit(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    found = form.filter(AuditEntry.objects.select_related("actor", "tenant").order_by("-created", "-pk"))
    return render(request, "vservers/operator/audit.html", {
        "section": "audit", "form": form, "page": _page(request, found),
    })
