"""Plain data the engine passes around: what was asked for, and what the kernel says."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms at every CLI start)
if TYPE_CHECKING:
    from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Every VPS gets 65,536 ids, like the classic /etc/subuid allocation.
ID_RANGE_SIZE = 65536
# The PATH of the guest's init and of every command the engine runs inside (exec, enter).
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The bounds of what an operator may ask for, one copy for `vserver create`, `vserver update`
# and Engine.update.
MIN_MEMORY_BYTES = 4 * 2**20
MIN_DISK_BYTES = 16 * 2**20
MAX_DISK_BYTES = 2**44


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means unlimited (disk is always bounded by the image size)."""

    cpus: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    disk_bytes: int = 256 * 1024 * 1024
    # Disk I/O on the server's own disk (its loop device): a relative weight against the other
    # servers, and ceilings in bytes and operations per second.
    io_weight: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_read_iops: int | None = None
    io_write_iops: int | None = None
    # Root inside may change its own network (addresses, routes, neighbours, firewall): it keeps
    # CAP_NET_ADMIN over its network namespace. Off by default, as in OpenVZ: the engine sets
    # the addresses from outside, and what CAP_NET_ADMIN reaches costs host kernel memory that
    # no cgroup is charged for (see docs/security.md). Takes effect at the next start.
    network_admin: bool = False

    def validated(self) -> Limits:
        """These limits with every value checked by the validators the CLI uses (InvalidInput
        with the reason otherwise), for callers of the library that did not go through it."""
        from . import validate

        return Limits(
            cpus=None if self.cpus is None else validate.cpus(self.cpus),
            memory_bytes=None if self.memory_bytes is None
            else validate.size(self.memory_bytes, minimum=MIN_MEMORY_BYTES),
            pids=None if self.pids is None else validate.pids(self.pids),
            disk_bytes=validate.size(self.disk_bytes, minimum=MIN_DISK_BYTES, maximum=MAX_DISK_BYTES),
            io_weight=None if self.io_weight is None else validate.io_weight(self.io_weight),
            io_read_bps=None if self.io_read_bps is None else validate.io_bps(self.io_read_bps),
            io_write_bps=None if self.io_write_bps is None else validate.io_bps(self.io_write_bps),
            io_read_iops=None if self.io_read_iops is None else validate.io_iops(self.io_read_iops),
            io_write_iops=None if self.io_write_iops is None else validate.io_iops(self.io_write_iops),
            network_admin=bool(self.network_admin),
        )


@dataclass(frozen=True)
class Usage:
    """What a server uses now. The network counters are those of the host end of its veth,
    seen from the server: "in" is what the host end transmitted (it reached the server),
    "out" what the host end received. Counters start again from zero when the server starts
    (a new cgroup and veth); `started` (its init's start time, /proc/PID/stat field 22) tells
    one run from the next. Engine.status leaves the network fields 0; Engine.sample fills
    them."""

    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    pids: int = 0
    disk_used_bytes: int = 0
    net_in_bytes: int = 0
    net_out_bytes: int = 0
    net_in_packets: int = 0
    net_out_packets: int = 0
    started: int = 0


@dataclass(frozen=True)
class ServerSpec:
    """What the operator asked for at create time; stored as config.json."""

    name: str
    template: str
    template_version: str
    hostname: str
    addresses: tuple[str, ...]
    limits: Limits
    uid_base: int
    autostart: bool = False

    def interfaces(self) -> list[IPInterface]:
        return [ipaddress.ip_interface(a) for a in self.addresses]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["addresses"] = list(self.addresses)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerSpec:
        data = dict(data)
        data["limits"] = Limits(**data["limits"])
        data["addresses"] = tuple(data["addresses"])
        return cls(**data)


@dataclass(frozen=True)
class RuntimeState:
    """What the last start made; stored as runtime.json and checked against the kernel."""

    init_pid: int
    init_start_time: int  # /proc/PID/stat field 22, so a reused pid is not mistaken for init
    loop_device: str
    host_veth: str
    boot_id: str = ""  # the host's boot: after a reboot a new process may match pid and start time
    # Set when it runs the rescue system (rescue.py): the rescue template's version, whose init
    # runs and is asked to halt.
    rescue_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeState:
        return cls(**data)


@dataclass(frozen=True)
class Status:
    """A server's state, limits, addresses and usage, as `status` reports it."""

    name: str
    state: str  # "running" | "stopped"
    init_pid: int | None
    ips: list[str]
    hostname: str
    template: str
    uid_base: int
    limits: Limits
    usage: Usage
    autostart: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # Running the rescue system with its own files at /mnt (state stays "running": the
    # kernel's word; this says which system runs).
    rescue: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data.update(self.extra)
        return data
