"""Servers bench/overhead.py runs on the host beside the VPSs: each in a session and a CPU
accounting cgroup of its own (so the CPU time of every process it forks counts), recorded with
PID and start time so a later run can stop what a crashed one left; their ports, namespaces and
cleanup."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import netns
from bench.common import HOST_ENV, must, run
from bench.procs import proc_start, stop_group

# Runs as the first program of every host-side server: joins the cgroup, then execs the server.
ENTER_CGROUP = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execvp(sys.argv[2], sys.argv[2:])"
CGROUP_PREFIX = "vsbenchov-"


@dataclass
class HostSide:
    """What this run started or made on the host outside the engine; all removed by cleanup."""

    pid_file: Path
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    cgroups: dict[str, Path] = field(default_factory=dict)  # server label -> its accounting cgroup
    started: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # also after stop
    netns: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)  # overlays of bench/overhead_ab.py, unmounted last

    def mount_overlay(self, lower: Path, rw: Path, merged: Path) -> None:
        """An overlayfs at MERGED over LOWER, its upper and work directories in RW (all on the
        host's own filesystem: no loop device, no idmapping)."""
        for path in (rw / "upper", rw / "work", merged):
            path.mkdir(parents=True)
        must(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={rw / 'upper'},workdir={rw / 'work'}", str(merged)])
        self.mounts.append(merged)

    def start(self, label: str, argv: list[str], log_path: Path) -> subprocess.Popen:
        """Start ARGV in a session of its own, inside an accounting cgroup of its own (so the
        CPU time of every process it forks counts, also of those nobody reaps)."""
        group = accounting_cgroup(label)
        group.mkdir(exist_ok=True)
        self.cgroups[label] = group
        argv = [sys.executable, "-c", ENTER_CGROUP, str(group / "cgroup.procs"), *argv]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=HOST_ENV, start_new_session=True)
        self.servers[label] = proc
        self.started[label] = (proc.pid, proc_start(proc.pid))
        self.save()
        return proc

    def save(self) -> None:
        """Record the running servers' PIDs and start times in pid_file (for kill_recorded)."""
        data = {label: [p.pid, proc_start(p.pid)] for label, p in self.servers.items() if p.poll() is None}
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps(data))

    def stop(self, label: str) -> None:
        proc = self.servers.pop(label, None)
        if proc is not None:
            stop_group(proc.pid, proc)
        self.save()

    def make_netns(self, name: str, veth: str, bridge: str, addr: str) -> None:
        """A network namespace with one veth on BRIDGE (address ADDR/prefix) and no route out
        of the bridge's network."""
        netns.add(name)
        self.netns.append(name)
        netns.wire(name, veth, bridge, addr)

    def cleanup(self) -> list[str]:
        problems = []
        for label in list(self.servers):
            try:
                self.stop(label)
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                problems.append(f"stop host server {label}: {exc}")
        for name in self.netns:
            problems += netns.delete(name)
        self.netns.clear()
        for label, group in list(self.cgroups.items()):
            problems += remove_cgroup(group)
            del self.cgroups[label]
        for merged in reversed(self.mounts):
            done = run(["umount", str(merged)])
            if done.returncode != 0:
                problems.append(f"umount {merged}: {done.stderr.strip()}")
        self.mounts.clear()
        return problems


def kill_recorded(pid_file: Path) -> None:
    """Stop host-side servers a crashed earlier run left (recorded pid and start time)."""
    try:
        data = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return
    for _label, (pid, start) in data.items():
        if start is not None and proc_start(pid) == start:
            stop_group(pid)


# --- CPU accounting cgroups -------------------------------------------------------------------


def accounting_root() -> Path:
    v1 = Path("/sys/fs/cgroup/cpuacct")
    return v1 if (v1 / "cpuacct.usage").exists() else Path("/sys/fs/cgroup")


def accounting_cgroup(label: str) -> Path:
    if not re.fullmatch(r"[a-z0-9-]{1,40}", label):
        raise ValueError(f"bad label {label!r}")
    return accounting_root() / f"{CGROUP_PREFIX}{label}"


def stale_cgroups() -> list[Path]:
    """Accounting cgroups of ours (of this run or a crashed earlier one)."""
    return sorted(accounting_root().glob(CGROUP_PREFIX + "*"))


def cgroup_cpu(group: Path) -> float:
    """CPU seconds used by everything that ever ran in GROUP (cgroup v1 cpuacct or v2 cpu.stat)."""
    usage = group / "cpuacct.usage"
    if usage.exists():
        return int(usage.read_text()) / 1e9
    for line in (group / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    raise RuntimeError(f"no CPU usage in {group}")


def remove_cgroup(group: Path) -> list[str]:
    """Kill what is left in our accounting cgroup GROUP and remove it."""
    if not group.is_dir():
        return []
    for _ in range(50):
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    try:
        group.rmdir()
    except OSError as exc:
        return [f"cgroup {group}: {exc}"]
    return []


# --- ports, CPUs, the engine's firewall -------------------------------------------------------


def port_free(port: int) -> bool:
    """Nothing on the host uses PORT on any address (not even a connection in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once, never listens
            return True
        except OSError:
            return False


def pick_ports(labels: list[str], first: int) -> dict[str, int]:
    """A free port from FIRST up for each host-side server (the same port at the gateway, on
    loopback and in the bare namespace)."""
    ports: dict[str, int] = {}
    for port in range(first, first + 200):
        if len(ports) == len(labels):
            break
        if port_free(port):
            ports[labels[len(ports)]] = port
    if len(ports) != len(labels):
        raise RuntimeError("no free ports for the host-side servers")
    return ports


def listening(ports: list[int]) -> list[int]:
    """Those of PORTS something on the host listens on."""
    out = run(["ss", "-Hltn"]).stdout
    return [port for port in ports if re.search(rf":{port}\s", out)]


def firewall_tables(bridge: str) -> list[str]:
    """The engine's nftables tables for BRIDGE, if the engine makes any."""
    out = run(["nft", "list", "tables"]).stdout if shutil.which("nft", path=HOST_ENV["PATH"]) else ""
    return [line.strip() for line in out.splitlines() if line.strip().endswith(f" vservers-{bridge}")]


def pin(pids: list[int], cpu: int) -> None:
    for pid in pids:
        run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)])
