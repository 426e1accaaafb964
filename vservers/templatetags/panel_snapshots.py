"""{% snapshots_card server can_act operator %}: the Snapshots section of a server's page
(tenant's and operator's), with its own query, so the server views stay as they are."""

from __future__ import annotations

from django import template
from django.urls import reverse

from ..models import OperationKind
from ..snapshot_forms import SnapshotRestoreForm, SnapshotTakeForm

register = template.Library()


@register.inclusion_tag("vservers/_snapshots_card.html")
def snapshots_card(server, can_act: bool, operator: bool = False) -> dict:
    snapshots = list(server.snapshots.select_related("created_by").order_by("created"))
    prefix = "op_" if operator else ""
    rows = [
        {
            "snapshot": s,
            "restore_url": reverse(f"{prefix}snapshot_restore", kwargs={"uuid": server.uuid, "name": s.name}),
            "delete_url": reverse(f"{prefix}snapshot_delete", kwargs={"uuid": server.uuid, "name": s.name}),
            "restore_form": SnapshotRestoreForm(auto_id=f"id_restore_{s.name}_%s"),
        }
        for s in snapshots
    ]
    plan_max = server.plan.snapshots_max if server.plan_id else 0
    return {
        "server": server,
        "can_act": can_act,
        "rows": rows,
        "total_bytes": sum(s.size_bytes for s in snapshots),
        "plan_max": plan_max,
        "take_url": reverse(f"{prefix}snapshot_take", kwargs={"uuid": server.uuid}),
        "take_form": SnapshotTakeForm(auto_id="id_snapshot_%s"),
        "may_take": server.may(OperationKind.SNAPSHOT_CREATE) and len(snapshots) < plan_max,
        "may_restore": server.may(OperationKind.SNAPSHOT_RESTORE),
        "may_delete": server.may(OperationKind.SNAPSHOT_DELETE),
    }
