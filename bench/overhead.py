"""Overhead of a VPS against the bare host: HTTP, a CPU-bound loop and file reads, side by side.

Run as root from the repository root::

    .venv/bin/python bench/overhead.py --quick     # about 2.5 minutes (the default)
    .venv/bin/python bench/overhead.py --full      # longer and more repetitions
    .venv/bin/python bench/overhead.py --smoke     # seconds per measurement; writes no results

The same program with the same files runs on both sides: the busybox template's own static
busybox (httpd, sh, dd) and the Debian template's own Apache (its /usr hard-linked, its /etc and
/var copied, run in a chroot on the host). HTTP is measured with wrk from a network namespace of
its own on the benchmark's bridge (a "client host"), against three servers:

    host       the host's own stack, at the bridge's address       client ns → bridge → host
    bare netns the host-side server in a plain network namespace   client ns → bridge → veth → netns
               on the bridge (no user namespace, cgroup, overlay)
    VPS        the server inside a VPS                             client ns → bridge → veth → VPS

and over loopback (wrk beside the server: on the host, and inside the VPS through engine.run),
which leaves the bridge and veths out. Server and client are pinned to different CPUs. Uses its
own installation (bench/common.py OVERHEAD_ENV), prints JSON and Markdown, writes
bench/results/overhead.json, its section of SUMMARY.md and overhead-*.png, and removes
everything it made at the end (also on SIGINT/SIGTERM).

This file sets up and measures. Beside it: wrk.py (wrk runs, their CPU time, rounds),
hostside.py (the host-side servers), netns.py (the namespaces on the bridge), template_store.py
(the Debian template kept between runs) and overhead_report.py (ratios, tables, plots).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, hostside, netns, report  # noqa: E402
from bench.common import HOST_ENV, guest_write, log, must, run, summary  # noqa: E402
from bench.hostside import HostSide, cgroup_cpu, firewall_tables, pin  # noqa: E402
from bench.overhead_report import analysis, derived, markdown, plot  # noqa: E402
from bench.procs import proc_start  # noqa: E402
from bench.template_store import (  # noqa: E402
    TEMPLATE_STORE,
    copy_rootfs,
    ensure_debian_in_store,
    exclusive,
    link_debian,
    write_private,
)
from bench.wrk import (  # noqa: E402
    BACKGROUND,
    CLIENT_CPU,
    CONNTRACK_PAUSES,
    SERVER_CPU,
    WRK_DIR,
    Target,
    children_cpu,
    compare,
    install_wrk,
    vps_runner,
    wrk_args,
    wrk_bundle,
)

# The engine accepts uid bases below 2^31 only; if common.OVERHEAD_ENV's were above, this one
# would be used (and noted in the results): clear of the other installations (tests 5M-600M+,
# bench 700M+).
UID_BASE_FALLBACK = 1_800_000_000

CLIENT_NS = "vsbenchov-client"
CLIENT_VETH = "vsbenchovc0"  # host end on the bridge; "eth0" inside the namespace
BARE_NS = "vsbenchov-srv"
BARE_VETH = "vsbenchovs0"
FIRST_PORT = 18480  # host-side servers listen here (and up), never on a wildcard address

BUSYBOX_VPS = "ov-busybox"
DEBIAN_VPS = "ov-debian"
PAGE_NAME = "bench.html"
PAGE_BYTES = 4096
# wrk's connections per server: busybox httpd listens with a backlog of 9, so more than that
# many connections lose SYNs under load and wait for a retransmission (1 s), which is not the
# server's speed; Apache's backlog is 511.
CONNS = {"busybox": 8, "apache": 32}

PROFILES = {
    "smoke": dict(http_reps=1, http_s=1, warmup_s=1, lo_reps=1, lo_s=1,
                  cpu_reps=2, cpu_iters=50_000, sys_bytes=100_000, forks=300, opens=20_000,
                  file_reps=2, file_mb=8, file_passes=4, template_mb=64, cold_reps=1),
    "quick": dict(http_reps=5, http_s=2, warmup_s=1, lo_reps=3, lo_s=2,
                  cpu_reps=7, cpu_iters=250_000, sys_bytes=500_000, forks=2000, opens=100_000,
                  file_reps=5, file_mb=64, file_passes=8, template_mb=512, cold_reps=3),
    "full": dict(http_reps=10, http_s=10, warmup_s=2, lo_reps=5, lo_s=10,
                 cpu_reps=15, cpu_iters=1_000_000, sys_bytes=2_000_000, forks=5000, opens=400_000,
                 file_reps=10, file_mb=128, file_passes=16, template_mb=2048, cold_reps=5),
}

LOOP_SCRIPT = 'i=0; while [ "$i" -lt "$1" ]; do i=$((i+1)); done'
# A subshell is a fork of the shell that exits at once: process creation and teardown.
FORK_SCRIPT = 'i=0; while [ "$i" -lt "$1" ]; do (:); i=$((i+1)); done'
# `: < FILE` opens FILE, moves it to stdin and closes it again, with no process and no read: a
# template file, the very same inode on both sides (the host's loop runs chrooted into the
# template), which the VPS opens through its overlay and idmapped lower layer. Against LOOP_SCRIPT,
# what an open and close through them costs.
OPEN_SCRIPT = 'i=0; while [ "$i" -lt "$1" ]; do : < "$2"; i=$((i+1)); done'
OPENED_FILE = "/bin/busybox"
# "$1" is the busybox binary: a bare `dd` would find the host's (or Debian's) GNU dd on $PATH.
READ_SCRIPT = 'i=0; while [ "$i" -lt "$3" ]; do "$1" dd if="$2" of=/dev/null bs=1048576 2>&1; i=$((i+1)); done'


# A bare host tracks no connections. The engine's firewall (`ct state` in its inet table)
# switches conntrack on for the host's whole network namespace, so without this table the
# host-side servers' packets, and through br_netfilter the bare netns's bridged ones, took a
# conntrack lookup and an entry per connection that the VPS's do not (the bridge table's notrack
# rules), and busybox's thousands of connections a second filled the table (the bench had to
# pause). With it no side keeps entries; its own rules cost about what the lookups did (perf of
# Apache over loopback: ~1.6 % of the host side's samples in nf_tables now, ~1.9 % in conntrack
# and nf_tables before), so the host side still pays netfilter work a bare host would not.
# Raw priority, the host-side servers' ports only; the engine's input chain lets them in by port
# (VSERVER_HOST_ALLOW), not by `ct state`.
UNTRACKED_TABLE = "vsbenchov-untracked"


def untrack_host_side(ports: list[int], gateway: str, bare: str) -> None:
    """Take the host-side servers' connections (host, its loopback, the bare netns) out of the
    host's conntrack, as on a bare host (see UNTRACKED_TABLE). Replies to the host's own
    connections through the bridge (the set-up's page checks of the bare netns) stay tracked:
    the engine's input chain lets them in by `ct state`."""
    if not ports or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise ValueError(f"bad ports {ports!r}")
    gw, bare_ip = ipaddress.IPv4Address(gateway), ipaddress.IPv4Address(bare)
    listed = ", ".join(str(p) for p in ports)
    out = f"ip daddr != {bare_ip} tcp dport {{ {listed} }} notrack; tcp sport {{ {listed} }} notrack;"
    pre = f"tcp dport {{ {listed} }} notrack; ip daddr != {gw} tcp sport {{ {listed} }} notrack;"
    must(["nft", "-f", "-"], input=(
        f"table inet {UNTRACKED_TABLE} {{\n"
        f"    chain pre {{ type filter hook prerouting priority raw; policy accept; {pre} }}\n"
        f"    chain out {{ type filter hook output priority raw; policy accept; {out} }}\n"
        "}\n"))


def tracked_ports(ports: list[int]) -> list[str]:
    """Entries of the host's conntrack table to or from PORTS (none once untrack_host_side ran:
    wait_page's requests to every host-side server checked it)."""
    try:
        with open("/proc/net/nf_conntrack") as fh:
            lines = fh.readlines()
    except OSError:
        return []
    marks = tuple(f"{kind}={p} " for p in ports for kind in ("sport", "dport"))
    # Each connection by its first direction's addresses and ports (the rest of the line moves).
    return [line[line.index(" src="):].split(" src=")[1].strip() for line in lines
            if " src=" in line and any(m in line for m in marks)]


def untracked_table_exists() -> bool:
    return run(["nft", "list", "table", "inet", UNTRACKED_TABLE]).returncode == 0


def remove_untracked() -> list[str]:
    if untracked_table_exists():
        done = run(["nft", "delete", "table", "inet", UNTRACKED_TABLE])
        if done.returncode != 0:
            return [f"nftables inet {UNTRACKED_TABLE}: {done.stderr.strip()}"]
    return []


def own_leftovers(host: HostSide, ports: list[int], bridge: str) -> list[str]:
    found = [f"netns {n}" for n in (CLIENT_NS, BARE_NS) if n in netns.names()]
    found += [f"link {v}" for v in (CLIENT_VETH, BARE_VETH) if netns.link_exists(v)]
    found += [f"process {label} (pid {pid})" for label, (pid, start) in host.started.items()
              if start is not None and proc_start(pid) == start]
    found += [f"listener on port {port}" for port in hostside.listening(ports)]
    found += [f"nftables {t}" for t in firewall_tables(bridge)]
    found += [f"cgroup {g}" for g in hostside.stale_cgroups()]
    if untracked_table_exists():
        found.append(f"nftables inet {UNTRACKED_TABLE}")
    return found


def wait_page(ip: str, port: int, body: bytes, timeout: float = 30.0) -> None:
    """Until IP:PORT serves BODY as /PAGE_NAME (loopback, or an address whose route the caller
    has checked)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = common.http_get(ip, port, "/" + PAGE_NAME, timeout=2.0)
        except OSError:
            got = None
        if got is not None and got[0] == 200 and got[1] == body:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"http://{ip}:{port}/{PAGE_NAME} did not serve the page: {got and got[0]}")
        time.sleep(0.05)


# --- commands on both sides -----------------------------------------------------------------


def dd_seconds(output: str) -> float:
    """The copy time busybox dd reports itself ("... copied, 0.016061 seconds, ..."), summed
    over every dd in OUTPUT: no process start-up in it."""
    found = [float(x) for x in re.findall(r"copied, ([\d.]+) seconds", output)]
    if not found:
        raise RuntimeError(f"no dd statistics in {output[-300:]!r}")
    return sum(found)


def run_side(side: str, argv: list[str], engine, name: str, host_env: dict | None = None) -> tuple[float, str, float]:
    """Run ARGV on the host or in the VPS NAME; (wall seconds, stdout + stderr, CPU seconds).

    CPU: user + system time of our waited-for children (in the VPS: engine.run's helper and,
    through it, the program), so other people's work on the machine does not count."""
    t0, cpu0 = time.perf_counter(), children_cpu()
    if side == "host":
        done = run(argv, env=host_env or HOST_ENV)
    else:
        done = engine.run(name, argv, timeout=600)
    elapsed, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{argv} ({side}) failed: {done.stderr.strip()}")
    return elapsed, done.stdout + done.stderr, cpu


def compare_commands(host_argv: list[str], vps_argv: list[str], engine, name: str, reps: int,
                     baseline: dict | None = None, own_timing: bool = False, host_env: dict | None = None) -> dict:
    """The same command on the host and in the VPS, alternating, REPS times each after one
    warm-up each. Timed by the wall clock minus the start-up of an empty command on that side
    (BASELINE, also for the CPU time), or, with OWN_TIMING, by what busybox dd reports (see
    dd_seconds); the CPU time of the processes (rusage) too."""
    argv = {"host": host_argv, "vps": vps_argv}
    for side in argv:
        run_side(side, argv[side], engine, name, host_env)  # warm-up: binaries and files in the page cache
    times: dict[str, list[float]] = {"host": [], "vps": []}
    cpus: dict[str, list[float]] = {"host": [], "vps": []}
    for i in range(reps):
        for side in ("host", "vps") if i % 2 == 0 else ("vps", "host"):
            wall, output, cpu = run_side(side, argv[side], engine, name, host_env)
            if own_timing:
                times[side].append(dd_seconds(output))
            else:
                times[side].append(wall - (baseline[side]["median"] if baseline else 0.0))
            cpus[side].append(cpu - (baseline[f"{side}_cpu"]["median"] if baseline else 0.0))
    return {"host_s": summary(times["host"]), "vps_s": summary(times["vps"]),
            "host_cpu_s": summary(cpus["host"]), "vps_cpu_s": summary(cpus["vps"]),
            "host_samples_s": times["host"], "vps_samples_s": times["vps"],
            "timing": "dd's own" if own_timing else ("wall minus start-up" if baseline else "wall")}


def evict(path: Path) -> None:
    """Drop PATH's pages from the page cache (written back first): a cold read without
    dropping the whole host's caches."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- the run --------------------------------------------------------------------------------


def make_page() -> bytes:
    head = b"<!DOCTYPE html>\n<html><head><title>overhead benchmark</title></head><body>\n"
    tail = b"</body></html>\n"
    line = b"<p>The same page on the host and in the VPS.</p>\n"
    body = head
    while len(body) + len(line) + len(tail) <= PAGE_BYTES:
        body += line
    body += b" " * (PAGE_BYTES - len(body) - len(tail)) + tail
    assert len(body) == PAGE_BYTES
    return body


def vps_cpu(engine, name: str) -> float:
    """CPU seconds the VPS's cgroup has used (every process in it, ever)."""
    return engine.status(name, with_addresses=False).usage.cpu_seconds


@dataclass
class Setup:
    """Everything the measurements need, made by `setup`."""

    engine: object
    config: object
    network: ipaddress.IPv4Network
    gw: str
    bare_ip: str
    hostdir: Path
    page: bytes
    busybox_bin: Path
    ports: dict[str, int]  # server label -> host-side port
    vps_ip: dict[str, str] = field(default_factory=dict)
    debian_rootfs: Path | None = None
    wrk_inside: dict[str, list[str]] = field(default_factory=dict)  # VPS -> argv prefix of its wrk
    host_cgroups: dict[str, Path] = field(default_factory=dict)  # host-side server -> accounting cgroup

    def host_cpu(self, server: str):
        group = self.host_cgroups[server]
        return lambda: cgroup_cpu(group)

    def vps_cpu(self, name: str):
        return lambda: vps_cpu(self.engine, name)

    @property
    def servers(self) -> list[tuple[str, int, str]]:
        """(label, host-side port, VPS name) of each web server."""
        vps = {"busybox": BUSYBOX_VPS, "apache": DEBIAN_VPS}
        return [(label, port, vps[label]) for label, port in self.ports.items()]

    def pin_vps_servers(self) -> None:
        for name in self.vps_ip:
            pin(self.engine.cgroups.procs(name), SERVER_CPU)


def setup(engine, config, env, profile: dict, ports: dict[str, int], result: dict, host: HostSide) -> Setup:
    """Templates, the VPSs, the namespaces and the host-side servers, all serving the page."""
    from vservers.engine import Limits, templates

    network = common.network_of(env)
    gw = str(config.gateway4.ip)
    bridge = config.bridge
    client_addr = f"{network.network_address + 2}/{network.prefixlen}"
    bare_addr = f"{network.network_address + 3}/{network.prefixlen}"
    bare_ip = bare_addr.split("/")[0]
    hostdir = config.root / "host"
    hostdir.mkdir(parents=True, exist_ok=True)
    page = make_page()

    # Templates: busybox built (its binary is cached), debian from the store.
    t0 = time.monotonic()
    busybox_info = templates.build(config, "busybox")
    result["setup"] = {"busybox_template_s": round(time.monotonic() - t0, 3)}
    busybox_bin = templates.rootfs_path(config, "busybox", busybox_info.version) / "bin" / "busybox"
    ctx = Setup(engine, config, network, gw, bare_ip, hostdir, page, busybox_bin, ports)
    with_apache = "apache" in ports
    if with_apache:
        version, built_s = ensure_debian_in_store(env)
        t0 = time.monotonic()
        link_debian(config, env, version)
        result["setup"].update(debian_template_build_s=round(built_s, 3), debian_template_version=version,
                               debian_template_link_s=round(time.monotonic() - t0, 3))
        debian_rootfs = ctx.debian_rootfs = templates.rootfs_path(config, "debian", version)

    # The VPSs.
    disk = max(256, 2 * profile["file_mb"] + 64) * 1024 * 1024
    ctx.vps_ip[BUSYBOX_VPS] = common.address(0, network).split("/")[0]
    t0 = time.monotonic()
    engine.create(BUSYBOX_VPS, "busybox", [common.address(0, network)], limits=Limits(disk_bytes=disk))
    engine.start(BUSYBOX_VPS)
    if with_apache:
        ctx.vps_ip[DEBIAN_VPS] = common.address(1, network).split("/")[0]
        engine.create(DEBIAN_VPS, "debian", [common.address(1, network)])
        engine.start(DEBIAN_VPS)
    for ip in ctx.vps_ip.values():
        common.check_route(ip, network, bridge)
        if common.wait_http(ip, time.monotonic() + 60) is None:
            raise RuntimeError(f"VPS {ip} does not answer HTTP")
    result["setup"]["vps_start_s"] = round(time.monotonic() - t0, 3)
    result["setup"]["firewall_tables"] = firewall_tables(bridge)
    ctx.pin_vps_servers()

    # The client's and the bare server's network namespaces.
    host.make_netns(CLIENT_NS, CLIENT_VETH, bridge, client_addr)
    # busybox httpd closes every connection and wrk often closes first too: thousands of
    # connections a second leave the client's ports in TIME_WAIT, and after some 14,000 (the
    # even half of the default range, which connect() tries first) new connections stall on
    # them. In the client's own namespace only: reuse TIME_WAIT ports (timestamps keep that
    # safe) and use the whole port range.
    must(["ip", "netns", "exec", CLIENT_NS, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
          "net.ipv4.ip_local_port_range=1024 65535"])
    host.make_netns(BARE_NS, BARE_VETH, bridge, bare_addr)

    # Same page everywhere.
    guest_write(engine, BUSYBOX_VPS, f"/var/www/{PAGE_NAME}", page)
    www = hostdir / "www"
    www.mkdir()
    shutil.copy(busybox_bin.parent.parent / "var" / "www" / "index.html", www / "index.html")
    (www / PAGE_NAME).write_bytes(page)

    bb_port = ctx.ports["busybox"]
    pinned = ["taskset", "-c", str(SERVER_CPU)]
    bb_httpd = [str(busybox_bin), "httpd", "-f", "-h", str(www), "-p"]
    host.start("busybox-host", pinned + bb_httpd + [f"{gw}:{bb_port}"], hostdir / "busybox-host.log")
    host.start("busybox-host-lo", pinned + bb_httpd + [f"127.0.0.1:{bb_port}"], hostdir / "busybox-lo.log")
    host.start("busybox-netns", ["ip", "netns", "exec", BARE_NS] + pinned + bb_httpd + [f"{bare_ip}:{bb_port}"],
               hostdir / "busybox-netns.log")

    if with_apache:
        guest_write(engine, DEBIAN_VPS, f"/var/www/html/{PAGE_NAME}", page)
        ap_port = ctx.ports["apache"]
        t0 = time.monotonic()
        for label, listen, ns in (("apache-host", [gw, "127.0.0.1"], None), ("apache-netns", [bare_ip], BARE_NS)):
            tree = hostdir / label
            apache_tree(debian_rootfs, tree, listen, ap_port, page)
            # The template's own runit service script, as in the VPS.
            argv = pinned + ["chroot", str(tree), "/etc/service/apache2/run"]
            host.start(label, (["ip", "netns", "exec", ns] if ns else []) + argv, hostdir / f"{label}.log")
        result["setup"]["apache_host_copies_s"] = round(time.monotonic() - t0, 3)

    untrack_host_side(sorted(ctx.ports.values()), gw, bare_ip)
    tracked_before = set(tracked_ports(sorted(ctx.ports.values())))  # an earlier run's, still in TIME_WAIT
    # Every server serves the same bytes; the client reaches only our bridge.
    for ip in [*ctx.vps_ip.values(), bare_ip]:
        common.check_route(ip, network, bridge)
    for port in ctx.ports.values():
        for ip in (gw, "127.0.0.1", bare_ip):
            wait_page(ip, port, page)
    for ip in ctx.vps_ip.values():
        wait_page(ip, 80, page)
    own = f"{gw} dst={bare_ip} "  # the host's own page checks of the bare netns: tracked on purpose
    tracked = {c for c in tracked_ports(sorted(ctx.ports.values())) if not c.startswith(own)} - tracked_before
    if tracked:
        raise RuntimeError(f"the host's conntrack still tracks the host side: {sorted(tracked)[:3]}")
    for ip in [gw, bare_ip, *ctx.vps_ip.values()]:
        netns.check_route(CLIENT_NS, ip, network)
    ctx.host_cgroups = dict(host.cgroups)
    bundle = wrk_bundle()
    for name in ctx.vps_ip:
        ctx.wrk_inside[name] = install_wrk(engine, name, bundle, busybox_bin)
    ctx.pin_vps_servers()  # again: Apache may have started more processes since
    return ctx


def apache_tree(debian_rootfs: Path, tree: Path, listen: list[str], port: int, page: bytes) -> None:
    """A copy of the Debian template at TREE for a host-side Apache: listening at each of LISTEN
    on PORT, its site on PORT, PAGE in place."""
    copy_rootfs(debian_rootfs, tree)
    write_private(tree / "etc/apache2/ports.conf", "".join(f"Listen {a}:{port}\n" for a in listen))
    site = tree / "etc/apache2/sites-available/000-default.conf"
    text = site.read_text()
    if "<VirtualHost *:80>" not in text:
        raise RuntimeError(f"unexpected {site}")
    write_private(site, text.replace("<VirtualHost *:80>", f"<VirtualHost *:{port}>"))
    write_private(tree / "var/www/html" / PAGE_NAME, page)


def measure_http(ctx: Setup, profile: dict) -> dict:
    """wrk through the bridge (host, bare netns, VPS), then over loopback (host, VPS)."""
    secs = profile["http_s"]
    client = ["ip", "netns", "exec", CLIENT_NS, "taskset", "-c", str(CLIENT_CPU), "wrk"]
    url = f"/{PAGE_NAME}"
    http: dict = {}
    for label, port, vps in ctx.servers:
        conns = CONNS[label]
        log(f"http {label}: {profile['http_reps']} rounds of {secs} s per side (bridge)")
        http[label] = {"bridge": compare([
            Target("host", client + wrk_args(f"http://{ctx.gw}:{port}{url}", secs, conns),
                   server_cpu=ctx.host_cpu(f"{label}-host")),
            Target("bare_netns", client + wrk_args(f"http://{ctx.bare_ip}:{port}{url}", secs, conns),
                   server_cpu=ctx.host_cpu(f"{label}-netns")),
            Target("vps", client + wrk_args(f"http://{ctx.vps_ip[vps]}:80{url}", secs, conns),
                   server_cpu=ctx.vps_cpu(vps)),
        ], profile["http_reps"], profile["warmup_s"], f"{label} bridge")}
    for label, port, vps in ctx.servers:
        log(f"http {label}: {profile['lo_reps']} rounds of {profile['lo_s']} s per side (loopback)")
        inside = ctx.wrk_inside[vps]
        conns = CONNS[label]
        lo_server = "busybox-host-lo" if label == "busybox" else f"{label}-host"
        http[label]["loopback"] = compare([
            Target("host", ["taskset", "-c", str(CLIENT_CPU), "wrk"]
                   + wrk_args(f"http://127.0.0.1:{port}{url}", profile["lo_s"], conns),
                   server_cpu=ctx.host_cpu(lo_server)),
            Target("vps", inside + wrk_args(f"http://127.0.0.1:80{url}", profile["lo_s"], conns),
                   vps_runner(ctx.engine, vps), ctx.vps_cpu(vps)),
        ], profile["lo_reps"], profile["warmup_s"], f"{label} loopback")
    return http


def bb_prefixes(ctx: Setup) -> tuple[list[str], list[str]]:
    """The same busybox, pinned to the server CPU: on the host, in the VPS."""
    return ([str(ctx.busybox_bin), "taskset", "-c", str(SERVER_CPU), str(ctx.busybox_bin)],
            ["/bin/busybox", "taskset", "-c", str(SERVER_CPU), "/bin/busybox"])


def guest_like_env() -> dict[str, str]:
    """The environment engine.run gives a program in the VPS (vservers.engine.guest.spawn)."""
    from vservers.engine.spec import GUEST_PATH

    return {"PATH": GUEST_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "xterm"),
            "LANG": "C.UTF-8", "container": "vserver"}


def loop_prefixes(ctx: Setup) -> tuple[list[str], list[str]]:
    """For the CPU loops: the same busybox, pinned, without address-space randomisation, with
    the same argv and environment on both sides (on the host chrooted into the template's
    rootfs, which it only reads), so both processes get the very same memory layout. With ASLR
    the loop's time jumps between two speeds from run to run (addresses of stack and heap
    aliasing in the caches), by up to 40 %."""
    tail = ["/bin/busybox", "setarch", "linux64", "-R", "/bin/busybox", "taskset", "-c", str(SERVER_CPU),
            "/bin/busybox"]
    return ["chroot", str(ctx.busybox_bin.parent.parent), *tail], tail


def syscall_prefixes(ctx: Setup) -> tuple[list[str], list[str]]:
    """As loop_prefixes, but on the host outside the template (whose /dev is empty)."""
    bb = str(ctx.busybox_bin)
    _, tail = loop_prefixes(ctx)
    return [bb, "setarch", "linux64", "-R", bb, "taskset", "-c", str(SERVER_CPU), bb], tail


def measure_cpu(ctx: Setup, profile: dict) -> dict:
    log("cpu and syscall loops")
    engine = ctx.engine
    bb_host, bb_vps = loop_prefixes(ctx)
    sys_host, sys_vps = syscall_prefixes(ctx)
    env = guest_like_env()
    reps = profile["cpu_reps"]
    empty = ["sh", "-c", ":"]
    baseline_raw = compare_commands(bb_host + empty, bb_vps + empty, engine, BUSYBOX_VPS, reps, host_env=env)
    baseline = {"host": baseline_raw["host_s"], "vps": baseline_raw["vps_s"],
                "host_cpu": baseline_raw["host_cpu_s"], "vps_cpu": baseline_raw["vps_cpu_s"]}
    sysl = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={profile['sys_bytes']}"]
    loop = ["sh", "-c", LOOP_SCRIPT, "sh", str(profile["cpu_iters"])]
    forks = ["sh", "-c", FORK_SCRIPT, "sh", str(profile["forks"])]
    opens = ["sh", "-c", OPEN_SCRIPT, "sh", str(profile["opens"]), OPENED_FILE]
    return {
        "startup_baseline": baseline_raw,
        "shell_loop": {"iterations": profile["cpu_iters"],
                       **compare_commands(bb_host + loop, bb_vps + loop, engine, BUSYBOX_VPS, reps, baseline,
                                          host_env=env)},
        "fork_loop": {"forks": profile["forks"],
                      **compare_commands(bb_host + forks, bb_vps + forks, engine, BUSYBOX_VPS, reps, baseline,
                                         host_env=env)},
        "open_loop": {"opens": profile["opens"], "file": OPENED_FILE,
                      **compare_commands(bb_host + opens, bb_vps + opens, engine, BUSYBOX_VPS, reps, baseline,
                                         host_env=env)},
        "syscall_loop": {"syscalls": 2 * profile["sys_bytes"],
                         **compare_commands(sys_host + sysl, sys_vps + sysl, engine, BUSYBOX_VPS, reps, baseline,
                                            own_timing=True, host_env=env)},
    }


def largest_file(root: Path, under: str, minimum: int = 8 * 1024 * 1024) -> str | None:
    """The largest regular file below ROOT/UNDER (relative to ROOT), if one has MINIMUM bytes."""
    best: tuple[int, str] | None = None
    for dirpath, _dirs, files in os.walk(root / under):
        for name in files:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size >= minimum and (best is None or st.st_size > best[0]):
                best = (st.st_size, str(path.relative_to(root)))
    return best[1] if best else None


def measure_files(ctx: Setup, profile: dict) -> dict:
    """A file on the VPS's own disk (ext4 image on a loop device, overlay upper) against a file
    on the host's disk, warm and cold; and a template file (overlay lower through the idmapped
    mount) against the very same inode read on the host."""
    log("file reads")
    engine = ctx.engine
    bb_host, bb_vps = bb_prefixes(ctx)
    size = profile["file_mb"] * 1024 * 1024
    data = os.urandom(size)
    host_file = ctx.hostdir / "data.bin"
    # Written the same way on both sides (busybox dd, 64 KB writes from a pipe), so both files
    # get the same page-cache layout (folio sizes follow the writes).
    done = subprocess.run([str(ctx.busybox_bin), "dd", f"of={host_file}", "bs=65536"], input=data,
                          capture_output=True, env=HOST_ENV)
    if done.returncode != 0:
        raise RuntimeError(f"writing {host_file}: {done.stderr.decode(errors='replace').strip()}")
    guest_write(engine, BUSYBOX_VPS, "/root/data.bin", data)
    del data
    if engine.run(BUSYBOX_VPS, ["sync"]).returncode != 0:
        raise RuntimeError("sync in the VPS failed")
    freps, passes = profile["file_reps"], profile["file_passes"]

    def read_cmd(prefix: list[str], path: str, n: int) -> list[str]:
        """PREFIX (busybox taskset ... busybox) running READ_SCRIPT with that busybox's dd."""
        return [*prefix, "sh", "-c", READ_SCRIPT, "sh", prefix[-1], path, str(n)]

    def mbps(nbytes: int, seconds: dict) -> dict:
        return {k: (nbytes / 1e6 / seconds[k] if seconds[k] > 0 else None) for k in ("median", "min", "max")}

    out: dict = {}
    own = compare_commands(read_cmd(bb_host, str(host_file), passes), read_cmd(bb_vps, "/root/data.bin", passes),
                           engine, BUSYBOX_VPS, freps, own_timing=True)
    out["own_disk_warm"] = {"bytes": size, "passes": passes, **own, "host_MBps": mbps(size * passes, own["host_s"]),
                            "vps_MBps": mbps(size * passes, own["vps_s"])}

    # The template file: the largest of the Debian template (libicudata, 30 MB) read by the
    # same busybox dd in the Debian VPS (its copy in WRK_DIR) and on the host; without the
    # Debian VPS, the busybox binary itself (2 MB: start-up of dd weighs more).
    if ctx.debian_rootfs is not None and (rel := largest_file(ctx.debian_rootfs, "usr/lib")):
        name, host_path, guest_path = DEBIAN_VPS, ctx.debian_rootfs / rel, "/" + rel
        vps_prefix = [f"{WRK_DIR}/busybox", "taskset", "-c", str(SERVER_CPU), f"{WRK_DIR}/busybox"]
    else:
        name, host_path, guest_path, vps_prefix = BUSYBOX_VPS, ctx.busybox_bin, "/bin/busybox", bb_vps
    tsize = host_path.stat().st_size
    tpasses = max(1, profile["template_mb"] * 1024 * 1024 // tsize)
    lower = compare_commands(read_cmd(bb_host, str(host_path), tpasses), read_cmd(vps_prefix, guest_path, tpasses),
                             engine, name, freps, own_timing=True)
    out["template_warm"] = {"file": guest_path, "vps": name, "bytes": tsize, "passes": tpasses, **lower,
                            "host_MBps": mbps(tsize * tpasses, lower["host_s"]),
                            "vps_MBps": mbps(tsize * tpasses, lower["vps_s"])}

    # Cold: the file's pages dropped before each read; in the VPS also those of its disk image,
    # which the loop device reads through the host's page cache.
    inner = Path(f"/proc/{engine.init_pid(BUSYBOX_VPS)}/root/root/data.bin")
    image = ctx.config.server_dir(BUSYBOX_VPS) / "disk.img"
    cold_h, cold_v = [], []
    for _ in range(profile["cold_reps"]):
        evict(host_file)
        cold_h.append(dd_seconds(run_side("host", read_cmd(bb_host, str(host_file), 1), engine, BUSYBOX_VPS)[1]))
        evict(inner)
        evict(image)
        cold_v.append(dd_seconds(run_side("vps", read_cmd(bb_vps, "/root/data.bin", 1), engine, BUSYBOX_VPS)[1]))
    out["own_disk_cold"] = {"bytes": size, "host_s": summary(cold_h), "vps_s": summary(cold_v),
                            "host_MBps": mbps(size, summary(cold_h)), "vps_MBps": mbps(size, summary(cold_v)),
                            "read_ahead_kb": read_ahead(host_file, image)}
    return out


def read_ahead(host_file: Path, image: Path) -> dict:
    """read_ahead_kb of the host disk under HOST_FILE and of the loop device of IMAGE."""
    found = {}
    dev = os.stat(host_file).st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for cand in (sysfs / "queue" / "read_ahead_kb", sysfs.parent / "queue" / "read_ahead_kb"):
        if cand.exists():
            found["host_disk"] = int(cand.read_text())
            break
    loops = run(["losetup", "-j", str(image)]).stdout.split(":")
    if loops and loops[0].startswith("/dev/loop"):
        path = Path("/sys/block") / Path(loops[0]).name / "queue" / "read_ahead_kb"
        if path.exists():
            found["vps_loop"] = int(path.read_text())
    return found


def measure(engine, config, env, profile: dict, ports: dict[str, int], result: dict, host: HostSide) -> None:
    phases = result["phase_s"] = {}
    t0 = time.monotonic()
    ctx = setup(engine, config, env, profile, ports, result, host)
    phases["setup"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    result["http"] = measure_http(ctx, profile)
    result["background_busy_before_http"] = dict(BACKGROUND)
    result["conntrack_pauses_s"] = list(CONNTRACK_PAUSES)
    phases["http"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    result["cpu"] = measure_cpu(ctx, profile)
    phases["cpu"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    result["file"] = measure_files(ctx, profile)
    phases["file"] = round(time.monotonic() - t0, 1)


@dataclass
class Installation:
    """The benchmark's own engine installation and host side (overhead.py and overhead_ab.py)."""

    ov_env: dict[str, str]  # the installation's variables (below the uid limit)
    uid_note: str | None  # why the uid base was moved, if it was
    ports: dict[str, int]  # the host-side servers' ports, by template
    env: dict[str, str]  # the engine's whole environment
    config: Any
    engine: Any
    pid_file: Path
    host: HostSide


def installation(no_apache: bool) -> Installation:
    ov_env, uid_note = common.below_uid_limit(common.OVERHEAD_ENV, "OVERHEAD_ENV", UID_BASE_FALLBACK)
    # The host-side servers listen at the gateway: the engine's firewall (if it has one) must
    # let the bridge reach those ports of the host.
    ports = hostside.pick_ports(["busybox"] + ([] if no_apache else ["apache"]), FIRST_PORT)
    ov_env["VSERVER_HOST_ALLOW"] = ",".join(f"tcp/{p}" for p in ports.values())
    env = common.engine_env(ov_env)
    from vservers.engine import Engine, EngineConfig

    config = EngineConfig.from_env(env)
    pid_file = config.root / "host" / "pids.json"
    return Installation(ov_env, uid_note, ports, env, config, Engine(config), pid_file, HostSide(pid_file))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="about 2.5 minutes (default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode", help="more and longer repetitions")
    mode.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                      help="seconds per measurement, to check that it works; writes no results unless --write")
    parser.add_argument("--write", action="store_true", help="with --smoke: write the results all the same")
    parser.add_argument("--no-apache", action="store_true", help="busybox httpd only (no Debian template)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    profile = PROFILES[args.mode]
    if os.geteuid() != 0:
        parser.error("must run as root")
    if os.cpu_count() is None or os.cpu_count() < 2:
        parser.error("needs two CPUs (server and load generator on different ones)")

    lock = exclusive()
    if lock is None:
        log(f"another run of bench/overhead.py holds {TEMPLATE_STORE / '.run.lock'}; not starting")
        return 1
    inst = installation(args.no_apache)
    ov_env, uid_note, ports, env = inst.ov_env, inst.uid_note, inst.ports, inst.env
    config, engine, pid_file, host = inst.config, inst.engine, inst.pid_file, inst.host
    started = time.monotonic()
    result: dict = {
        "host": common.host_info(), "argv": sys.argv[1:] if argv is None else argv, "mode": args.mode,
        "profile": profile, "connections": CONNS, "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU,
        "page_bytes": PAGE_BYTES, "host_side_untracked": True,
        "loadavg_before": os.getloadavg(), "installation": {k: env[k] for k in sorted(ov_env)}, "ports": ports,
    }
    # The engine measured is the working tree's: say so when it is not the commit's.
    result["engine_uncommitted"] = common.uncommitted(["vservers/engine"])
    if uid_note:
        result["uid_base_note"] = uid_note
        log(uid_note)
    common.install_signal_handlers()
    ok = False
    try:
        stale_groups = hostside.stale_cgroups()
        if config.root.exists() or set(netns.names()) & {CLIENT_NS, BARE_NS} or stale_groups \
                or untracked_table_exists():
            log(f"{config.root}, our namespaces or cgroups exist from an earlier run: cleaning first")
            hostside.kill_recorded(pid_file)
            for group in stale_groups:
                hostside.remove_cgroup(group)
            for ns in (CLIENT_NS, BARE_NS):
                netns.delete(ns)
            remove_untracked()
            common.clean_or_fail(engine, log)
        measure(engine, config, env, profile, ports, result, host)
        ok = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        t0 = time.monotonic()
        try:
            problems = host.cleanup()
        except Exception as exc:  # noqa: BLE001 - the engine's cleanup must still run
            problems = [f"host-side cleanup: {exc}"]
        problems += remove_untracked()
        problems += common.cleanup_installation(engine, log)
        problems += own_leftovers(host, list(ports.values()), config.bridge)
        result["leftovers"] = problems
        result.setdefault("phase_s", {})["cleanup"] = round(time.monotonic() - t0, 1)
        if problems:
            log("LEFT BEHIND: " + "; ".join(problems))
    result["run_time_s"] = round(time.monotonic() - started, 1)
    result["loadavg_after"] = os.getloadavg()
    if not ok:
        return 1
    result["derived"] = derived(result)
    result["analysis"] = analysis(result)
    if args.mode == "smoke" and not args.write:
        with tempfile.TemporaryDirectory() as tmp:
            plots = plot(result, Path(tmp))
        md = markdown(result, plots)
        report.show(result, md)
        log("smoke run: no results written")
    else:
        plots = plot(result, common.RESULTS_DIR)
        md = markdown(result, plots)
        report.show(result, md)
        path = common.write_results("overhead", result, md)
        log(f"wrote {path}, {path.parent / 'SUMMARY.md'} and {', '.join(plots)}")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
