"""Reinstall, rescue mode and root's password (issue 15, 3.-5.), as the pages and the API ask
for them: each records its operation (vservers.actions.request_operation: the state table
decides, the audit log records, the node's worker runs it)."""

from __future__ import annotations

from django.db import transaction

from .actions import ActionRefused, request_operation
from .models import Operation, OperationKind, Template, VirtualServer


def reinstall(server: VirtualServer, user, template: Template, *, snapshot_first: bool = False,
              request=None) -> Operation:
    """Queue a reinstall of SERVER from TEMPLATE (its newest build). With SNAPSHOT_FIRST a
    snapshot is asked for before it in the same transaction, as the snapshot card asks
    (snapshot_actions.take: the plan's snapshot count and the tenant's disk quota hold); the
    reinstall runs only if that snapshot succeeded (jobs_rescue: it names the snapshot's
    operation in "after")."""
    from .snapshot_actions import take

    if not template.is_active:
        raise ActionRefused(f"the system {template} is not offered any more")
    with transaction.atomic():
        params = {"template": template.name}
        if snapshot_first:
            snapshot = take(server, user, request=request, label=f"before the reinstall from {template}")
            params["after"] = str(snapshot.uuid)
        return request_operation(server, OperationKind.REINSTALL, user, request=request, **params)


def rescue_enter(server: VirtualServer, user, request=None) -> Operation:
    return request_operation(server, OperationKind.RESCUE_ENTER, user, request=request)


def rescue_leave(server: VirtualServer, user, request=None) -> Operation:
    return request_operation(server, OperationKind.RESCUE_LEAVE, user, request=request)


def root_password(server: VirtualServer, user, password: str, request=None) -> Operation:
    """PASSWORD (checked by RootPasswordForm) travels in the operation's params only, which
    Operation.finish wipes; the audit entry leaves it out (SECRET_PARAMS)."""
    return request_operation(server, OperationKind.ROOT_PASSWORD, user, request=request, password=password)
