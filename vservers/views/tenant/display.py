"""How the tenant area shows numbers, times and usage (no queries of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.template.defaultfilters import filesizeformat

from accounts.models import Tenant

from ... import actions
from ...formatting import number
from ...models import VirtualServer


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


def percent(used: float | Decimal, limit: float | Decimal) -> int | None:
    return min(100, round(100 * float(used) / float(limit))) if limit else None


def usage(server: VirtualServer) -> list[Meter]:
    """The last sample of the worker against the plan's limits (no queries)."""
    plan = server.plan
    mib = 1024 * 1024
    return [
        # Seconds of CPU used, not a share of the plan's CPUs: "/ 1 CPU" beside them read as a
        # limit of the same unit. The plan's CPUs are on the page's details.
        Meter("CPU time used", f"{server.cpu_seconds:,.1f} s"),
        Meter(
            "Memory",
            filesizeformat(server.memory_bytes),
            filesizeformat(plan.memory_mb * mib),
            percent(server.memory_bytes, plan.memory_mb * mib),
        ),
        Meter("Processes", str(server.pids), str(plan.pids), percent(server.pids, plan.pids)),
        Meter(
            "Disk",
            filesizeformat(server.disk_used_bytes),
            filesizeformat(plan.disk_mb * mib),
            percent(server.disk_used_bytes, plan.disk_mb * mib),
        ),
    ]


def quota_meters(tenant: Tenant) -> list[Meter]:
    """What the tenant's live servers take of its quotas (one query)."""
    used = actions.tenant_usage(tenant)
    from ...snapshot_actions import snapshot_mb

    snaps = snapshot_mb(tenant)
    disk = used["disk_mb"] + snaps
    return [
        Meter("Servers", str(used["servers"]), str(tenant.max_servers), percent(used["servers"], tenant.max_servers)),
        Meter("CPUs", number(used["cpus"]), number(tenant.max_cpus), percent(used["cpus"], tenant.max_cpus)),
        Meter(
            "Memory",
            f"{used['memory_mb']} MB",
            f"{tenant.max_memory_mb} MB",
            percent(used["memory_mb"], tenant.max_memory_mb),
        ),
        # The plans' disks and the snapshots' space on the nodes: both count against the quota.
        Meter(
            "Disk",
            f"{disk} MB" + (f" ({snaps} MB snapshots)" if snaps else ""),
            f"{tenant.max_disk_mb} MB",
            percent(disk, tenant.max_disk_mb),
        ),
    ]
