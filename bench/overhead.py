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
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import ipaddress
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import md_table, summary  # noqa: E402

# The Debian template takes about a minute to debootstrap. It is kept between runs in a store
# of its own (an engine installation root that only ever holds templates, never servers) and
# hard-linked into the benchmark's root for each run: a template is read-only (the overlay's
# lower layer), so nothing is ever written through the links.
TEMPLATE_STORE = Path("/var/cache/vservers-bench-overhead")

# The engine accepts uid bases below 2^31 only; common.OVERHEAD_ENV's 3000000000 is above.
# Then this one is used: clear of the other installations (tests 5M-600M+, bench 700M+).
UID_BASE_FALLBACK = 1_800_000_000

CLIENT_NS = "vsbenchov-client"
CLIENT_VETH = "vsbenchovc0"  # host end on the bridge; "eth0" inside the namespace
BARE_NS = "vsbenchov-srv"
BARE_VETH = "vsbenchovs0"
SERVER_CPU = 0
CLIENT_CPU = 1
FIRST_PORT = 18480  # host-side servers listen here (and up), never on a wildcard address

BUSYBOX_VPS = "ov-busybox"
DEBIAN_VPS = "ov-debian"
PAGE_NAME = "bench.html"
PAGE_BYTES = 4096
WRK_DIR = "/opt/wrk"  # inside a VPS: wrk, its libraries, its loader and a busybox for taskset

# wrk's connections per server: busybox httpd listens with a backlog of 9, so more than that
# many connections lose SYNs under load and wait for a retransmission (1 s), which is not the
# server's speed; Apache's backlog is 511.
CONNS = {"busybox": 8, "apache": 32}

PROFILES = {
    "smoke": dict(http_reps=1, http_s=1, warmup_s=1, lo_reps=1, lo_s=1,
                  cpu_reps=2, cpu_iters=50_000, sys_bytes=100_000, forks=300,
                  file_reps=2, file_mb=8, file_passes=4, template_mb=64, cold_reps=1),
    "quick": dict(http_reps=5, http_s=2, warmup_s=1, lo_reps=3, lo_s=2,
                  cpu_reps=7, cpu_iters=250_000, sys_bytes=500_000, forks=2000,
                  file_reps=5, file_mb=64, file_passes=8, template_mb=512, cold_reps=3),
    "full": dict(http_reps=10, http_s=10, warmup_s=2, lo_reps=5, lo_s=10,
                 cpu_reps=15, cpu_iters=1_000_000, sys_bytes=2_000_000, forks=5000,
                 file_reps=10, file_mb=128, file_passes=16, template_mb=2048, cold_reps=5),
}

LOOP_SCRIPT = 'i=0; while [ "$i" -lt "$1" ]; do i=$((i+1)); done'
# A subshell is a fork of the shell that exits at once: process creation and teardown.
FORK_SCRIPT = 'i=0; while [ "$i" -lt "$1" ]; do (:); i=$((i+1)); done'
# "$1" is the busybox binary: a bare `dd` would find the host's (or Debian's) GNU dd on $PATH.
READ_SCRIPT = 'i=0; while [ "$i" -lt "$3" ]; do "$1" dd if="$2" of=/dev/null bs=1048576 2>&1; i=$((i+1)); done'
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "HOME": "/root"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(argv, **kwargs)


def must(argv: list[str], **kwargs) -> str:
    done = run(argv, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


# --- the Debian template, kept between runs ------------------------------------------------


def exclusive():
    """Hold the lock that keeps two runs of this benchmark apart (they share root, bridge and
    namespace names); None if another run holds it."""
    TEMPLATE_STORE.mkdir(parents=True, exist_ok=True)
    fh = open(TEMPLATE_STORE / ".run.lock", "w")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def debian_recipe_key() -> str:
    """A hash of the code that builds the Debian template: a change there rebuilds it."""
    from vservers.engine import templates

    base = Path(templates.__file__).resolve().parent
    digest = hashlib.sha256()
    for name in ("debian.py", "guestfiles.py"):
        digest.update((base / name).read_bytes())
    return digest.hexdigest()[:16]


def store_config(env: dict[str, str]):
    from vservers.engine import EngineConfig

    return EngineConfig.from_env({**env, "VSERVER_ROOT": str(TEMPLATE_STORE)})


def mounted_below(path: Path) -> bool:
    base = str(path.resolve())
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return any(p == base or p.startswith(base + "/") for p in points)


def ensure_debian_in_store(env: dict[str, str]) -> tuple[str, float]:
    """The Debian template's version in the store, built there if missing or stale, and the
    build time (0 when reused)."""
    from vservers.engine import NotFound, templates

    store = store_config(env)
    TEMPLATE_STORE.mkdir(parents=True, exist_ok=True)
    key = debian_recipe_key()
    key_file = TEMPLATE_STORE / "debian.key"
    with open(TEMPLATE_STORE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            info = templates.get(store, "debian")
            if key_file.is_file() and key_file.read_text().strip() == key:
                return info.version, 0.0
        except NotFound:
            pass
        log(f"building the debian template into {TEMPLATE_STORE} (once; later runs reuse it)")
        t0 = time.monotonic()
        info = templates.build(store, "debian")
        built_s = time.monotonic() - t0
        key_file.write_text(key + "\n")
        base = templates.template_dir(store, "debian")
        for old in base.iterdir():  # older versions are of no use any more
            if old.is_dir() and not old.is_symlink() and old.name != info.version and not mounted_below(old):
                shutil.rmtree(old, ignore_errors=True)
        return info.version, built_s


def link_debian(config, env: dict[str, str], version: str) -> None:
    """Make the store's Debian VERSION the current debian template of the bench root CONFIG
    (the layout of vservers.engine.templates: NAME/VERSION/{rootfs,template.json}, current)."""
    from vservers.engine import templates

    src = templates.template_dir(store_config(env), "debian") / version
    base = templates.template_dir(config, "debian")
    base.mkdir(parents=True, exist_ok=True)
    dst = base / version
    if not dst.exists():
        if run(["cp", "-a", "--link", str(src), str(dst)]).returncode != 0:
            shutil.rmtree(dst, ignore_errors=True)
            must(["cp", "-a", str(src), str(dst)])
    link = base / "current"
    if link.is_symlink():
        link.unlink()
    os.symlink(version, link)
    templates.get(config, "debian")


def copy_rootfs(src: Path, dst: Path) -> None:
    """A tree the host-side Apache may write to: /usr (binaries, modules: read only) hard-linked
    from the template, everything else copied."""
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        link = entry.name == "usr" and entry.is_dir() and not entry.is_symlink()
        argv = ["cp", "-a", "--link", str(entry), str(dst)] if link else ["cp", "-a", str(entry), str(dst)]
        must(argv)
    os.chmod(dst, 0o755)


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file of a copied tree, refusing one that is a hard link into a template."""
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and path.stat().st_nlink != 1:
        raise RuntimeError(f"{path} is hard-linked; not writing through it")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as fh:
        fh.write(data)


# --- host-side processes and namespaces ------------------------------------------------------


def proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class HostSide:
    """What this run started or made on the host outside the engine; all removed by cleanup."""

    pid_file: Path
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    cgroups: dict[str, Path] = field(default_factory=dict)  # server label -> its accounting cgroup
    started: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # also after stop
    netns: list[str] = field(default_factory=list)

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
        self._save()
        return proc

    def _save(self) -> None:
        data = {label: [p.pid, proc_start(p.pid)] for label, p in self.servers.items() if p.poll() is None}
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps(data))

    def stop(self, label: str) -> None:
        proc = self.servers.pop(label, None)
        if proc is not None:
            stop_group(proc.pid, proc)
        self._save()

    def make_netns(self, name: str, veth: str, bridge: str, addr: str) -> None:
        """A network namespace with one veth on BRIDGE (address ADDR/prefix) and no route out
        of the bridge's network."""
        if run(["ip", "netns", "add", name]).returncode != 0:
            raise RuntimeError(f"cannot add network namespace {name}")
        self.netns.append(name)
        must(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
        must(["ip", "link", "set", veth, "master", bridge, "up"])
        must(["ip", "netns", "exec", name, "ip", "addr", "add", addr, "dev", "eth0"])
        must(["ip", "netns", "exec", name, "ip", "link", "set", "eth0", "up"])
        must(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])

    def cleanup(self) -> list[str]:
        problems = []
        for label in list(self.servers):
            try:
                self.stop(label)
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                problems.append(f"stop host server {label}: {exc}")
        for name in self.netns:
            problems += delete_netns(name)
        self.netns.clear()
        for label, group in list(self.cgroups.items()):
            problems += remove_cgroup(group)
            del self.cgroups[label]
        return problems


# Runs as the first program of every host-side server: joins the cgroup, then execs the server.
ENTER_CGROUP = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execvp(sys.argv[2], sys.argv[2:])"
CGROUP_PREFIX = "vsbenchov-"


def accounting_root() -> Path:
    v1 = Path("/sys/fs/cgroup/cpuacct")
    return v1 if (v1 / "cpuacct.usage").exists() else Path("/sys/fs/cgroup")


def accounting_cgroup(label: str) -> Path:
    if not re.fullmatch(r"[a-z0-9-]{1,40}", label):
        raise ValueError(f"bad label {label!r}")
    return accounting_root() / f"{CGROUP_PREFIX}{label}"


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


def stop_group(pid: int, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process PID (a session leader we started) and, once it is gone or after
    5 s, SIGKILL what is left of its process group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and proc_start(pid) is None:
            break
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def delete_netns(name: str) -> list[str]:
    """Kill what runs in our namespace NAME, then delete it (its veth pair goes with it)."""
    problems = []
    if name not in netns_list():
        return problems
    pids = run(["ip", "netns", "pids", name]).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    if run(["ip", "netns", "del", name]).returncode != 0:
        problems.append(f"netns {name} could not be deleted")
    return problems


def netns_list() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name]).returncode == 0


def kill_recorded(pid_file: Path) -> None:
    """Stop host-side servers a crashed earlier run left (recorded pid and start time)."""
    try:
        data = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return
    for _label, (pid, start) in data.items():
        if start is not None and proc_start(pid) == start:
            stop_group(pid)


def own_leftovers(host: HostSide, ports: list[int], bridge: str) -> list[str]:
    found = [f"netns {n}" for n in (CLIENT_NS, BARE_NS) if n in netns_list()]
    found += [f"link {v}" for v in (CLIENT_VETH, BARE_VETH) if link_exists(v)]
    found += [f"process {label} (pid {pid})" for label, (pid, start) in host.started.items()
              if start is not None and proc_start(pid) == start]
    listening = run(["ss", "-Hltn"]).stdout
    for port in ports:
        if re.search(rf":{port}\s", listening):
            found.append(f"listener on port {port}")
    found += [f"nftables {t}" for t in firewall_tables(bridge)]
    found += [f"cgroup {g}" for g in sorted(accounting_root().glob(CGROUP_PREFIX + "*"))]
    return found


def port_free(port: int) -> bool:
    """Nothing on the host uses PORT on any address (not even a connection in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once, never listens
            return True
        except OSError:
            return False


def pick_ports(labels: list[str]) -> dict[str, int]:
    """A free port for each host-side server (the same port at the gateway, on loopback and in
    the bare namespace)."""
    ports: dict[str, int] = {}
    for port in range(FIRST_PORT, FIRST_PORT + 200):
        if len(ports) == len(labels):
            break
        if port_free(port):
            ports[labels[len(ports)]] = port
    if len(ports) != len(labels):
        raise RuntimeError("no free ports for the host-side servers")
    return ports


def firewall_tables(bridge: str) -> list[str]:
    """The engine's nftables tables for BRIDGE, if the engine makes any."""
    out = run(["nft", "list", "tables"]).stdout if shutil.which("nft", path=HOST_ENV["PATH"]) else ""
    return [line.strip() for line in out.splitlines() if line.strip().endswith(f" vservers-{bridge}")]


def pin(pids: list[int], cpu: int) -> None:
    for pid in pids:
        run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)])


# --- network safety -------------------------------------------------------------------------


def check_client_route(addr: str, network: ipaddress.IPv4Network) -> None:
    """Abort unless the client namespace sends ADDR out of its veth on our bridge."""
    ip = ipaddress.ip_address(addr)
    if ip not in network:
        raise common.UnsafeRoute(f"{ip} is outside the benchmark range {network}")
    out = run(["ip", "netns", "exec", CLIENT_NS, "ip", "route", "get", str(ip)])
    words = out.stdout.split()
    dev = words[words.index("dev") + 1] if "dev" in words else None
    if out.returncode != 0 or dev != "eth0":
        raise common.UnsafeRoute(f"in {CLIENT_NS}, ip route get {ip} names {dev!r}: {out.stdout.strip()}")
    if run(["ip", "netns", "exec", CLIENT_NS, "ip", "route", "show", "default"]).stdout.strip():
        raise common.UnsafeRoute(f"{CLIENT_NS} has a default route")


def fetch(ip: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """GET PATH from IP:PORT with http.client (no proxies); (status, body) or None."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return None
    finally:
        conn.close()


def wait_page(ip: str, port: int, body: bytes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = fetch(ip, port, "/" + PAGE_NAME)
        if got is not None and got[0] == 200 and got[1] == body:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"http://{ip}:{port}/{PAGE_NAME} did not serve the page: {got and got[0]}")
        time.sleep(0.05)


# --- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    result: dict = {"rps": float(rps.group(1))}
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if done:
        result["requests"] = int(done.group(1))
        size = float(done.group(4)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}.get(done.group(5), 1)
        result["bytes_per_request"] = round(size / max(1, result["requests"]))
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        if m:
            result[f"lat_p{q}_ms"] = _ms(m.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def wrk_args(url: str, seconds: int, conns: int) -> list[str]:
    return ["-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]


def cpu_times() -> dict[int, list[int]]:
    """Per CPU: user, nice, system, idle, iowait, irq, softirq, steal (USER_HZ ticks)."""
    found = {}
    with open("/proc/stat") as fh:
        for line in fh:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                found[int(m.group(1))] = [int(x) for x in m.group(2).split()[:8]]
    return found


def cpu_per_request(before: dict, after: dict, requests: int) -> dict:
    """Microseconds of CPU per request on the server's and the client's CPU, by kind."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for role, cpu in (("server_cpu", SERVER_CPU), ("client_cpu", CLIENT_CPU)):
        if cpu not in before or cpu not in after:
            continue
        d = [a - b for a, b in zip(after[cpu], before[cpu], strict=True)]
        us = 1e6 / hz / max(1, requests)
        out[role] = {
            "user_us": round((d[0] + d[1]) * us, 3),
            "system_us": round(d[2] * us, 3),
            "softirq_us": round((d[5] + d[6]) * us, 3),
            "idle_share": round((d[3] + d[4]) / max(1, sum(d)), 4),
            "steal_share": round(d[7] / max(1, sum(d)), 4),
        }
    return out


def background_busy(seconds: float = 1.0) -> float:
    """The share of both CPUs busy over SECONDS while this benchmark runs nothing: other
    people's work, which shows up as noise in the figures."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    busy = total = 0
    for cpu in after:
        d = [a - b for a, b in zip(after[cpu], before.get(cpu, after[cpu]), strict=True)]
        total += sum(d)
        busy += sum(d) - d[3] - d[4]
    return round(busy / total, 4) if total else 0.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_of(fields: list[str]) -> float:
    """utime + stime + cutime + cstime (reaped children, e.g. busybox httpd's per-request
    forks and Apache's exited workers) in seconds."""
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def vps_cpu(engine, name: str) -> float:
    """CPU seconds the VPS's cgroup has used (every process in it, ever)."""
    return engine.status(name, with_addresses=False).usage.cpu_seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CONNTRACK = Path("/proc/sys/net/netfilter")
CONNTRACK_PAUSES: list[float] = []


def conntrack_guard(limit: float = 0.5, max_wait: float = 300.0) -> None:
    """Wait while the host's connection-tracking table is more than LIMIT full.

    The engine's firewall turns conntrack on for the host's network namespace, so every
    connection through the bridge gets an entry that stays 120 s after it closes. busybox httpd
    takes a new connection per request, some 2,500 a second: left alone, a long run would fill
    the table, and a full table drops new connections, everyone's."""
    try:
        maximum = int((CONNTRACK / "nf_conntrack_max").read_text())
    except (OSError, ValueError):
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        if int((CONNTRACK / "nf_conntrack_count").read_text()) <= limit * maximum:
            break
        time.sleep(2)
    if time.monotonic() - t0 > 0.5:
        CONNTRACK_PAUSES.append(round(time.monotonic() - t0, 1))


def timed_wrk(argv: list[str], runner=None, server_cpu=None, timeout: float = 120) -> dict:
    """Run wrk (on the host, or through RUNNER); its figures, the CPU time per request of each
    CPU (/proc/stat) and of the server's processes (SERVER_CPU: cumulative seconds) and wrk's."""
    conntrack_guard()
    before, client0 = cpu_times(), children_cpu()
    server0 = server_cpu() if server_cpu else None
    if runner is None:
        done = run(argv, timeout=timeout)
    else:
        done = runner(argv, timeout)
    server1 = server_cpu() if server_cpu else None
    after, client1 = cpu_times(), children_cpu()
    out, code, err = done.stdout, done.returncode, done.stderr
    if code != 0:
        raise RuntimeError(f"wrk failed ({code}): {err.strip() or out.strip()}")
    result = parse_wrk(out)
    n = max(1, result.get("requests", 0))
    result["cpu_per_request"] = cpu_per_request(before, after, n)
    result["client_process_us"] = round((client1 - client0) * 1e6 / n, 2)
    if server0 is not None:
        # wrk run inside the VPS (RUNNER) is in the VPS's cgroup too: its own time comes off.
        inside = (client1 - client0) if runner is not None else 0.0
        result["server_process_us"] = round((server1 - server0 - inside) * 1e6 / n, 2)
    result["loadavg1_after"] = os.getloadavg()[0]
    return result


# --- measurements ---------------------------------------------------------------------------


@dataclass
class Target:
    """One place a server is reached from the client: its label and how to run wrk there."""

    label: str
    argv: list[str]
    runner: object = None  # None: run on the host; else a callable (argv, timeout) -> Completed
    server_cpu: object = None  # a callable: the server processes' CPU seconds so far


BACKGROUND: dict[str, float] = {}  # what -> background_busy() just before its rounds


def compare(targets: list[Target], reps: int, warmup_s: int, what: str) -> dict:
    """Warm each target up, then REPS rounds that run every target once, the order rotated
    each round so drift spreads over all of them."""
    for t in targets:
        timed_wrk(warmup_argv(t.argv, warmup_s), t.runner, t.server_cpu)
    runs: dict[str, list[dict]] = {t.label: [] for t in targets}
    quiet = background_busy()
    for i in range(reps):
        order = targets[i % len(targets):] + targets[: i % len(targets)]
        for t in order:
            runs[t.label].append(timed_wrk(t.argv, t.runner, t.server_cpu))
        log(f"  {what} round {i + 1}/{reps}: " + ", ".join(
            f"{t.label} {runs[t.label][-1]['rps']:.0f}/s" for t in targets))
    BACKGROUND[what] = quiet
    return {label: side_summary(samples) for label, samples in runs.items()}


def warmup_argv(argv: list[str], seconds: int) -> list[str]:
    return [f"-d{seconds}s" if a.startswith("-d") and a.endswith("s") else a for a in argv]


def side_summary(samples: list[dict]) -> dict:
    def stats(key: str) -> dict:
        return summary([s[key] for s in samples if key in s])

    cpu = {}
    for role in ("server_cpu", "client_cpu"):
        rows = [s["cpu_per_request"][role] for s in samples if role in s["cpu_per_request"]]
        if rows:
            cpu[role] = {k: common.percentile([r[k] for r in rows], 50) for k in rows[0]}
    return {
        "rps": stats("rps"),
        "lat_p50_ms": stats("lat_p50_ms"),
        "lat_p99_ms": stats("lat_p99_ms"),
        "cpu_per_request_median": cpu,
        "server_process_us": stats("server_process_us"),
        "client_process_us": stats("client_process_us"),
        "socket_errors": sum(s["socket_errors"] for s in samples),
        "non_2xx": sum(s["non_2xx"] for s in samples),
        "bytes_per_request": samples[0].get("bytes_per_request") if samples else None,
        "samples": samples,
    }


def ratio(vps: float, host: float) -> float | None:
    return round(vps / host, 4) if host else None


def paired_ratio(vps: dict, host: dict, key: str = "rps") -> float | None:
    """Median of the per-round ratios (round i of the VPS against round i of the host)."""
    pairs = [v[key] / h[key] for v, h in zip(vps["samples"], host["samples"], strict=False) if h.get(key)]
    return round(common.percentile(pairs, 50), 4) if pairs else None


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


def guest_write(engine, name: str, path: str, data: bytes) -> None:
    done = engine.run(name, ["dd", f"of={path}", "bs=65536"], input=data, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"writing {path} in {name}: {done.stderr.strip()}")


def wrk_bundle() -> dict[str, Path]:
    """wrk and what it loads (from ldd), by the file name it is looked up as."""
    wrk = shutil.which("wrk", path=HOST_ENV["PATH"])
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    files = {"wrk": Path(wrk)}
    for line in must(["ldd", wrk]).splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line) or re.match(r"\s*(/\S+ld-linux\S*)", line)
        if m:
            name = os.path.basename(m.group(1))
            files[name] = Path(os.path.realpath(m.group(m.lastindex)))
    if not any(n.startswith("ld-linux") for n in files):
        raise RuntimeError("cannot find wrk's dynamic loader in ldd's output")
    return files


def install_wrk(engine, name: str, files: dict[str, Path], busybox: Path) -> list[str]:
    """Copy wrk into the VPS; the argv prefix that runs it there pinned to the client CPU."""
    done = engine.run(name, ["mkdir", "-p", WRK_DIR])
    if done.returncode != 0:
        raise RuntimeError(f"mkdir {WRK_DIR} in {name}: {done.stderr.strip()}")
    for fname, path in {**files, "busybox": busybox}.items():
        guest_write(engine, name, f"{WRK_DIR}/{fname}", path.read_bytes())
    done = engine.run(name, ["chmod", "755", *[f"{WRK_DIR}/{f}" for f in [*files, "busybox"]]])
    if done.returncode != 0:
        raise RuntimeError(f"chmod in {name}: {done.stderr.strip()}")
    loader = next(n for n in files if n.startswith("ld-linux"))
    return [f"{WRK_DIR}/busybox", "taskset", "-c", str(CLIENT_CPU),
            f"{WRK_DIR}/{loader}", "--library-path", WRK_DIR, f"{WRK_DIR}/wrk"]


def vps_runner(engine, name: str):
    def runner(argv: list[str], timeout: float):
        return engine.run(name, argv, timeout=timeout)

    return runner


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
            copy_rootfs(debian_rootfs, tree)
            write_private(tree / "etc/apache2/ports.conf", "".join(f"Listen {a}:{ap_port}\n" for a in listen))
            site = tree / "etc/apache2/sites-available/000-default.conf"
            text = site.read_text()
            if "<VirtualHost *:80>" not in text:
                raise RuntimeError(f"unexpected {site}")
            write_private(site, text.replace("<VirtualHost *:80>", f"<VirtualHost *:{ap_port}>"))
            write_private(tree / "var/www/html" / PAGE_NAME, page)
            # The template's own runit service script, as in the VPS.
            argv = pinned + ["chroot", str(tree), "/etc/service/apache2/run"]
            host.start(label, (["ip", "netns", "exec", ns] if ns else []) + argv, hostdir / f"{label}.log")
        result["setup"]["apache_host_copies_s"] = round(time.monotonic() - t0, 3)

    # Every server serves the same bytes; the client reaches only our bridge.
    for ip in [*ctx.vps_ip.values(), bare_ip]:
        common.check_route(ip, network, bridge)
    for port in ctx.ports.values():
        for ip in (gw, "127.0.0.1", bare_ip):
            wait_page(ip, port, page)
    for ip in ctx.vps_ip.values():
        wait_page(ip, 80, page)
    for ip in [gw, bare_ip, *ctx.vps_ip.values()]:
        check_client_route(ip, network)
    ctx.host_cgroups = dict(host.cgroups)
    bundle = wrk_bundle()
    for name in ctx.vps_ip:
        ctx.wrk_inside[name] = install_wrk(engine, name, bundle, busybox_bin)
    ctx.pin_vps_servers()  # again: Apache may have started more processes since
    return ctx


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
    from vservers.engine.launch import GUEST_PATH

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
    return {
        "startup_baseline": baseline_raw,
        "shell_loop": {"iterations": profile["cpu_iters"],
                       **compare_commands(bb_host + loop, bb_vps + loop, engine, BUSYBOX_VPS, reps, baseline,
                                          host_env=env)},
        "fork_loop": {"forks": profile["forks"],
                      **compare_commands(bb_host + forks, bb_vps + forks, engine, BUSYBOX_VPS, reps, baseline,
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


# --- report ---------------------------------------------------------------------------------

HTTP_SIDES = [("host", "host"), ("bare_netns", "bare netns"), ("vps", "VPS")]


def fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"


def derived(result: dict) -> dict:
    """The ratios the report and the plots show."""
    out: dict = {"http": {}, "cpu": {}, "file": {}}
    for label, paths in result.get("http", {}).items():
        for path, sides in paths.items():
            host = sides["host"]
            for side, s in sides.items():
                if side == "host":
                    continue
                out["http"][f"{label}/{path}/{side}"] = {
                    "ratio_of_medians": ratio(s["rps"]["median"], host["rps"]["median"]),
                    "paired_ratio": paired_ratio(s, host),
                    # Other work only ever slows a run down: the best runs are the least disturbed.
                    "ratio_of_p95": ratio(s["rps"]["p95"], host["rps"]["p95"]),
                }
    for key, m in result.get("cpu", {}).items():
        if key != "startup_baseline":
            out["cpu"][key] = {"host_over_vps_cpu_time": ratio(m["host_cpu_s"]["median"], m["vps_cpu_s"]["median"]),
                               "host_over_vps_time": ratio(m["host_s"]["median"], m["vps_s"]["median"])}
    for key, m in result.get("file", {}).items():
        out["file"][key] = {"vps_over_host_MBps": ratio(m["vps_MBps"]["median"], m["host_MBps"]["median"])}
    return out


def rps_cell(side: dict) -> str:
    return f"{fmt(side['rps']['median'])} ({fmt(side['rps']['p95'])})"


def latency_cell(side: dict) -> str:
    return f"{fmt(side['lat_p50_ms']['median'], 2)} / {fmt(side['lat_p99_ms']['median'], 2)}"


def ratio_cell(r: dict) -> str:
    return f"**{pct(r['ratio_of_medians'])}** (paired {pct(r['paired_ratio'])}, p95 {pct(r['ratio_of_p95'])})"


def markdown(result: dict, plots: list[str]) -> str:
    info, prof, d = result["host"], result["profile"], result["derived"]
    out = [
        "## Overhead: VPS against the bare host",
        "",
        f"{info['date']}, kernel {info['kernel']}, {info['cpus']} CPUs, cgroup {info['cgroup']}, "
        f"commit {info['git_commit']}; `bench/overhead.py {' '.join(result['argv'])}` "
        f"({result['mode']}, {result['run_time_s']:.0f} s). Load average before/after: "
        f"{result['loadavg_before'][0]:.2f} / {result['loadavg_after'][0]:.2f}."
        + (f" Engine with uncommitted changes in: {', '.join(result['engine_uncommitted'])}."
           if result.get("engine_uncommitted") else "")
        + (" The engine's firewall was on (nftables tables for the bridge)."
           if result.get("setup", {}).get("firewall_tables") else ""),
        "",
        f"Servers pinned to CPU {SERVER_CPU}, load generator to CPU {CLIENT_CPU} (`taskset`). Same binary, same "
        f"files on both sides: the busybox template's static busybox (`httpd`, no keep-alive, one fork per "
        f"request) and the Debian template's Apache 2.4 (mpm_event, keep-alive) with its own config (the host "
        f"side only listens on another port). Page: {PAGE_BYTES} bytes. wrk -t1, -c{CONNS['busybox']} for "
        f"busybox (its listen backlog is 9), -c{CONNS['apache']} for Apache: "
        f"{prof['http_reps']} rounds × {prof['http_s']} s per side through the bridge, {prof['lo_reps']} × "
        f"{prof['lo_s']} s over loopback, sides alternated (order rotated each round) after a warm-up.",
    ]
    http = result.get("http", {})
    if http:
        rows = []
        for label, paths in http.items():
            sides = paths["bridge"]
            key = f"{label}/bridge/vps"
            rows.append([f"**{label}** req/s median (p95)"]
                        + [rps_cell(sides[s]) for s, _ in HTTP_SIDES] + [ratio_cell(d["http"][key])])
            rows.append([f"{label} latency p50 / p99 ms"] + [latency_cell(sides[s]) for s, _ in HTTP_SIDES] + [""])
        busy = result.get("background_busy_before_http", {})
        if busy:
            noisy = max(busy.values()) > 0.1
            out += ["", ("**Noisy run:** " if noisy else "") + "CPU busy with other work in the second before each "
                    "series (both CPUs): " + ", ".join(f"{k} {pct(v)}" for k, v in busy.items()) + "."]
        out += ["", "### HTTP through the bridge (client in its own network namespace)", "",
                "host: client ns → bridge → host stack (bridge address); bare netns: the host's server "
                "process in a plain network namespace on the bridge (one veth more, nothing else); VPS: "
                "client ns → bridge → veth → VPS.", "",
                md_table(["", "host", "bare netns", "VPS", "VPS / host: medians (paired rounds, p95s)"], rows)]
        rows = []
        for label, paths in http.items():
            if "loopback" not in paths:
                continue
            lo = paths["loopback"]
            key = f"{label}/loopback/vps"
            rows.append([f"**{label}** req/s median (p95)", rps_cell(lo["host"]), rps_cell(lo["vps"]),
                         ratio_cell(d["http"][key])])
            rows.append([f"{label} latency p50 / p99 ms", latency_cell(lo["host"]), latency_cell(lo["vps"]), ""])
        if rows:
            out += ["", "### HTTP over loopback (wrk beside the server: on the host / inside the VPS)", "",
                    md_table(["", "host", "VPS", "VPS / host: medians (paired rounds, p95s)"], rows)]
        rows = []
        for label, paths in http.items():
            for path, sides in paths.items():
                for side, s in sides.items():
                    c = s["cpu_per_request_median"]
                    cells = [fmt(s["server_process_us"]["median"], 1), fmt(s["client_process_us"]["median"], 1)]
                    for role in ("server_cpu", "client_cpu"):
                        r = c.get(role, {})
                        cells.append(f"{fmt(r.get('user_us'), 1)} / {fmt(r.get('system_us'), 1)} / "
                                     f"{fmt(r.get('softirq_us'), 1)} (idle {pct(r.get('idle_share'))})")
                    rows.append([f"{label} {path}", dict(HTTP_SIDES).get(side, side), *cells])
        out += ["", "### Where the CPU goes: µs of CPU per request", "",
                "Server processes: the CPU time of the cgroup they run in (the host-side server's own "
                "accounting cgroup; the VPS's cgroup, minus wrk when wrk runs inside it), so every forked "
                "child counts; wrk: its own time (rusage). Softirq work that ran in a process's context "
                "counts for that process. Per CPU: everything /proc/stat saw on that CPU, user / system / "
                "softirq, other people's processes included.", "",
                md_table(["server", "side", "server processes", "wrk", f"CPU {SERVER_CPU} (server)",
                          f"CPU {CLIENT_CPU} (client)"], rows)]
    rows = []
    cpu = result.get("cpu", {})
    for key, label in (("shell_loop", "busybox sh loop, {iterations:,} iterations: CPU s (wall s)"),
                       ("fork_loop", "busybox sh, {forks:,} subshells (fork + exit): CPU s (wall s)"),
                       ("syscall_loop", "dd bs=1 /dev/zero → /dev/null, {syscalls:,} syscalls: CPU s (dd's s)")):
        if key in cpu:
            m, r = cpu[key], d["cpu"][key]
            rows.append([label.format(**m), f"{fmt(m['host_cpu_s']['median'], 3)} ({fmt(m['host_s']['median'], 3)})",
                         f"{fmt(m['vps_cpu_s']['median'], 3)} ({fmt(m['vps_s']['median'], 3)})",
                         f"**{pct(r['host_over_vps_cpu_time'])}** speed ({pct(r['host_over_vps_time'])})"])
    for key, label in (("own_disk_warm", "read own-disk file, page cache warm (MB/s)"),
                       ("template_warm", "read template file `{file}` (overlay lower), warm (MB/s)"),
                       ("own_disk_cold", "read own-disk file, cold: its pages dropped (MB/s)")):
        if key in result.get("file", {}):
            m = result["file"][key]
            rows.append([label.format(**m), fmt(m["host_MBps"]["median"]), fmt(m["vps_MBps"]["median"]),
                         f"**{pct(d['file'][key]['vps_over_host_MBps'])}**"])
    if rows:
        base = cpu.get("startup_baseline", {})
        out += ["", "### CPU and file reads (same busybox binary, pinned to one CPU)", "",
                md_table(["", "host", "VPS", "VPS / host"], rows), "",
                "CPU: user + system time of the processes (rusage), the figure other work on the machine "
                "hardly moves; in brackets the elapsed time. The loops run without address-space "
                "randomisation (`setarch -R`) and with the same argv and environment on both sides (the host's "
                "chrooted into the template), so both get the same memory layout. "
                "The shell loop's elapsed time is the wall clock minus the start-up of an empty command on the same "
                f"side (host {fmt(base.get('host_s', {}).get('median', 0) * 1000, 1)} ms, VPS through "
                f"`engine.run` {fmt(base.get('vps_s', {}).get('median', 0) * 1000, 1)} ms); everything done with "
                "dd by the copy time dd reports itself (no process start-up). Reads: `dd bs=1M` to /dev/null. "
                "The own-disk file lies in the VPS's ext4 image (overlay upper, loop device) and on the host's "
                "ext4; the template file is the same inode on both sides (the VPS reads it through the overlay "
                "and the idmapped mount). Cold: the file's pages (and in the VPS those of its disk image) "
                "dropped with `posix_fadvise(DONTNEED)` before each read, nothing else of the host's cache."]
    if result.get("analysis"):
        out += ["", "### Reading", "", result["analysis"]]
    for p in plots:
        out += ["", f"![{p}]({p})"]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


def analysis(result: dict) -> str:
    """What the numbers say, from the numbers (the report's own reading comes on top)."""
    d = result["derived"]
    lines = []
    for label, paths in result.get("http", {}).items():
        b = paths["bridge"]
        r_vps = d["http"][f"{label}/bridge/vps"]["ratio_of_medians"]
        r_bare = d["http"][f"{label}/bridge/bare_netns"]["ratio_of_medians"]
        verdict = "meets" if r_vps is not None and r_vps >= 0.97 else "misses"
        vps_over_bare = ratio(b["vps"]["rps"]["median"], b["bare_netns"]["rps"]["median"])
        text = (f"**{label}**: through the bridge the VPS serves {pct(r_vps)} of the host's requests per second "
                f"({verdict} the 97 % target). The extra veth hop alone (bare netns) gives {pct(r_bare)} of the "
                f"host, the rest of the VPS {pct(vps_over_bare)} of the bare netns.")
        if "loopback" in paths:
            text += (f" Over loopback, without bridge and veth, the VPS gets "
                     f"{pct(d['http'][f'{label}/loopback/vps']['ratio_of_medians'])} of the host.")

        us = [b[side]["server_process_us"]["median"] for side in ("host", "bare_netns", "vps")]
        soft = [b[side]["cpu_per_request_median"].get("server_cpu", {}).get("softirq_us", math.nan)
                for side in ("host", "bare_netns", "vps")]
        text += (f" CPU per request of the server's processes: host {us[0]:.0f} µs, bare netns {us[1]:.0f} µs, "
                 f"VPS {us[2]:.0f} µs; softirq on the server's CPU {soft[0]:.0f} / {soft[1]:.0f} / {soft[2]:.0f} µs.")
        lines.append(text)
    cpu = d.get("cpu", {})
    if cpu:
        lines.append("**CPU**: per unit of work the VPS needs " + ", ".join(
            f"{key.replace('_', ' ')} {pct(1 / v['host_over_vps_cpu_time']) if v['host_over_vps_cpu_time'] else '—'}"
            for key, v in cpu.items()) + " of the host's CPU time.")
    files = d.get("file", {})
    if files:
        ra = result["file"].get("own_disk_cold", {}).get("read_ahead_kb", {})
        text = "**Reads**: " + ", ".join(f"{key.replace('_', ' ')} {pct(v['vps_over_host_MBps'])}"
                                         for key, v in files.items()) + " of the host's MB/s"
        if ra:
            text += (f" (read-ahead: host disk {ra.get('host_disk', '?')} KB, the VPS's loop device "
                     f"{ra.get('vps_loop', '?')} KB)")
        lines.append(text + ".")
    return "\n\n".join(lines)


def plot(result: dict, outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    http = result.get("http", {})
    if http:
        groups = []
        for label, paths in http.items():
            for path, sides in paths.items():
                groups.append((f"{label}\n{path}", sides))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        colors = {"host": "#4c72b0", "bare_netns": "#8c8c8c", "vps": "#dd8452"}
        width = 0.26
        for gi, (_, sides) in enumerate(groups):
            keys = [k for k, _ in HTTP_SIDES if k in sides]
            for si, key in enumerate(keys):
                s = sides[key]["rps"]
                x = gi + (si - (len(keys) - 1) / 2) * width
                ax.bar(x, s["median"], width, color=colors[key], label=dict(HTTP_SIDES)[key],
                       yerr=[[s["median"] - s["min"]], [s["p95"] - s["median"]]], capsize=3)
        handles, labels = ax.get_legend_handles_labels()
        seen = {}
        for h, lab in zip(handles, labels, strict=True):
            seen.setdefault(lab, h)
        ax.legend(seen.values(), seen.keys())
        ax.set_xticks(range(len(groups)), [g for g, _ in groups])
        ax.set_ylabel("requests / s (median; whiskers min – p95)")
        ax.set_title("HTTP throughput: host vs VPS (wrk, same server binary and page)")
        fig.tight_layout()
        fig.savefig(outdir / "overhead-http.png", dpi=110)
        plt.close(fig)
        names.append("overhead-http.png")
    d = result["derived"]
    bars = []  # (label, VPS/host, colour)
    for key, v in d["http"].items():
        label, path, side = key.split("/")
        name = f"{label} {path}" + (" (bare netns)" if side == "bare_netns" else "")
        bars.append((name, v["ratio_of_medians"], "#8c8c8c" if side == "bare_netns" else "#dd8452"))
    for key, v in d["cpu"].items():
        bars.append((f"cpu {key.replace('_', ' ')} (CPU time)", v["host_over_vps_cpu_time"], "#dd8452"))
    for key, v in d["file"].items():
        bars.append((f"read {key.replace('_', ' ')}", v["vps_over_host_MBps"], "#dd8452"))
    bars = [b for b in bars if b[1] is not None]
    if bars:
        fig, ax = plt.subplots(figsize=(9, 5))
        ax.barh([k for k, _, _ in bars], [v * 100 for _, v, _ in bars], color=[c for _, _, c in bars])
        ax.axvline(100, color="black", linewidth=0.8)
        ax.axvline(97, color="red", linestyle="--", linewidth=0.8, label="97 % target")
        for i, (_, v, _) in enumerate(bars):
            ax.text(v * 100, i, f" {v * 100:.1f} %", va="center", fontsize=8)
        ax.set_xlabel("VPS (grey: bare netns) as % of host, medians (higher is better)")
        ax.set_xlim(0, max(115, max(v * 100 for _, v, _ in bars) + 10))
        ax.invert_yaxis()
        ax.legend(loc="lower right")
        ax.set_title("VPS / host")
        fig.tight_layout()
        fig.savefig(outdir / "overhead-ratios.png", dpi=110)
        plt.close(fig)
        names.append("overhead-ratios.png")
    return names


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
    ov_env = dict(common.OVERHEAD_ENV)
    uid_note = None
    if int(ov_env["VSERVER_UID_BASE"]) >= 2**31:
        uid_note = (f"common.OVERHEAD_ENV's VSERVER_UID_BASE {ov_env['VSERVER_UID_BASE']} is above the engine's "
                    f"limit (2^31); used {UID_BASE_FALLBACK}")
        ov_env["VSERVER_UID_BASE"] = str(UID_BASE_FALLBACK)
    # The host-side servers listen at the gateway: the engine's firewall (if it has one) must
    # let the bridge reach those ports of the host.
    ports = pick_ports(["busybox"] + ([] if args.no_apache else ["apache"]))
    ov_env["VSERVER_HOST_ALLOW"] = ",".join(f"tcp/{p}" for p in ports.values())
    env = common.engine_env(ov_env)
    from vservers.engine import Engine, EngineConfig

    config = EngineConfig.from_env(env)
    engine = Engine(config)
    pid_file = config.root / "host" / "pids.json"
    host = HostSide(pid_file)
    started = time.monotonic()
    result: dict = {
        "host": common.host_info(), "argv": sys.argv[1:] if argv is None else argv, "mode": args.mode,
        "profile": profile, "connections": CONNS, "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU,
        "page_bytes": PAGE_BYTES,
        "loadavg_before": os.getloadavg(), "installation": {k: env[k] for k in sorted(ov_env)}, "ports": ports,
    }
    # The engine measured is the working tree's: say so when it is not the commit's.
    status = run(["git", "-C", str(common.REPO), "status", "--porcelain", "--", "vservers/engine"]).stdout
    result["engine_uncommitted"] = sorted(line[3:] for line in status.splitlines() if line.strip())
    if uid_note:
        result["uid_base_note"] = uid_note
        log(uid_note)
    common.install_signal_handlers()
    ok = False
    try:
        stale_groups = sorted(accounting_root().glob(CGROUP_PREFIX + "*"))
        if config.root.exists() or set(netns_list()) & {CLIENT_NS, BARE_NS} or stale_groups:
            log(f"{config.root}, our namespaces or cgroups exist from an earlier run: cleaning first")
            kill_recorded(pid_file)
            for group in stale_groups:
                remove_cgroup(group)
            for ns in (CLIENT_NS, BARE_NS):
                delete_netns(ns)
            left = common.cleanup_installation(engine, log)
            if left:
                raise RuntimeError(f"could not clean the earlier run: {left}")
            common.install_signal_handlers()
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
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        print()
        print(md)
        log("smoke run: no results written")
    else:
        plots = plot(result, common.RESULTS_DIR)
        md = markdown(result, plots)
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        print()
        print(md)
        path = common.write_results("overhead", result, md)
        log(f"wrote {path}, {path.parent / 'SUMMARY.md'} and {', '.join(plots)}")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
