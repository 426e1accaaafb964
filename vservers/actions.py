"""What users ask the panel to do, as small functions: each records an Operation row and
queues it on the server's node once the transaction commits. The web process never touches
the kernel; the node's worker runs the operation (vservers.jobs.run_operation)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Sum
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from accounts.models import AuditEntry, Membership, Tenant
from notifications import notify
from notifications.models import Event

from . import access
from .capacity import approval_warnings
from .formatting import number
from .models import (
    TERMINAL,
    IPPool,
    Node,
    Operation,
    OperationKind,
    OperationStatus,
    Plan,
    PoolExhausted,
    State,
    Template,
    TemplateBuild,
    VirtualServer,
)
from .models.operations import QUEUE_DELAYED, SECRET_PARAMS
from .models.transitions import Retry, retry_policy
from .placement import NoPlacement, Placement, choose_node

PENDING = (OperationStatus.QUEUED, OperationStatus.RUNNING)

log = logging.getLogger(__name__)

JOB_FUNCTION = "vservers.jobs.run_operation"
BUILD_FUNCTION = "vservers.jobs.run_template_build"
# A Debian template's build downloads and unpacks a release: give it an hour.
BUILD_TIMEOUT = 3600


class ActionRefused(Exception):
    """The action does not fit the server's current state; the message is for the user."""


class QuotaExceeded(ActionRefused):
    """The tenant's quota has no room for it; PROBLEMS says which limits, in plain words."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "This plan does not fit your quota: " + "; ".join(problems) + ". Choose a smaller plan or ask the operator."
        )


class NameTaken(ActionRefused):
    pass


def enqueue(operation: Operation) -> None:
    """Queue OPERATION on its server's node after the current transaction commits. The job
    carries only the operation's id (JSON), never an object.

    The row is the outbox: it is saved first, and it stays queued (with the QUEUE_DELAYED
    note) when Redis cannot be reached; the worker hands it over once Redis is back. Queueing
    the same operation twice is harmless: only one worker can claim the row."""
    queue_name = operation.server.node.queue_name if operation.server.node else "default"
    op_id = operation.pk
    # As the queue's caller names it: on a node's queue Redis keeps it with the node's prefix
    # (vservers.queues.PanelQueue), which queue.fetch_job adds again.
    job_id = f"op-{operation.uuid}"

    def push() -> None:
        from .queues import get_queue, may_push, wake

        if not may_push(queue_name):
            # A node's worker asking for work on another node (a start after a failed move):
            # that node's worker queues it (vservers.migration.recovery.send_due).
            wake(queue_name)
            return
        try:
            get_queue(queue_name).enqueue(JOB_FUNCTION, op_id, job_id=job_id)
        except Exception as exc:  # noqa: BLE001 - Redis down: the row stays queued, the worker re-sends it
            log.warning("operation %s stays in the outbox: the job queue is unreachable (%s)", op_id, exc)
            Operation.objects.filter(pk=op_id, status=OperationStatus.QUEUED).update(error=QUEUE_DELAYED)
            return
        Operation.objects.filter(pk=op_id).update(job_id=job_id)

    transaction.on_commit(push)


def request_operation(server: VirtualServer, kind: str, user, request=None, **params) -> Operation:
    """Record and queue an operation on SERVER, refusing kinds that do not fit its state
    (models.transitions). Asked again while the same operation is still pending, it returns
    that one; a tenant has at most MAX_PENDING_PER_TENANT operations pending at once.

    The server's row lock makes the two checks and the insert one step (on SQLite the
    IMMEDIATE transaction's write lock does)."""
    return _request(server, kind, user, request, params)


def _request(server: VirtualServer, kind: str, user, request, params: dict,
             retry_of: Operation | None = None) -> Operation:
    """request_operation, with PARAMS as a dict, and RETRY_OF: the failed operation this one
    retries, which must still be the server's latest when the lock is held."""
    with transaction.atomic():
        VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server.pk).first()
        if retry_of is not None:
            latest = Operation.objects.filter(server=server).order_by("-pk").values_list("pk", flat=True).first()
            if latest != retry_of.pk:
                raise ActionRefused("only the latest operation of a server can be retried")
        # The state the user saw: what is asked for behind a running operation waits for it,
        # and the worker checks the state it really meets (runs_from) when it gets there.
        if not server.may(kind):
            what, state = OperationKind(kind).label.lower(), server.get_state_display().lower()
            raise ActionRefused(f"cannot {what} while the server is {state}")
        same = Operation.objects.filter(server=server, kind=kind, params=params, status__in=PENDING).first()
        if same is not None:
            return same
        if user is not None and not user.is_staff:
            pending = Operation.objects.filter(server__tenant_id=server.tenant_id, status__in=PENDING).count()
            if pending >= settings.PANEL_MAX_PENDING_PER_TENANT:
                raise ActionRefused(
                    f"{pending} operations of your servers are still waiting to run; "
                    "try again once some of them have finished"
                )
        operation = Operation.objects.create(server=server, kind=kind, params=params, requested_by=user,
                                             retry_of=retry_of)
        enqueue(operation)
        if request is not None:
            safe = {k: v for k, v in params.items() if k not in SECRET_PARAMS}
            if retry_of is not None:
                safe["retry_of"] = str(retry_of.uuid)
            AuditEntry.record(request, f"server.{kind}", server, **safe)
    return operation


# -- retrying a failed operation ---------------------------------------------------------------


def retry_operation(operation: Operation, user, request=None) -> Operation:
    """Ask again for what the failed OPERATION asked: an operation of the same kind with the
    same parameters on the same server, linked to it (retry_of), queued and audited as a click
    of its button would be.

    1. the table's retry policy (models.transitions.Retry): nobody retries what needed a
       password (it is wiped when the operation ends); only operators retry the kinds that are
       theirs to ask for (PermissionDenied for anyone else: a 403, like any other refusal of
       the role);
    2. only a failed operation, and only the latest of its server: anything later (a start
       that finished the provisioning, say) speaks for the server now;
    3. the kind must fit the server's state now (the table's asked_in), as for a click.
    2. and 3. are checked under the server's row lock (_request)."""
    policy = retry_policy(operation.kind)
    what = OperationKind(operation.kind).label.lower()
    if policy is Retry.NEVER:
        raise ActionRefused(f"{what} cannot be retried: its password is not kept once it ended; ask for it again")
    if policy is Retry.OPERATOR and not access.is_operator(user):
        raise PermissionDenied(f"only an operator can retry {what}")
    if operation.status != OperationStatus.FAILED:
        raise ActionRefused("only a failed operation can be retried")
    server = VirtualServer.objects.select_related("node", "tenant").get(pk=operation.server_id)
    return _request(server, operation.kind, user, request, dict(operation.params), retry_of=operation)


def retryable(operations: Iterable[Operation], user) -> set[int]:
    """The ids of those OPERATIONS that USER may retry now (retry_operation would queue it),
    for the pages' Retry buttons: one query for the latest operation of their servers."""
    failed = [op for op in operations if op.status == OperationStatus.FAILED]
    if not failed or not access.can_act(user):
        return set()
    latest = dict(
        Operation.objects.filter(server_id__in={op.server_id for op in failed})
        .values("server_id").annotate(last=Max("pk")).values_list("server_id", "last")
    )
    operator = access.is_operator(user)
    allowed = {Retry.TENANT, Retry.OPERATOR} if operator else {Retry.TENANT}
    return {
        op.pk for op in failed
        if latest.get(op.server_id) == op.pk and retry_policy(op.kind) in allowed and op.server.may(op.kind)
    }


# -- the operator's bulk actions ------------------------------------------------------------------

# The bulk actions on the operator's server list, and the kind each asks for (retry: the kind
# of the server's failed latest operation).
BULK_ACTIONS: dict[str, str | None] = {
    "start": OperationKind.START,
    "stop": OperationKind.STOP,
    "restart": OperationKind.RESTART,
    "retry": None,
    "delete": OperationKind.DELETE,
}


@dataclass
class BulkResult:
    action: str
    queued: list[Operation] = field(default_factory=list)
    refused: list[tuple[VirtualServer, str]] = field(default_factory=list)


def bulk(servers: Iterable[VirtualServer], action: str, user, request=None) -> BulkResult:
    """ACTION on each of SERVERS, exactly as a click on each server's own button: each gets its
    own operation (in its own transaction), its own audit entry, or its own refusal."""
    if action not in BULK_ACTIONS:
        raise ActionRefused(f"there is no bulk action {action!r}")
    result = BulkResult(action)
    for server in servers:
        try:
            kind = BULK_ACTIONS[action]
            if kind is None:
                latest = server.operations.order_by("-pk").first()
                if latest is None or latest.status != OperationStatus.FAILED:
                    raise ActionRefused("its latest operation did not fail")
                operation = retry_operation(latest, user, request=request)
            else:
                operation = request_operation(server, kind, user, request=request)
        except (ActionRefused, PermissionDenied) as exc:
            result.refused.append((server, str(exc)))
        else:
            result.queued.append(operation)
    return result


def retry(server: VirtualServer, user, request=None) -> Operation:
    """A server in error tries again: provisioning is idempotent (it creates what is missing
    and starts the server), so it also finishes a start, stop or delete that failed half-way."""
    if server.state != State.ERROR:
        raise ActionRefused("only a server in error can be retried")
    return request_operation(server, OperationKind.PROVISION, user, request=request)


def delete(server: VirtualServer, user, request=None) -> Operation:
    return request_operation(server, OperationKind.DELETE, user, request=request)


def cancel(server: VirtualServer, request=None) -> None:
    """Withdraw a request an operator has not decided yet: nothing exists on any node."""
    if not server.move([State.REQUESTED], State.DELETED, "withdrawn by the tenant"):
        raise ActionRefused("only a request that waits for approval can be withdrawn")
    server.forget_order()
    if request is not None:
        AuditEntry.record(request, "server.cancel", server)


def dismiss(server: VirtualServer, request=None) -> bool:
    """The tenant has read why a request was rejected: stop showing it (audited once; a
    second dismissal changes nothing)."""
    dismissed = server.dismiss()
    if dismissed and request is not None:
        AuditEntry.record(request, "server.dismiss", server)
    return dismissed


# -- quotas ---------------------------------------------------------------------------------


def tenant_usage(tenant: Tenant, exclude: VirtualServer | None = None) -> dict:
    """What the tenant's live servers take, pending requests included (a request is a live
    server in state requested). A server with a plan change waiting counts with the larger
    of its two plans in each resource, so approving the change can never exceed the quota."""
    servers = VirtualServer.objects.filter(tenant=tenant).exclude(state__in=TERMINAL)
    if exclude is not None:
        servers = servers.exclude(pk=exclude.pk)

    def larger(field: str):
        return Greatest(f"plan__{field}", Coalesce(f"requested_plan__{field}", f"plan__{field}"))

    totals = servers.aggregate(
        servers=Count("pk"), cpus=Sum(larger("cpus")), memory_mb=Sum(larger("memory_mb")),
        disk_mb=Sum(larger("disk_mb")),
    )
    return {
        "servers": totals["servers"] or 0,
        "cpus": Decimal(totals["cpus"] or 0),
        "memory_mb": totals["memory_mb"] or 0,
        "disk_mb": totals["disk_mb"] or 0,
    }


def quota_problems(tenant: Tenant, plan: Plan, replacing: VirtualServer | None = None) -> list[str]:
    """Why one more server on PLAN (or REPLACING moved to PLAN) would exceed the tenant's
    quotas; empty when it fits. Callers hold the tenant's row lock (lock_tenant)."""
    used = tenant_usage(tenant, exclude=replacing)
    plan = Plan.objects.get(pk=plan.pk)  # the stored limits, as Decimals, whatever the caller holds
    problems = []
    if replacing is None and used["servers"] + 1 > tenant.max_servers:
        problems.append(f"your servers would exceed the limit of {tenant.max_servers}")
    if used["cpus"] + plan.cpus > tenant.max_cpus:
        problems.append(f"CPUs would add up to {number(used['cpus'] + plan.cpus)} of at most {number(tenant.max_cpus)}")
    if used["memory_mb"] + plan.memory_mb > tenant.max_memory_mb:
        problems.append(
            f"memory would add up to {used['memory_mb'] + plan.memory_mb} MB of at most {tenant.max_memory_mb} MB"
        )
    from .snapshot_actions import snapshot_mb  # snapshots take the tenant's disk too

    disk = used["disk_mb"] + snapshot_mb(tenant) + plan.disk_mb
    if disk > tenant.max_disk_mb:
        problems.append(f"disk would add up to {disk} MB of at most {tenant.max_disk_mb} MB")
    return problems


def lock_tenant(tenant: Tenant) -> None:
    """The tenant's row lock, inside the caller's transaction: quota checks and the changes
    they allow happen one tenant-wide step at a time."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()


def _check_quota(tenant: Tenant, plan: Plan, replacing: VirtualServer | None = None) -> None:
    problems = quota_problems(tenant, plan, replacing)
    if problems:
        raise QuotaExceeded(problems)


# -- requests, approvals, plan changes --------------------------------------------------------


def request_server(tenant: Tenant, user, *, name: str, hostname: str, plan: Plan, template: Template,
                   request=None, ssh_key: str = "", password_hash: str = "") -> VirtualServer:
    """A tenant asks for a server; it waits in state requested until an operator approves it.
    SSH_KEY and PASSWORD_HASH (a crypt hash, never the password) are root's, applied by
    provisioning (jobs.apply_order).

    1. lock the tenant's row, so two requests cannot both take the last of the quota;
    2. check the quota (pending requests and plan changes count);
    3. create the server; the unique constraint on live names is the backstop for the name.
    """
    with transaction.atomic():
        lock_tenant(tenant)
        _check_quota(tenant, plan)
        try:
            with transaction.atomic():
                server = VirtualServer.objects.create(
                    tenant=tenant, name=name, hostname=hostname, plan=plan, template=template,
                    state=State.REQUESTED, requested_by=user, root_ssh_key=ssh_key, root_password_hash=password_hash,
                )
        except IntegrityError:
            raise NameTaken(f"there is a server named {name!r} already") from None
        if request is not None:
            AuditEntry.record(request, "server.request", server, plan=plan.name, template=template.name,
                              root_ssh_key=bool(ssh_key), root_password=bool(password_hash))
        notify(Event.REQUEST, server, user=user)
    return server


def create_server(operator, *, tenant: Tenant, name: str, hostname: str, plan: Plan, template: Template,
                  node: Node | None = None, autostart: bool = True, request=None) -> VirtualServer:
    """An operator's server for a tenant: requested and approved in one transaction, so a
    refused approval (no node, no free address) leaves nothing behind. Operators set the
    quotas, so theirs is not held to it."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                server = VirtualServer.objects.create(
                    tenant=tenant, name=name, hostname=hostname, plan=plan, template=template,
                    state=State.REQUESTED, requested_by=operator, autostart=autostart,
                )
        except IntegrityError:
            raise NameTaken("this tenant has a server of this name already") from None
        if request is not None:
            AuditEntry.record(request, "server.create", server, plan=plan.name, template=template.name)
        approve(server, operator, node=node, request=request, check_quota=False)
    return server


def request_plan_change(server: VirtualServer, plan: Plan, user, request=None) -> bool:
    """The tenant asks for PLAN (an operator decides); asking for the current plan withdraws
    a waiting request. True if a change is now waiting."""
    if not server.may(OperationKind.CHANGE_PLAN):
        raise ActionRefused("the plan can be changed once the server is running or stopped")
    with transaction.atomic():
        lock_tenant(server.tenant)
        if plan.pk == server.plan_id:
            VirtualServer.objects.filter(pk=server.pk).update(requested_plan=None, updated=timezone.now())
            if request is not None:
                AuditEntry.record(request, "server.plan_change_withdrawn", server)
            return False
        _check_quota(server.tenant, plan, replacing=server)
        VirtualServer.objects.filter(pk=server.pk).update(requested_plan=plan, updated=timezone.now())
        if request is not None:
            AuditEntry.record(request, "server.plan_change_requested", server, plan=plan.name)
        notify(Event.PLAN_CHANGE, server, plan=plan)
    return True


def decide_plan_change(server: VirtualServer, accept: bool, operator, request=None) -> Plan:
    """Approve (queue a change_plan operation) or reject the tenant's plan change request.

    1. clear requested_plan with a compare-and-swap, so of two operators deciding at once
       only one acts;
    2. on approval, check the quota again under the tenant's lock and queue the operation;
       a refusal rolls back 1., so the request stays waiting.
    """
    plan = server.requested_plan
    if plan is None:
        raise ActionRefused("there is no plan change waiting")
    with transaction.atomic():
        lock_tenant(server.tenant)
        changed = VirtualServer.objects.filter(pk=server.pk, requested_plan=plan).update(
            requested_plan=None, updated=timezone.now()
        )
        if not changed:
            raise ActionRefused("another operator decided it already")
        if accept:
            _check_quota(server.tenant, plan, replacing=server)
            request_operation(server, OperationKind.CHANGE_PLAN, operator, plan_id=plan.pk)
            if request is not None:
                # The entry names the plan as the request's entry did ("plan=medium"), not
                # the operation's parameter (plan_id=2).
                AuditEntry.record(request, "server.change_plan", server, plan=plan.name)
        elif request is not None:
            AuditEntry.record(request, "server.plan_change_reject", server, plan=plan.name)
    return plan


def approve(server: VirtualServer, operator, node: Node | None = None, request=None,
            check_quota: bool = True) -> Operation:
    """Approve a requested server (approve_placed's operation): on NODE if the operator pinned
    one, else on the node placement chooses."""
    return approve_placed(server, operator, node=node, request=request, check_quota=check_quota).operation


@dataclass(frozen=True)
class Approval:
    """An approval's operation, the node it chose and why, and the ratio warnings of a pinned
    node (the operator decided past them)."""

    operation: Operation
    placement: Placement
    warnings: list[str]

    @property
    def message(self) -> str:
        """ "Placed on node b: the most free capacity ..." for the page and the API."""
        return f"Placed on {self.placement.reason}"


def approve_placed(server: VirtualServer, operator, node: Node | None = None, request=None,
                   check_quota: bool = True) -> Approval:
    """Approve a requested server: place it on a node, give it an address, queue provisioning.

    0. the node: NODE if the operator pinned one (the placement rules are not applied; the
       ratio warnings are returned), the backup's node for a server made from a backup, else
       placement.choose_node (NoPlacement is refused with its sentence);
    1. under the tenant's lock, check its quota again (it may have changed since the request);
    2. compare-and-swap requested -> approved (a second approval of the same server loses);
    3. allocate the lowest free address of a pool on that node or shared with it (pool lock +
       unique constraint);
    4. create the provision operation; it is queued when the transaction commits.
    """
    from .backups import actions as backup_actions

    if server.state != State.REQUESTED:
        raise ActionRefused("only servers awaiting approval can be approved")
    placed = False  # by placement's rules (not pinned by the operator or by a backup)
    if node is not None:
        placement = Placement(node, f"node {node.name}: pinned by the operator")
    elif (kept := backup_actions.approval_node(server)) is not None:
        placement = Placement(kept, f"node {kept.name}: it keeps the backup the server is restored from")
    else:
        try:
            placement = choose_node(server)
        except NoPlacement as exc:
            raise ActionRefused(str(exc)) from None
        placed = True
    node = placement.node
    warnings = approval_warnings(server, node, "This puts")  # before approving adds the server to the node
    try:
        with transaction.atomic():
            if check_quota:
                lock_tenant(server.tenant)
                _check_quota(server.tenant, server.plan, replacing=server)
            if placed:
                # Placement looked without a lock: another approval may have filled the node
                # since. Its row lock makes approvals onto one node take turns here.
                Node.objects.select_for_update().filter(pk=node.pk).first()
                if approval_warnings(server, node):
                    raise ActionRefused(f"node {node.name} has no room left within its ratios since placement "
                                        "chose it; approve again to place the server anew")
            if not server.approve(node):
                raise ActionRefused("only servers awaiting approval can be approved")
            _allocate_on(node, server)
            kind, params = backup_actions.first_operation(server, node)  # provisioning, or a backup's restore
            operation = Operation.objects.create(server=server, kind=kind, params=params, requested_by=operator)
            enqueue(operation)
            if request is not None:
                AuditEntry.record(request, "server.approve", server, node=node.name, placement=placement.reason)
            notify(Event.APPROVED, server)
    except ActionRefused:
        server.refresh_from_db(fields=["state", "state_reason", "node"])  # the rollback undid our change
        raise
    return Approval(operation, placement, warnings)


def _allocate_on(node: Node, server: VirtualServer) -> None:
    try:
        IPPool.allocate_on(node, server)
    except PoolExhausted as exc:
        raise ActionRefused(str(exc)) from None


def reject(server: VirtualServer, reason: str, request=None) -> None:
    with transaction.atomic():
        if not server.reject(reason or "rejected by an operator"):
            raise ActionRefused("only servers awaiting approval can be rejected")
        server.forget_order()
        if request is not None:
            AuditEntry.record(request, "server.reject", server, reason=reason)
        notify(Event.REJECTED, server, reason=server.state_reason)


def pending_operation(server: VirtualServer) -> Operation | None:
    return server.operations.filter(status__in=PENDING).first()


def busy(server: VirtualServer) -> bool:
    return server.in_progress


# -- the operator's catalogue: tenants, members, plans, templates, pools ------------------------
# The forms (vservers.operator_forms) validate; these save and record the audit entry, for the
# operator's pages and the REST API alike.


def _changes(form) -> dict:
    return {name: str(form.cleaned_data[name]) for name in form.changed_data}


def create_tenant(form, request=None) -> Tenant:
    tenant = form.save()
    AuditEntry.record(request, "tenant.create", tenant, tenant=tenant)
    return tenant


def update_tenant(form, request=None) -> Tenant:
    tenant = form.save()
    AuditEntry.record(request, "tenant.update", tenant, tenant=tenant, changes=_changes(form))
    return tenant


def add_member(form, tenant: Tenant, request=None):
    """A new user in TENANT (MemberAddForm); returns the membership and the generated
    password, if one was generated (shown once, stored nowhere)."""
    with transaction.atomic():
        membership, generated = form.save(tenant)
        AuditEntry.record(request, "member.add", membership, tenant=tenant,
                          username=membership.user.username, role=membership.role)
    return membership, generated


def _other_admins(membership: Membership) -> int:
    return Membership.objects.filter(tenant_id=membership.tenant_id, role=Membership.ADMIN).exclude(
        pk=membership.pk).count()


def _last_admin(membership: Membership) -> ActionRefused:
    return ActionRefused(
        f"{membership.user} is the last admin of {membership.tenant}; make another member an admin first"
    )


def remove_member(membership: Membership, request=None) -> None:
    """Take a user out of a tenant. A user belongs to one tenant only, so the account is
    disabled too and its sessions and API tokens stop working (it keeps its name in the audit log). A tenant keeps at
    least one admin: under the tenant's lock, so two removals at once cannot both pass."""
    with transaction.atomic():
        lock_tenant(membership.tenant)
        if membership.role == Membership.ADMIN and not _other_admins(membership):
            raise _last_admin(membership)
        user, tenant, role = membership.user, membership.tenant, membership.role
        membership.delete()
        user.is_active = False
        user.save(update_fields=["is_active"])  # accounts.signals ends the user's sessions
        AuditEntry.record(request, "member.remove", user, tenant=tenant, username=user.username, role=role)


def set_member_role(membership: Membership, role: str, request=None) -> bool:
    """Make a member an admin or read-only; the last admin of a tenant stays one. True if
    the role changed."""
    if role not in dict(Membership.ROLES):
        raise ActionRefused(f"there is no role {role!r}")
    with transaction.atomic():
        lock_tenant(membership.tenant)
        membership.refresh_from_db(fields=["role"])
        if membership.role == role:
            return False
        if membership.role == Membership.ADMIN and not _other_admins(membership):
            raise _last_admin(membership)
        old, membership.role = membership.role, role
        membership.save(update_fields=["role"])
        AuditEntry.record(request, "member.role", membership, tenant=membership.tenant,
                          username=membership.user.username, role=role, was=old)
    return True


def create_plan(form, request=None) -> Plan:
    plan = form.save()
    AuditEntry.record(request, "plan.create", plan)
    return plan


def update_plan(form, request=None) -> Plan:
    plan = form.save()
    AuditEntry.record(request, "plan.update", plan, changes=_changes(form))
    return plan


def create_template(form, request=None) -> Template:
    template = form.save()
    AuditEntry.record(request, "template.create", template)
    return template


def build_template(template: Template, user, request=None) -> list[TemplateBuild | str]:
    """Build TEMPLATE on every active node (each node's worker builds its own copy, as
    vserver template build would): a TemplateBuild row per node, queued on commit. A node
    where a build of it is queued or running already keeps that one (the partial unique
    constraint is the backstop against two requests at once). Returns per node the build, or
    why none was queued."""
    nodes = list(Node.objects.filter(is_active=True).order_by("name"))
    if not nodes:
        raise ActionRefused("there is no active node to build it on")
    outcome: list[TemplateBuild | str] = []
    for node in nodes:
        try:
            with transaction.atomic():
                build = TemplateBuild.objects.create(template=template, node=node, requested_by=user)
                _enqueue_build(build)
                AuditEntry.record(request, "template.build", template, node=node.name)
        except IntegrityError:
            outcome.append(f"a build on {node.name} is queued or running already")
        else:
            outcome.append(build)
    return outcome


def _enqueue_build(build: TemplateBuild) -> None:
    """Queue BUILD on its node once the transaction commits (the job carries only its id).
    With the queue unreachable the build fails at once with a plain sentence: unlike an
    operation it is not resent later, and a pending row would block the next try."""
    build_id, queue_name = build.pk, build.node.queue_name
    job_id = f"build-{build.uuid}"  # as enqueue's: the queue adds the node's prefix in Redis

    def push() -> None:
        from .queues import get_queue

        try:
            get_queue(queue_name).enqueue(BUILD_FUNCTION, build_id, job_id=job_id, job_timeout=BUILD_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - Redis down: say so on the row
            log.warning("template build %s not queued: %s", build_id, exc)
            TemplateBuild.objects.filter(pk=build_id, status=OperationStatus.QUEUED).update(
                status=OperationStatus.FAILED, finished=timezone.now(),
                error="the job queue cannot be reached right now; build it again later")
            return
        TemplateBuild.objects.filter(pk=build_id).update(job_id=job_id)

    transaction.on_commit(push)


def set_template_active(template: Template, active: bool, request=None) -> Template:
    """Offer TEMPLATE for new servers or stop offering it. A compare-and-swap on what the
    caller read: two clicks on the page's toggle make two flips, not one."""
    Template.objects.filter(pk=template.pk, is_active=not active).update(is_active=active)
    template.refresh_from_db()
    AuditEntry.record(request, "template.activate" if template.is_active else "template.deactivate", template)
    return template


def create_pool(form, request=None) -> IPPool:
    pool = form.save()
    AuditEntry.record(request, "pool.create", pool, network=pool.network, gateway=pool.gateway, node=pool.node.name)
    return pool


def share_pool(form, request=None) -> IPPool:
    """Save a PoolShareForm: the nodes the pool is shared with, audited by name."""
    pool = form.save()
    AuditEntry.record(request, "pool.share", pool,
                      shared_with=sorted(node.name for node in pool.shared_with.all()))
    return pool


def update_node(form, request=None) -> Node:
    node = form.save()
    AuditEntry.record(request, "node.update", node, changes=_changes(form))
    return node
