"""Network namespaces the benchmarks make on their own bridge (a "client host", a bare server):
made, checked and deleted by name. Traffic from them goes only to the bridge's network."""

from __future__ import annotations

import ipaddress
import os
import signal

from bench import common
from bench.common import must, run


def exec_argv(name: str) -> list[str]:
    """The argv prefix that runs a program in namespace NAME."""
    return ["ip", "netns", "exec", name]


def add(name: str) -> None:
    if run(["ip", "netns", "add", name]).returncode != 0:
        raise RuntimeError(f"cannot add network namespace {name}")


def wire(name: str, veth: str, bridge: str, addr: str) -> None:
    """Give namespace NAME one veth on BRIDGE (the host end VETH; "eth0" inside with
    ADDR/prefix) and lo: no route out of the bridge's network."""
    must(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
    must(["ip", "link", "set", veth, "master", bridge, "up"])
    must([*exec_argv(name), "ip", "addr", "add", addr, "dev", "eth0"])
    must([*exec_argv(name), "ip", "link", "set", "eth0", "up"])
    must([*exec_argv(name), "ip", "link", "set", "lo", "up"])


def names() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name]).returncode == 0


def delete(name: str) -> list[str]:
    """Kill what runs in our namespace NAME, then delete it (its veth pair goes with it)."""
    problems = []
    if name not in names():
        return problems
    pids = run(["ip", "netns", "pids", name]).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    # Its veths first, each pair at once: the namespace's own teardown deletes them later, in a
    # kernel work queue, and a bridge removed meanwhile still had their host ends as ports
    # (bench/storage.py left vsbenchst0 behind that way).
    for line in run(["ip", "-n", name, "-o", "link", "show", "type", "veth"]).stdout.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        run(["ip", "-n", name, "link", "del", "dev", ifname])
    if run(["ip", "netns", "del", name]).returncode != 0:
        problems.append(f"netns {name} could not be deleted")
    return problems


def check_route(name: str, addr: str, network: ipaddress.IPv4Network) -> None:
    """Abort unless namespace NAME sends ADDR (in the benchmark's NETWORK) out of its veth on
    our bridge, and has no default route."""
    ip = ipaddress.ip_address(addr)
    if ip not in network or ip not in common.BENCH_SPACE:
        raise common.UnsafeRoute(f"{ip} is outside the benchmark range {network}")
    dev, out = common.route_dev(ip, name)
    if out.returncode != 0 or dev != "eth0":
        raise common.UnsafeRoute(f"in {name}, ip route get {ip} names {dev!r}: {out.stdout.strip()}")
    if run([*exec_argv(name), "ip", "route", "show", "default"]).stdout.strip():
        raise common.UnsafeRoute(f"{name} has a default route")
