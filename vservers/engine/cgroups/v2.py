"""cgroup v2: one unified tree; controllers reach a group only through its ancestors' subtree_control."""

from __future__ import annotations

from pathlib import Path

from ..errors import EngineError
from ..spec import Limits, Usage
from .base import (
    CPU_PERIOD_US,
    DEFAULT_WEIGHT,
    MAX_BFQ_WEIGHT,
    CgroupBackend,
    cpu_quota_us,
    io_weight_value,
    make_dir,
    read_int,
    read_max,
    read_text,
    write_value,
)

CONTROLLERS = ("cpu", "io", "memory", "pids")
# io.max's keys for each ceiling, in the order the kernel prints them.
_IO_MAX_KEYS = {
    "rbps": "io_read_bps",
    "wbps": "io_write_bps",
    "riops": "io_read_iops",
    "wiops": "io_write_iops",
}
_MIN_WEIGHT = 1
_MAX_WEIGHT = 10_000


def missing(root: Path) -> list[str]:
    try:
        available = (Path(root) / "cgroup.controllers").read_text().split()
    except OSError:
        available = []
    return [c for c in CONTROLLERS if c not in available]


def cpu_weight(cpus: float | None) -> int:
    if cpus is None:
        return DEFAULT_WEIGHT
    return min(_MAX_WEIGHT, max(_MIN_WEIGHT, round(DEFAULT_WEIGHT * cpus)))


def cpu_max(cpus: float | None) -> str:
    quota = "max" if cpus is None else str(cpu_quota_us(cpus))
    return f"{quota} {CPU_PERIOD_US}"


class CgroupV2(CgroupBackend):
    version = 2

    def parent_paths(self) -> list[Path]:
        return [self.root / self.parent]

    def group(self, name: str) -> Path:
        return self.paths(name)[0]

    def _create_dirs(self, name: str) -> None:
        parent = self.root / self.parent
        self._enable_controllers(self.root)
        make_dir(parent)
        self._enable_controllers(parent)
        make_dir(parent / name)

    def _enable_controllers(self, group: Path) -> None:
        control = group / "cgroup.subtree_control"
        enabled = read_text(control).split()
        wanted = [c for c in CONTROLLERS if c not in enabled]
        if wanted:
            write_value(control, " ".join(f"+{c}" for c in wanted))

    def _apply(self, name: str, limits: Limits) -> None:
        group = self.group(name)
        write_value(group / "cpu.max", cpu_max(limits.cpus))
        write_value(group / "cpu.weight", cpu_weight(limits.cpus))
        write_value(group / "memory.max", "max" if limits.memory_bytes is None else limits.memory_bytes)
        swap = group / "memory.swap.max"
        if swap.exists():
            # Like memsw in v1: a limited server may not spill past its limit into swap.
            write_value(swap, "max" if limits.memory_bytes is None else 0)
        write_value(group / "pids.max", "max" if limits.pids is None else limits.pids)
        # io.weight is io.cost's (it does nothing until a device has io.cost.qos enabled);
        # io.bfq.weight exists where a device may use BFQ. A kernel with neither has no weight.
        if (group / "io.weight").exists():
            write_value(group / "io.weight", f"default {io_weight_value(limits.io_weight)}")
        elif (group / "io.bfq.weight").exists():
            write_value(group / "io.bfq.weight", f"default {io_weight_value(limits.io_weight, MAX_BFQ_WEIGHT)}")

    def _apply_io(self, name: str, device: str, limits: Limits) -> None:
        values = " ".join(
            f"{key}={'max' if getattr(limits, field) is None else getattr(limits, field)}"
            for key, field in _IO_MAX_KEYS.items()
        )
        write_value(self.group(name) / "io.max", f"{device} {values}")

    def _apply_host_io(self, device: str, limits: Limits) -> None:
        # Nothing: with the memory and io controllers both on v2, writeback is charged to the
        # group that dirtied the pages, so io.max already paces it (and the root has no io.max).
        return

    def _request_freeze(self, name: str, frozen: bool) -> bool:
        control = self.group(name) / "cgroup.freeze"
        if not control.exists():
            return False
        write_value(control, 1 if frozen else 0)
        return True

    def frozen(self, name: str) -> bool:
        try:
            return (self.group(name) / "cgroup.freeze").read_text().strip() == "1"
        except FileNotFoundError:
            return False

    def _all_frozen(self, name: str) -> bool:
        # cgroup.freeze is what was asked; cgroup.events says "frozen 1" once it holds.
        for line in read_text(self.group(name) / "cgroup.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "frozen":
                return value.strip() == "1"
        raise EngineError(f"no frozen key in {self.group(name) / 'cgroup.events'}")

    def attach(self, name: str, pid: int) -> None:
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        write_value(self.group(name) / "cgroup.procs", pid)

    def join_self(self, name: str) -> None:
        # v2 has no per-thread escape for a domain group ("cgroup.threads" is for threaded
        # ones): "0" in cgroup.procs moves the caller's process.
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        write_value(self.group(name) / "cgroup.procs", 0)

    def kill(self, name: str) -> None:
        killer = self.group(name) / "cgroup.kill"
        if killer.exists():
            write_value(killer, 1)
        else:
            super().kill(name)

    def usage(self, name: str) -> Usage:
        if not self.exists(name):
            return Usage()
        group = self.group(name)
        return Usage(
            cpu_seconds=_usage_usec(group / "cpu.stat") / 1e6,
            memory_bytes=read_int(group / "memory.current"),
            pids=read_int(group / "pids.current"),
        )

    def limits(self, name: str, device: str | None = None) -> Limits | None:
        if not self.exists(name):
            return None
        group = self.group(name)
        quota, period = read_text(group / "cpu.max").split()
        ceilings = _io_max(group / "io.max")
        if device is None:
            # A server's group limits its one disk: the device io.max lists.
            device = min(ceilings, default="")
        on_device = ceilings.get(device, {})
        return Limits(
            cpus=None if quota == "max" else int(quota) / int(period),
            memory_bytes=read_max(group / "memory.max"),
            pids=read_max(group / "pids.max"),
            io_weight=_io_weight(group),
            io_read_bps=on_device.get("io_read_bps"),
            io_write_bps=on_device.get("io_write_bps"),
            io_read_iops=on_device.get("io_read_iops"),
            io_write_iops=on_device.get("io_write_iops"),
        )


def _io_max(path: Path) -> dict[str, dict[str, int | None]]:
    """io.max's "MAJ:MIN rbps=N wbps=max riops=max wiops=max" lines, by device; the kernel
    lists only devices with a ceiling, and a group without the io controller has no file."""
    if not path.exists():
        return {}
    found: dict[str, dict[str, int | None]] = {}
    for line in read_text(path).splitlines():
        device, *pairs = line.split()
        values: dict[str, int | None] = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key not in _IO_MAX_KEYS or not (value == "max" or value.isdigit()):
                raise EngineError(f"unexpected entry {pair!r} in {path}")
            values[_IO_MAX_KEYS[key]] = None if value == "max" else int(value)
        found[device] = values
    return found


def _io_weight(group: Path) -> int | None:
    """The group's default weight ("default N" in io.weight or io.bfq.weight), None where the
    kernel offers no weight."""
    for filename in ("io.weight", "io.bfq.weight"):
        path = group / filename
        if path.exists():
            for line in read_text(path).splitlines():
                key, _, value = line.partition(" ")
                if key == "default" and value.strip().isdigit():
                    return int(value)
            raise EngineError(f"no default weight in {path}")
    return None


def _usage_usec(path: Path) -> int:
    for line in read_text(path).splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise EngineError(f"no usage_usec in {path}")
