"""cgroup v1: one hierarchy per controller (cpu and cpuacct may share one), the group in each."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EngineError
from ..spec import Limits, Usage
from .base import (
    CPU_PERIOD_US,
    DEFAULT_SHARES,
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

# freezer: a snapshot stops every process of a running server while its disk is copied.
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")
# A file every mounted hierarchy of that controller has at its root (pids has none of its own).
_MARKERS = {
    "cpu": "cpu.cfs_quota_us",
    "cpuacct": "cpuacct.usage",
    "memory": "memory.limit_in_bytes",
    "pids": "cgroup.procs",
    "blkio": "blkio.throttle.write_bps_device",
    "freezer": "cgroup.procs",  # freezer.state exists only below the root
}
# blk-throttle's per-device ceilings: "MAJ:MIN VALUE" lines; writing VALUE 0 removes one.
_THROTTLE = {
    "io_read_bps": "blkio.throttle.read_bps_device",
    "io_write_bps": "blkio.throttle.write_bps_device",
    "io_read_iops": "blkio.throttle.read_iops_device",
    "io_write_iops": "blkio.throttle.write_iops_device",
}
# A proportional weight exists in v1 only with BFQ as the device's scheduler (CFQ, the other
# one that read blkio.weight, left the kernel in 5.0). Kernels built without BFQ, like this
# host's 6.18, have neither file: the weight is then not in force (limits() says None).
_WEIGHT_FILES = ("blkio.bfq.weight", "blkio.weight")
# v1 shows "no limit" as the largest page-aligned counter, 2^63 - 4096 on x86-64.
_UNLIMITED_FLOOR = 1 << 62
_MAX_SHARES = 262_144
_MIN_SHARES = 2


def missing(root: Path) -> list[str]:
    return [c for c in CONTROLLERS if not (Path(root) / c / _MARKERS[c]).is_file()]


def cpu_shares(cpus: float | None) -> int:
    if cpus is None:
        return DEFAULT_SHARES
    return min(_MAX_SHARES, max(_MIN_SHARES, round(DEFAULT_SHARES * cpus)))


class CgroupV1(CgroupBackend):
    version = 1

    def __init__(self, root: Path, parent: str) -> None:
        super().__init__(root, parent)
        # Remembered: a start asks some forty times, and the hierarchies' mounts stay put.
        self._hierarchies: dict[str, Path] = {}
        self._parent_paths: list[Path] = []

    def hierarchy(self, controller: str) -> Path:
        # Resolving makes a co-mounted "cpu,cpuacct" (with cpu and cpuacct symlinks) one hierarchy.
        if controller not in self._hierarchies:
            self._hierarchies[controller] = Path(os.path.realpath(self.root / controller))
        return self._hierarchies[controller]

    def parent_paths(self) -> list[Path]:
        if not self._parent_paths:
            # Built whole, then set: start_many's threads ask at once, and one that saw a list
            # still being filled made its group in some hierarchies only ("pids.max does not
            # exist").
            paths: list[Path] = []
            for controller in CONTROLLERS:
                path = self.hierarchy(controller) / self.parent
                if path not in paths:
                    paths.append(path)
            self._parent_paths = paths
        return list(self._parent_paths)

    def group(self, controller: str, name: str) -> Path:
        return self.hierarchy(controller) / self.parent / name

    def _create_dirs(self, name: str) -> None:
        for parent in self.parent_paths():
            make_dir(parent)
            make_dir(parent / name)

    def _apply(self, name: str, limits: Limits) -> None:
        self._set_cpu(self.group("cpu", name), limits.cpus)
        self._set_memory(self.group("memory", name), limits.memory_bytes)
        write_value(self.group("pids", name) / "pids.max", "max" if limits.pids is None else limits.pids)
        weight = self._weight_file(name)
        if weight is not None:
            write_value(weight, io_weight_value(limits.io_weight, MAX_BFQ_WEIGHT))

    def _apply_host_io(self, device: str, limits: Limits) -> None:
        # v1 has no cgroup writeback: pages a guest dirties and does not fsync itself are
        # written back by the kernel's flusher threads, whose bios belong to the root group.
        # Measured here: 300 MiB by `dd` in a guest with 64 MiB of memory went to its disk in
        # 0.2 s past a 10 MB/s ceiling, all of it charged to the root group. v1 throttling is
        # flat (a group's ceiling does not bound its children, nor a child's its parent), and
        # the device is this server's alone while it runs, so the same ceiling on the root
        # group paces that writeback (and the guest filesystem's journal) too: 31.5 s for the
        # same 300 MiB. The server's disk may then take up to twice its ceiling, one share
        # from its own processes and one from the kernel's writeback for it.
        root = self.hierarchy("blkio")
        for field, filename in _THROTTLE.items():
            value = getattr(limits, field)
            write_value(root / filename, f"{device} {0 if value is None else value}")

    def _weight_file(self, name: str) -> Path | None:
        for filename in _WEIGHT_FILES:
            path = self.group("blkio", name) / filename
            if path.exists():
                return path
        return None

    def _apply_io(self, name: str, device: str, limits: Limits) -> None:
        group = self.group("blkio", name)
        if not group.is_dir():
            # Started by an engine that did not yet put servers in a blkio group: its processes
            # are in the hierarchy's root, which no ceiling may be put on.
            if all(getattr(limits, field) is None for field in _THROTTLE):
                return
            raise EngineError(f"server {name!r} has no blkio group: its disk I/O limits hold from its next start")
        for field, filename in _THROTTLE.items():
            value = getattr(limits, field)
            write_value(group / filename, f"{device} {0 if value is None else value}")

    def _set_cpu(self, group: Path, cpus: float | None) -> None:
        write_value(group / "cpu.cfs_period_us", CPU_PERIOD_US)
        write_value(group / "cpu.cfs_quota_us", -1 if cpus is None else cpu_quota_us(cpus))
        write_value(group / "cpu.shares", cpu_shares(cpus))

    def _set_memory(self, group: Path, limit: int | None) -> None:
        memory = group / "memory.limit_in_bytes"
        memsw = group / "memory.memsw.limit_in_bytes"
        value = -1 if limit is None else limit
        if not memsw.exists():
            write_value(memory, value)
            return
        # The kernel keeps memsw >= memory at every step: raise memsw first, lower it last.
        current = read_int(memory)
        if limit is None or limit > current:
            write_value(memsw, value)
            write_value(memory, value)
        else:
            write_value(memory, value)
            write_value(memsw, value)

    def procs_files(self, name: str) -> list[Path]:
        # A server started before the engine joined blkio has no group there (its processes
        # are in that hierarchy's root): enter it through the hierarchies it has.
        files = super().procs_files(name)
        blkio = self.group("blkio", name)
        if not blkio.is_dir() and any(path.parent.is_dir() for path in files if path.parent != blkio):
            files.remove(blkio / "cgroup.procs")
        return files

    def _freezer_state(self, name: str) -> Path:
        return self.group("freezer", name) / "freezer.state"

    def _request_freeze(self, name: str, frozen: bool) -> bool:
        state = self._freezer_state(name)
        if not state.exists():
            return False
        write_value(state, "FROZEN" if frozen else "THAWED")
        return True

    def frozen(self, name: str) -> bool:
        state = self._freezer_state(name)
        try:
            return state.read_text().strip() != "THAWED"
        except FileNotFoundError:
            return False

    def _all_frozen(self, name: str) -> bool:
        # FREEZING while some task has not reached a point where it can stop.
        return read_text(self._freezer_state(name)).strip() == "FROZEN"

    def attach(self, name: str, pid: int) -> None:
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        for path in self.paths(name):
            write_value(path / "cgroup.procs", pid)

    def join_self(self, name: str) -> None:
        # Moving a process through cgroup.procs takes the kernel's threadgroup lock for
        # writing, which waits for an RCU grace period (6-25 ms here, on every start). A
        # thread that moves itself through `tasks` ("0": the caller) is exempt, and a
        # single-threaded process moves whole with its only thread: about 1 ms for all four.
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        for path in self.paths(name):
            write_value(path / "tasks", 0)

    def usage(self, name: str) -> Usage:
        if not self.exists(name):
            return Usage()
        return Usage(
            cpu_seconds=read_int(self.group("cpuacct", name) / "cpuacct.usage") / 1e9,
            memory_bytes=read_int(self.group("memory", name) / "memory.usage_in_bytes"),
            pids=read_int(self.group("pids", name) / "pids.current"),
        )

    def limits(self, name: str, device: str | None = None) -> Limits | None:
        if not self.exists(name):
            return None
        cpu = self.group("cpu", name)
        quota = read_int(cpu / "cpu.cfs_quota_us")
        memory = read_int(self.group("memory", name) / "memory.limit_in_bytes")
        blkio = self.group("blkio", name)
        ceilings = {field: _device_values(blkio / filename) for field, filename in _THROTTLE.items()}
        if device is None:
            # A server's group limits its one disk: the device named in any of the files.
            device = next((dev for values in ceilings.values() for dev in sorted(values)), None)
        weight = self._weight_file(name)
        return Limits(
            cpus=None if quota < 0 else quota / read_int(cpu / "cpu.cfs_period_us"),
            memory_bytes=None if memory >= _UNLIMITED_FLOOR else memory,
            pids=read_max(self.group("pids", name) / "pids.max"),
            io_weight=None if weight is None else _weight(weight),
            io_read_bps=ceilings["io_read_bps"].get(device or ""),
            io_write_bps=ceilings["io_write_bps"].get(device or ""),
            io_read_iops=ceilings["io_read_iops"].get(device or ""),
            io_write_iops=ceilings["io_write_iops"].get(device or ""),
        )


def _device_values(path: Path) -> dict[str, int]:
    """A blk-throttle file's "MAJ:MIN VALUE" lines; a missing file (no blkio group) has none."""
    if not path.exists():
        return {}
    found: dict[str, int] = {}
    for line in read_text(path).splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise EngineError(f"unexpected line in {path}: {line!r}")
        found[parts[0]] = int(parts[1])
    return found


def _weight(path: Path) -> int:
    """BFQ's legacy file shows a bare number; newer kernels may show "default N" lines."""
    text = read_text(path)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 1 and parts[0].isdigit():
            return int(parts[0])
        if len(parts) == 2 and parts[0] == "default" and parts[1].isdigit():
            return int(parts[1])
    raise EngineError(f"unexpected content in {path}: {text.strip()!r}")
