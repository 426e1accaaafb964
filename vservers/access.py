"""Who may see and act on what: the one place the pages (vservers.views) and the REST API (api/)
ask. Everything here takes a user, not a request, and answers with Django's own exceptions:
Http404 for what the user may not see (another tenant's server is "not found", so an outsider
cannot tell "not yours" from "does not exist") and PermissionDenied for what the user sees but
may not do (a read-only member acting, a tenant at an operator's URL). The pages turn them into
404 and 403 pages, DRF into 404 and 403 answers.

The rules:
- operators are staff users: they see every server and use the operator's area;
- a tenant member sees the tenant's live servers (VirtualServer.objects.restrict), and acts on
  them only as a tenant admin (Membership.can_act); read-only members only look;
- anyone else sees nothing.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404

from accounts.models import Membership

from .engine import validate
from .engine.errors import InvalidInput
from .models import GuestAccount, Operation, Service, VirtualServer
from .models.servers import ServerQuerySet

READ_ONLY = "your role in this tenant is read-only"


def membership(user) -> Membership | None:
    if not user.is_authenticated:
        return None
    try:
        return user.membership
    except Membership.DoesNotExist:
        return None


def is_operator(user) -> bool:
    return bool(user.is_authenticated and user.is_staff)


def require_operator(user) -> None:
    if not is_operator(user):
        raise PermissionDenied("operators only")


def can_act(user) -> bool:
    """Tenant admins act on their servers, read-only members only look. Staff without a
    membership are operators: they may act on any server."""
    member = membership(user)
    if member is None:
        return is_operator(user)
    return member.can_act


def require_act(user) -> None:
    if not can_act(user):
        raise PermissionDenied(READ_ONLY)


def servers_for(user) -> ServerQuerySet:
    """The live servers USER may see."""
    return VirtualServer.objects.restrict(user).visible()


def get_server(user, uuid, *, act: bool = False) -> VirtualServer:
    """USER's live server with this UUID, or 404 (also for other tenants' servers). With ACT,
    read-only members get 403 after that check."""
    servers = servers_for(user).select_related("tenant", "plan", "template", "requested_plan", "node")
    server = get_object_or_404(servers, uuid=uuid)
    if act:
        require_act(user)
    return server


def operator_server(user, uuid) -> VirtualServer:
    """Any server, live or gone, for an operator (403 for anyone else): the operator's area
    decides on requests and looks at deleted servers too."""
    require_operator(user)
    servers = VirtualServer.objects.restrict(user).select_related(
        "tenant", "plan", "template", "node", "requested_by", "requested_plan"
    )
    return get_object_or_404(servers, uuid=uuid)


def get_rejected(user, uuid) -> VirtualServer:
    """A request of USER's tenant that an operator rejected and nobody dismissed yet, or 404
    (another tenant, and an operator, find none); 403 for read-only members."""
    member = membership(user)
    if member is None:
        raise Http404("no such request")
    server = get_object_or_404(VirtualServer.objects.filter(tenant=member.tenant).rejected_undismissed(), uuid=uuid)
    if not member.can_act:
        raise PermissionDenied(READ_ONLY)
    return server


def operations_for(user):
    return Operation.objects.restrict(user)


def get_operation(user, uuid, *, act: bool = False) -> Operation:
    """An operation of a server USER sees (operators: any), or 404; with ACT, read-only
    members get 403 after that check. Tenants see operations of live servers only, as the
    servers themselves."""
    operations = operations_for(user).select_related("server__tenant", "server__node", "requested_by")
    if not is_operator(user):
        operations = operations.filter(server__in=servers_for(user))
    operation = get_object_or_404(operations, uuid=uuid)
    if act:
        require_act(user)
    return operation


def _engine_name(check, name: str, **kwargs) -> None:
    try:
        check(name, **kwargs)
    except InvalidInput as exc:
        raise PermissionDenied(f"the panel cannot manage this: {exc}") from None


def get_account(server: VirtualServer, name: str, *, system_ok: bool = False, deleting: bool = False) -> GuestAccount:
    """An account of SERVER as the worker last listed it, or 404: users act on the accounts
    they see. System accounts other than root are the template's, not the tenant's (403), and
    only root takes a password or key (SYSTEM_OK). DELETING: only what the engine would
    delete (deletable), else 403 instead of an operation that can only fail."""
    account = get_object_or_404(server.guest_accounts, name=name)
    if account.is_system and not (system_ok and account.uid == 0):
        raise PermissionDenied(f"{name} is a system account")
    # The guest's root names accounts as he likes; the engine acts only on names it accepts.
    _engine_name(validate.user_name, account.name, allow_reserved=not deleting)
    return account


def deletable(account: GuestAccount) -> bool:
    """Whether the engine would delete ACCOUNT: not a system account, and not a name it keeps
    for itself (validate.user_name without allow_reserved: root, daemon, nobody...). The pages
    offer Delete only for these; the rule is the engine's, not a list of our own."""
    if account.is_system:
        return False
    try:
        validate.user_name(account.name)
    except InvalidInput:
        return False
    return True


def get_service(server: VirtualServer, name: str) -> Service:
    """A service of SERVER as the worker last listed it, or 404."""
    service = get_object_or_404(server.services, name=name)
    _engine_name(validate.service_name, service.name)
    return service
