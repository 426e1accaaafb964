"""cgroup v1: one hierarchy per controller (cpu and cpuacct may share one), the group in each."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EngineError
from ..spec import Limits, Usage
from .base import (
    CPU_PERIOD_US,
    DEFAULT_SHARES,
    CgroupBackend,
    cpu_quota_us,
    make_dir,
    read_int,
    read_max,
    write_value,
)

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
# A file every mounted hierarchy of that controller has at its root (pids has none of its own).
_MARKERS = {
    "cpu": "cpu.cfs_quota_us",
    "cpuacct": "cpuacct.usage",
    "memory": "memory.limit_in_bytes",
    "pids": "cgroup.procs",
}
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
            for controller in CONTROLLERS:
                path = self.hierarchy(controller) / self.parent
                if path not in self._parent_paths:
                    self._parent_paths.append(path)
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

    def limits(self, name: str) -> Limits | None:
        if not self.exists(name):
            return None
        cpu = self.group("cpu", name)
        quota = read_int(cpu / "cpu.cfs_quota_us")
        memory = read_int(self.group("memory", name) / "memory.limit_in_bytes")
        return Limits(
            cpus=None if quota < 0 else quota / read_int(cpu / "cpu.cfs_period_us"),
            memory_bytes=None if memory >= _UNLIMITED_FLOOR else memory,
            pids=read_max(self.group("pids", name) / "pids.max"),
        )
