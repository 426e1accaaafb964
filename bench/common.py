"""Shared pieces of the benchmarks: their own engine installation, safe HTTP, statistics,
results files and a cleanup that leaves nothing behind.

The benchmarks use an installation of their own (root, bridge, address range, uid range)
so they never touch the operator's servers, and they remove all of it at the end, also on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

BENCH_ENV = {
    "VSERVER_ROOT": "/var/lib/vservers-bench",
    "VSERVER_BRIDGE": "vsbench0",
    "VSERVER_GATEWAY": "198.19.224.1/19",
    "VSERVER_UID_BASE": "700000000",
    "VSERVER_CACHE_DIR": str(REPO / "var" / "cache"),
}
NETWORK = ipaddress.ip_network("198.19.224.0/19")
# Every address a benchmark sends to (besides loopback) lies in here: the range for benchmarks
# (RFC 2544), on bridges and in namespaces the benchmarks make.
BENCH_SPACE = ipaddress.ip_network("198.18.0.0/15")
BRIDGE = BENCH_ENV["VSERVER_BRIDGE"]

# The other benchmarks' installations: each its own root, bridge, range and uids, so that
# one benchmark's cleanup never touches another's servers. All inside 198.18.0.0/15.
OVERHEAD_ENV = {
    **BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-overhead",
    "VSERVER_BRIDGE": "vsbenchov0",
    "VSERVER_GATEWAY": "198.19.208.1/21",
    "VSERVER_UID_BASE": "1500000000",
}
PANEL_ENV = {
    **BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-panel",
    "VSERVER_BRIDGE": "vsbenchpn0",
    "VSERVER_GATEWAY": "198.19.216.1/21",
    "VSERVER_UID_BASE": "1900000000",
}
# bench/panel.py --two-nodes: the second node's installation (its own root, bridge, range and
# uids, as two nodes on one machine have them).
PANEL2_ENV = {
    **BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-panel2",
    "VSERVER_BRIDGE": "vsbenchpn1",
    "VSERVER_GATEWAY": "198.18.240.1/21",
    "VSERVER_UID_BASE": "1100000000",
}
# LXC's containers (bench/lxc.py): not an engine installation, a bridge and lxcpath of their own.
LXC_BRIDGE = "vsbenchlxc0"
LXC_GATEWAY = "198.19.192.1/20"
LXC_PATH = "/var/lib/vservers-bench-lxc"

# The full-VM figures from the project's slides (one VM running an Apache web server).
SLIDES_VM_RAM_BYTES = 150 * 1000 * 1000
SLIDES_VM_DISK_BYTES = 700 * 1000 * 1000

MB = 1000 * 1000

# The environment of programs the benchmarks run on the host (no proxy variables, no locale).
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "HOME": "/root"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """ARGV (a list, never a shell), its output captured as text unless told otherwise."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(argv, **kwargs)


def must(argv: list[str], **kwargs) -> str:
    """run(ARGV); its stdout, or RuntimeError if it failed."""
    done = run(argv, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def network_of(env: dict[str, str]) -> ipaddress.IPv4Network:
    return ipaddress.ip_interface(env["VSERVER_GATEWAY"]).network


def engine_env(env: dict[str, str] = BENCH_ENV) -> dict[str, str]:
    """Put the benchmark installation ENV into os.environ (the template build reads the cache
    directory from there) and return it."""
    os.environ.update(env)
    # The engine talks to the VPSs directly; never through a proxy.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)
    return dict(env)


ENGINE_UID_LIMIT = 2**31  # the engine accepts uid bases below this only


def below_uid_limit(env: dict[str, str], name: str, fallback: int) -> tuple[dict[str, str], str | None]:
    """ENV (common.NAME) with FALLBACK as its uid base if its own is above the engine's limit,
    and a note saying so (None when ENV's own is used)."""
    env = dict(env)
    if int(env["VSERVER_UID_BASE"]) < ENGINE_UID_LIMIT:
        return env, None
    note = (f"common.{name}'s VSERVER_UID_BASE {env['VSERVER_UID_BASE']} is above the engine's limit (2^31); "
            f"used {fallback}")
    env["VSERVER_UID_BASE"] = str(fallback)
    return env, note


def uncommitted(paths: list[str]) -> list[str]:
    """Files under PATHS (of the repository) that differ from HEAD: a run measures the working
    tree, which others may be changing."""
    status = run(["git", "-C", str(REPO), "status", "--porcelain", "--", *paths]).stdout
    return sorted(line[3:] for line in status.splitlines() if line[3:])


def address(index: int, network: ipaddress.IPv4Network = NETWORK) -> str:
    """The INDEX-th guest address (with prefix), from the network's 257th address upwards
    (198.19.225.0 in the default /19)."""
    ip = network.network_address + 256 + index
    if ip not in network or ip == network.broadcast_address:
        raise ValueError(f"address index {index} is outside {network}")
    return f"{ip}/{network.prefixlen}"


# --- network safety -----------------------------------------------------------------------


class UnsafeRoute(RuntimeError):
    pass


def route_dev(ip, netns: str | None = None) -> tuple[str | None, subprocess.CompletedProcess]:
    """The device `ip route get IP` names (in network namespace NETNS if given), and the command's
    result."""
    argv = ["ip", "route", "get", str(ip)]
    out = run(["ip", "netns", "exec", netns, *argv] if netns else argv)
    words = out.stdout.split()
    return (words[words.index("dev") + 1] if "dev" in words else None), out


def check_route(addr: str, network: ipaddress.IPv4Network = NETWORK, bridge: str = BRIDGE) -> None:
    """Abort unless the host would send ADDR out of the benchmark's BRIDGE (the default route
    leaves the machine and a proxy there answers anything)."""
    ip = ipaddress.ip_address(addr.split("/")[0])
    if ip not in network or ip not in BENCH_SPACE:
        raise UnsafeRoute(f"{ip} is outside the benchmark range {network}")
    dev, out = route_dev(ip)
    if out.returncode != 0 or dev != bridge:
        raise UnsafeRoute(f"ip route get {ip} names {dev!r}, not {bridge}: {out.stdout.strip() or out.stderr.strip()}")


def http_get(ip: str, port: int = 80, path: str = "/", headers: dict | None = None,
             timeout: float = 1.0) -> tuple[int, bytes]:
    """GET PATH from IP:PORT with http.client (no proxies; the caller has checked the route or
    IP is loopback): (status, body). OSError if it failed."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_status(ip: str, timeout: float = 1.0) -> int | None:
    """GET / from IP:80 with http.client (no proxies); the status, or None if it failed."""
    try:
        return http_get(ip, timeout=timeout)[0]
    except OSError:
        return None


def wait_http(ip: str, deadline: float, interval: float = 0.002) -> float | None:
    """Poll IP every INTERVAL until it answers 200; the monotonic time it did, or None."""
    while True:
        if http_status(ip, timeout=0.5) == 200:
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def guest_write(engine, name: str, path: str, data: bytes) -> None:
    """Write DATA to PATH inside the server NAME (its own dd, through engine.run)."""
    done = engine.run(name, ["dd", f"of={path}", "bs=65536"], input=data, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"writing {path} in {name}: {done.stderr.strip()}")


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile Q (0..100)."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": percentile(values, 50),
        "p95": percentile(values, 95),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "n": len(values),
    }


def meminfo(field: str = "MemAvailable") -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def meminfo_sampled(field: str = "MemAvailable", samples: int = 5, interval: float = 0.2) -> int:
    """Median of a few readings, to damp the host's own noise."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        values.append(meminfo(field))
    return int(percentile(values, 50))


def pss_of(pids: Iterable[int]) -> int:
    """Summed proportional set size of PIDS (processes gone meanwhile count 0)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return total


def host_info() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_total_bytes": meminfo("MemTotal"),
        "python": platform.python_version(),
        "cgroup": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1",
        "cgroup_migration_ms": cgroup_migration_ms(),
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def cgroup_migration_ms() -> float | None:
    """What moving a process into a cgroup takes after a pause (`vserver doctor`'s probe, in the
    benchmarks' own installation): about 0.1 ms with the cgroup option favordynmods, an RCU grace
    period (several ms) without. Every start and every exec pays it once, so start figures of
    hosts that differ here differ by it. None if it cannot be measured (not root)."""
    if os.geteuid() != 0:
        return None
    from vservers.engine import doctor
    from vservers.engine.config import EngineConfig
    from vservers.engine.errors import EngineError

    try:
        return round(doctor.migration_latency_ms(EngineConfig.from_env({**os.environ, **BENCH_ENV})), 2)
    except (OSError, EngineError):
        return None


def host_line(info: dict) -> str:
    """The first words of a result's section: when, which kernel, CPUs and cgroups, and what a
    cgroup migration took there."""
    migration = info.get("cgroup_migration_ms")
    moved = f" (a migration after a pause: {migration:.2f} ms)" if migration is not None else ""
    return f"{info['date']}, kernel {info['kernel']}, {info['cpus']} CPUs, cgroup {info['cgroup']}{moved}"


# --- results ------------------------------------------------------------------------------


def md_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict, markdown: str) -> Path:
    """Write results/NAME.json and replace (or append) NAME's section in results/SUMMARY.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    summary_path = RESULTS_DIR / "SUMMARY.md"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    section = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = summary_path.read_text() if summary_path.exists() else "# Benchmark results\n\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    summary_path.write_text(text)
    return path


# --- cleanup ------------------------------------------------------------------------------


class Interrupted(BaseException):
    """Raised from the SIGINT/SIGTERM handler so that `finally` blocks run."""


def install_signal_handlers() -> None:
    def handler(signum, _frame):
        # Cleanup must not be interrupted a second time.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cleanup_installation(engine, log: Callable[[str], None] = print) -> list[str]:
    """Delete every server of the benchmark root through the engine, remove its bridge and
    its root directory; return what is still left (empty when clean)."""
    from vservers.engine import network

    config = engine.config
    problems: list[str] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if config.servers_dir.is_dir():
            names = engine.names()
            # Also half-created ones (a directory without config.json).
            names = sorted(set(names) | {p.name for p in config.servers_dir.iterdir() if p.is_dir()})
            if names:
                results = engine.stop_many([n for n in names if n in engine.names()])
                for name in names:
                    err = results.get(name)
                    if err is not None:
                        log(f"cleanup: stop {name}: {err}")
                    try:
                        engine.delete(name)
                    except Exception as exc:  # noqa: BLE001 - keep cleaning the rest
                        problems.append(f"delete {name}: {exc}")
        try:
            network.remove_bridge(config.bridge)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"remove bridge {config.bridge}: {exc}")
        if str(config.root).startswith(BENCH_ENV["VSERVER_ROOT"]):
            shutil.rmtree(config.root, ignore_errors=True)
        problems += leftovers(config)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return problems


def clean_earlier_run(engine, log: Callable[[str], None] = print) -> None:
    """If the installation's root exists (a crashed earlier run), clean it first."""
    if engine.config.root.exists():
        log(f"{engine.config.root} exists from an earlier run: cleaning it first")
        clean_or_fail(engine, log)


def clean_or_fail(engine, log: Callable[[str], None] = print) -> None:
    """cleanup_installation of an earlier run's leftovers; RuntimeError if something stays.
    Then the signal handlers again (cleanup_installation restored the defaults)."""
    left = cleanup_installation(engine, log)
    if left:
        raise RuntimeError(f"could not clean the earlier run: {left}")
    install_signal_handlers()


def mounts_below(path: Path | str) -> list[str]:
    """Mount points at PATH or below it (PATH as given: resolve it first if it may be a link)."""
    root = str(path)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == root or p.startswith(root + "/")]


def leftovers(config) -> list[str]:
    """What of the benchmark installation still exists on the host."""
    root = str(config.root)
    found = [f"mount {point}" for point in mounts_below(root)]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop {line}" for line in loops.splitlines() if root + "/" in line]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            ifname = parts[1].strip().split("@")[0]
            if ifname == config.bridge or ifname.startswith(config.veth_prefix):
                found.append(f"link {ifname}")
    if config.root.exists():
        found.append(f"directory {config.root}")
    for hierarchy in Path("/sys/fs/cgroup").glob("*"):
        for cand in (hierarchy / config.cgroup_parent, hierarchy):
            if cand.name == config.cgroup_parent and cand.is_dir():
                found.append(f"cgroup {cand}")
    if (Path("/sys/fs/cgroup") / config.cgroup_parent).is_dir():
        found.append(f"cgroup {Path('/sys/fs/cgroup') / config.cgroup_parent}")
    return sorted(set(found))
