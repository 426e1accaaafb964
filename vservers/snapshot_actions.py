"""What users ask of a server's snapshots: take one, put one back, delete one. Each records
an Operation (vservers.actions.request_operation, which audits it) for the node's worker.

Two limits hold when a snapshot is asked for, under the tenant's row lock so two requests
cannot both take the last room:
1. the plan's snapshots_max per server (0: the plan has none), counting snapshots asked
   for and not taken yet;
2. the tenant's disk quota, which the plans' disks and every snapshot's space count against
   (snapshot_mb); a new one is estimated at the server's disk use as last sampled.
"""

from __future__ import annotations

import math

from django.db.models import Sum
from django.utils import timezone

from accounts.models import Tenant

from .actions import PENDING, ActionRefused, lock_tenant, request_operation, tenant_usage
from .engine import validate
from .engine.errors import InvalidInput
from .models import TERMINAL, Operation, OperationKind, Snapshot, VirtualServer

MIB = 2**20


def snapshot_mb(tenant: Tenant) -> int:
    """MB the snapshots of the tenant's live servers take on their nodes (rounded up)."""
    total = Snapshot.objects.filter(server__tenant=tenant).exclude(server__state__in=TERMINAL).aggregate(
        total=Sum("size_bytes"))["total"] or 0
    return math.ceil(total / MIB)


def disk_use(tenant: Tenant) -> dict[str, int]:
    """The tenant's disk quota as it stands: the plans' disks, the snapshots, their sum."""
    disks = tenant_usage(tenant)["disk_mb"]
    snaps = snapshot_mb(tenant)
    return {"disks_mb": disks, "snapshots_mb": snaps, "total_mb": disks + snaps, "max_mb": tenant.max_disk_mb}


def _pending(server: VirtualServer, kind: str) -> list[Operation]:
    return list(Operation.objects.filter(server=server, kind=kind, status__in=PENDING))


def _asked_names(server: VirtualServer) -> set[str]:
    return {str(op.params.get("snapshot")) for op in _pending(server, OperationKind.SNAPSHOT_CREATE)}


def _new_name(server: VirtualServer) -> str:
    """A name from the UTC time, like the engine's own, unique among the server's snapshots
    and those asked for."""
    taken = set(server.snapshots.values_list("name", flat=True)) | _asked_names(server)
    stem = timezone.now().strftime("s%Y%m%d-%H%M%S")
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def take(server: VirtualServer, user, request=None, label: str = "", name: str = "") -> Operation:
    """Ask for a snapshot of SERVER (named NAME, else from the time), refused (ActionRefused,
    a sentence for the user) past its plan's snapshots_max or the tenant's disk quota."""
    from django.db import transaction

    label = " ".join(label.split())[:100]
    if name:
        try:
            validate.user_snapshot_name(name)
        except InvalidInput as exc:
            raise ActionRefused(str(exc)) from None
    with transaction.atomic():
        lock_tenant(server.tenant)
        plan = server.plan
        kept = list(server.snapshots.order_by("created"))
        asked = len(_pending(server, OperationKind.SNAPSHOT_CREATE))
        if plan.snapshots_max == 0:
            raise ActionRefused(f"the plan {plan.name} includes no snapshots")
        if len(kept) + asked >= plan.snapshots_max:
            oldest = f" (the oldest is {kept[0].name})" if kept else ""
            raise ActionRefused(
                f"{server.name} has {len(kept) + asked} snapshots, as many as its plan {plan.name} keeps: "
                f"delete one first{oldest}"
            )
        use = disk_use(server.tenant)
        estimate = max(1, math.ceil(server.disk_used_bytes / MIB))
        if use["total_mb"] + estimate > use["max_mb"]:
            raise ActionRefused(
                f"a snapshot of about {estimate} MB would bring your disk use to {use['total_mb'] + estimate} MB "
                f"of at most {use['max_mb']} MB (server disks {use['disks_mb']} MB, snapshots "
                f"{use['snapshots_mb']} MB): delete a snapshot first or ask the operator"
            )
        if name and (server.snapshots.filter(name=name).exists() or name in _asked_names(server)):
            raise ActionRefused(f"there is a snapshot named {name} already")
        params = {"snapshot": name or _new_name(server)}
        if label:
            params["label"] = label
        return request_operation(server, OperationKind.SNAPSHOT_CREATE, user, request=request, **params)


def get_snapshot(server: VirtualServer, name: str) -> Snapshot:
    """SERVER's snapshot NAME, or Http404 (the server was already scoped to the user)."""
    from django.http import Http404

    try:
        validate.user_snapshot_name(name)
    except InvalidInput:
        raise Http404("no such snapshot") from None
    snapshot = server.snapshots.filter(name=name).first()
    if snapshot is None:
        raise Http404("no such snapshot")
    return snapshot


def restore(server: VirtualServer, snapshot: Snapshot, user, request=None) -> Operation:
    """Ask for SNAPSHOT to be put back: the server stops, its disk becomes the snapshot's
    (what changed since is lost) and it starts again."""
    return request_operation(server, OperationKind.SNAPSHOT_RESTORE, user, request=request, snapshot=snapshot.name)


def delete(server: VirtualServer, snapshot: Snapshot, user, request=None) -> Operation:
    return request_operation(server, OperationKind.SNAPSHOT_DELETE, user, request=request, snapshot=snapshot.name)
