"""LXC from Debian as the peer: the engine's start latency and density measurements, taken
for LXC's busybox containers on the same machine.

Run as root from the repository root::

    .venv/bin/python bench/lxc.py --quick     # 20 runs, 100 containers per variant
    .venv/bin/python bench/lxc.py --full      # 50 runs, 300 containers per variant
    .venv/bin/python bench/lxc.py --smoke     # a tiny development run (writes no results)

Everything lives in an lxcpath of its own (`-P /var/lib/vservers-bench-lxc` on every lxc-*
command) with containers named `vsbl-*`, on a bridge of its own (vsbenchlxc0,
198.19.192.1/20). Prints JSON and Markdown, writes bench/results/lxc.json, the lxc section of
bench/results/SUMMARY.md and the plots bench/results/lxc-*.png, and removes everything it made
at the end (also on SIGINT/SIGTERM). If bench/results/engine.json exists, our engine's
figures are put beside LXC's.
"""

from __future__ import annotations

import argparse
import calendar
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.common import LXC_BRIDGE, LXC_GATEWAY, MB, log, md_table, mounts_below, ms, summary  # noqa: E402
from bench.report import fmt_bytes  # noqa: E402

LXC_PATH = Path(common.LXC_PATH)
PREFIX = "vsbl-"  # every container of ours; LXC's cgroups are lxc.payload.<name>, host-wide
BASE = PREFIX + "base"
GATEWAY = ipaddress.ip_interface(LXC_GATEWAY)
NETWORK = GATEWAY.network
HTTP_TIMEOUT = 30.0
POLL_INTERVAL = 0.0005  # the latency runs' GET / until 200, as often as bench/engine.py's
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOCK_DIR = Path("/run/lxc/lock") / str(LXC_PATH).lstrip("/")  # LXC's lock files for our lxcpath
DEFAULT_CONF = Path("/etc/lxc/default.conf")
HTTPD_LINE = "/bin/httpd -p 80 -h /var/www"
INDEX_HTML = "<html><body><h1>LXC busybox container</h1></body></html>\n"
STOP_PARALLEL = 32

# mode: (latency runs, containers per density variant, phase runs)
MODES = {"smoke": (3, 5, 2), "quick": (20, 100, 5), "full": (50, 300, 10)}
VARIANTS = {
    "dir": "default `dir` backend: `lxc-copy` of the base (rsync: busybox copied into each)",
    "overlay": "overlay snapshots: `lxc-copy -s -B overlayfs` of the base (shared lower rootfs)",
}

START_PHASES = [
    ("spawn", "lxc-start process: exec, liblxc, config, daemonize (until its first log line)"),
    ("monitor_cgroups", "monitor setup, monitor + payload cgroups (until clone of the init)"),
    ("container_setup", "namespaces, veth, rootfs, mounts, /dev, ttys, caps (until exec of init)"),
    ("until_return", "init exec'd → `lxc-start -d` returns"),
    ("guest_to_http", "`lxc-start -d` returned → first HTTP 200 (busybox init, rcS, httpd)"),
]


class LxcError(RuntimeError):
    pass


# --- lxc-* commands -------------------------------------------------------------------------


def lxc(cmd: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run lxc-CMD -P LXC_PATH ARGS (argument list, never a shell)."""
    argv = [f"lxc-{cmd}", "-P", str(LXC_PATH), *args]
    proc = popen(argv)
    try:
        out, err = proc.communicate()
    except BaseException:
        kill_group(proc)
        raise
    if check and proc.returncode != 0:
        raise LxcError(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip() or out.strip()}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def popen(argv: list[str]) -> subprocess.Popen:
    """Start ARGV in a process group of its own: an interrupt kills it with its helpers (lxc-copy's
    rsync) and the terminal's ^C reaches only us. (`lxc-start -d`'s monitor calls setsid itself.)"""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def timed(cmd: str, *args: str) -> float:
    t0 = time.monotonic()
    lxc(cmd, *args)
    return time.monotonic() - t0


def lxc_version() -> str:
    out = subprocess.run(["lxc-start", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def package_version(pkg: str) -> str | None:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# --- containers -----------------------------------------------------------------------------


def addr_of(index: int) -> str:
    return common.address(index, NETWORK)  # 198.19.193.0 + index, /20


def mac_of(index: int) -> str:
    """A fixed MAC per address index (LXC's 00:16:3e prefix), so that a reused address keeps its
    MAC and the host's neighbour entry stays right."""
    return f"00:16:3e:5b:{(index >> 8) & 0xff:02x}:{index & 0xff:02x}"


def base_config_text() -> str:
    """Debian's /etc/lxc/default.conf (what `lxc-create` uses without -f) with its network
    section (lxcbr0) replaced by our bridge."""
    lines = []
    if DEFAULT_CONF.exists():
        lines = [ln for ln in DEFAULT_CONF.read_text().splitlines() if not ln.strip().startswith("lxc.net.")]
    lines += [
        "lxc.net.0.type = veth",
        f"lxc.net.0.link = {LXC_BRIDGE}",
        "lxc.net.0.flags = up",
    ]
    return "\n".join(ln for ln in lines if ln.strip()) + "\n"


def customize_rootfs(rootfs: Path) -> None:
    """The template's rcS runs `udhcpc` in the foreground (no DHCP server on our bridge: it
    would block init forever); replace it with busybox httpd serving /var/www."""
    rcs = rootfs / "etc/init.d/rcS"
    lines = rcs.read_text().splitlines()
    if "/bin/udhcpc" in lines:
        lines[lines.index("/bin/udhcpc")] = HTTPD_LINE
    elif HTTPD_LINE not in lines:
        lines.append(HTTPD_LINE)
    rcs.write_text("\n".join(lines) + "\n")
    www = rootfs / "var/www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text(INDEX_HTML)


def rootfs_of(name: str) -> tuple[str, Path]:
    """(backend, the container's own rootfs or overlay upper directory) from its config."""
    for line in (LXC_PATH / name / "config").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "lxc.rootfs.path":
            value = value.strip()
            if value.startswith("overlay:") or value.startswith("overlayfs:"):
                return "overlay", Path(value.split(":")[-1])
            return "dir", Path(value.split(":", 1)[1] if value.startswith("dir:") else value)
    raise LxcError(f"{name}: no lxc.rootfs.path in its config")


def set_network(name: str, index: int) -> None:
    path = LXC_PATH / name / "config"
    ours = ("lxc.net.0.hwaddr", "lxc.net.0.ipv4.address", "lxc.net.0.ipv4.gateway")
    lines = [ln for ln in path.read_text().splitlines() if ln.split("=")[0].strip() not in ours]
    lines += [
        f"lxc.net.0.hwaddr = {mac_of(index)}",
        f"lxc.net.0.ipv4.address = {addr_of(index)}",
        f"lxc.net.0.ipv4.gateway = {GATEWAY.ip}",
    ]
    path.write_text("\n".join(lines) + "\n")


class Lab:
    """LXC containers of ours: a busybox base and its copies."""

    def __init__(self) -> None:
        self.base_conf = LXC_PATH / "base.conf"
        self.rsync = shutil.which("rsync") is not None

    def create_base(self) -> float:
        LXC_PATH.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.base_conf.write_text(base_config_text())
        t0 = time.monotonic()
        lxc("create", "-n", BASE, "-f", str(self.base_conf), "-t", "busybox")
        customize_rootfs(rootfs_of(BASE)[1])
        return time.monotonic() - t0

    def create(self, name: str, index: int, variant: str = "dir") -> float:
        """Create NAME with address INDEX; the seconds it took."""
        t0 = time.monotonic()
        if variant == "overlay":
            lxc("copy", "-n", BASE, "-N", name, "-s", "-B", "overlayfs")
        elif self.rsync:
            lxc("copy", "-n", BASE, "-N", name)
        else:  # lxc-copy of a dir container needs rsync: build each from the template instead
            lxc("create", "-n", name, "-f", str(self.base_conf), "-t", "busybox")
            customize_rootfs(rootfs_of(name)[1])
        set_network(name, index)
        return time.monotonic() - t0

    @property
    def dir_create_method(self) -> str:
        return "lxc-copy (rsync)" if self.rsync else "lxc-create -t busybox each (no rsync for lxc-copy)"


def init_pid(name: str) -> int | None:
    out = lxc("info", "-n", name, "-p", "-H", check=False)
    try:
        return int(out.stdout.strip())
    except ValueError:
        return None


def cgroup_of(pid: int) -> Path | None:
    """PID's memory cgroup directory (v1), or its unified one (v2)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    unified = None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/")
        if controllers == "":
            unified = path
    if unified is not None:
        v2_root = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"
        return v2_root / unified.lstrip("/")
    return None


def cgroup_procs(cg: Path) -> list[int]:
    pids: list[int] = []
    for procs in sorted(cg.rglob("cgroup.procs")):
        try:
            pids += [int(x) for x in procs.read_text().split()]
        except OSError:
            pass
    return pids


def cgroup_memory(cg: Path) -> int | None:
    for f in ("memory.usage_in_bytes", "memory.current"):
        try:
            return int((cg / f).read_text())
        except (OSError, ValueError):
            continue
    return None


def monitor_of(pid: int) -> int | None:
    """The `[lxc monitor]` process: the container init's parent."""
    import psutil

    try:
        parent = psutil.Process(pid).parent()
        if parent is not None and " ".join(parent.cmdline()).startswith("[lxc monitor]"):
            return parent.pid
    except psutil.Error:
        pass
    return None


def disk_used(path: Path) -> int:
    """Allocated bytes below PATH (st_blocks), each inode once (the template hard-links init)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for entry in [root, *(os.path.join(root, n) for n in files + dirs)]:
            try:
                st = os.lstat(entry)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def stop_all(names: list[str], parallel: int = STOP_PARALLEL) -> dict[str, str]:
    """Clean `lxc-stop` of NAMES, PARALLEL at a time; the errors by name."""
    errors: dict[str, str] = {}
    running: list[tuple[str, subprocess.Popen]] = []
    pending = list(names)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name = pending.pop(0)
                running.append((name, popen(["lxc-stop", "-P", str(LXC_PATH), "-n", name])))
            name, proc = running[0]
            _, err = proc.communicate()
            running.pop(0)
            if proc.returncode != 0:
                errors[name] = err.strip() or f"exit {proc.returncode}"
    finally:
        for _, proc in running:  # interrupted: stop waiting for them
            kill_group(proc)
    return errors


# --- latency --------------------------------------------------------------------------------


def one_lifecycle(lab: Lab, name: str, index: int) -> dict:
    ip = addr_of(index).split("/")[0]
    common.check_route(ip, NETWORK, LXC_BRIDGE)  # as bench/engine.py does: the bridge's route, before start
    t0 = time.monotonic()
    lab.create(name, index, "dir")
    t1 = time.monotonic()
    lxc("start", "-n", name, "-d")
    t2 = time.monotonic()
    answered = common.wait_http(ip, t2 + HTTP_TIMEOUT, POLL_INTERVAL)
    if answered is None:
        raise LxcError(f"{name} ({ip}) did not answer HTTP within {HTTP_TIMEOUT} s")
    t3 = time.monotonic()
    lxc("stop", "-n", name)
    t4 = time.monotonic()
    lxc("destroy", "-n", name)
    t5 = time.monotonic()
    return {
        "create_ms": ms(t1 - t0),
        "start_ms": ms(t2 - t1),
        "start_to_http_ms": ms(answered - t1),
        "create_start_to_http_ms": ms(answered - t0),
        "stop_ms": ms(t4 - t3),
        "destroy_ms": ms(t5 - t4),
    }


def latency(lab: Lab, runs: int) -> dict:
    log(f"latency: 1 warm-up + {runs} runs (dir backend)")
    warmup = one_lifecycle(lab, f"{PREFIX}lat-warmup", 1)
    samples = []
    for i in range(runs):
        samples.append(one_lifecycle(lab, f"{PREFIX}lat{i}", 2 + i % 8))
        s = samples[-1]
        log(f"  run {i + 1}/{runs}: create {s['create_ms']:.1f} ms, lxc-start {s['start_ms']:.1f} ms, "
            f"to HTTP {s['start_to_http_ms']:.1f} ms, stop {s['stop_ms']:.1f} ms")
    keys = ["create_ms", "start_ms", "start_to_http_ms", "create_start_to_http_ms", "stop_ms", "destroy_ms"]
    return {
        "runs": runs,
        "backend": "dir",
        "warmup": warmup,
        "stats_ms": {k: summary([s[k] for s in samples]) for k in keys},
        "samples": samples,
    }


LOG_LINE = re.compile(r"^\S+ \S+ (\d{14})\.(\d{3}) +\w+ +(.*)$")


def parse_log(path: Path) -> tuple[list[tuple[float, str]], str | None]:
    """(timestamp, message) lines of an lxc-start log (UTC, ms resolution) and its LSM driver."""
    lines, lsm = [], None
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        ts = calendar.timegm(time.strptime(m.group(1), "%Y%m%d%H%M%S")) + int(m.group(2)) / 1000
        lines.append((ts, m.group(3)))
        found = re.search(r"Initialized LSM security driver (\S+)", line)
        if found:
            lsm = found.group(1)
    return lines, lsm


def phases(lab: Lab, runs: int) -> dict:
    """Extra starts of one container with `lxc-start -l DEBUG`: its log's timestamps split
    start (ms resolution). Not part of the latency statistics (logging costs a little)."""
    log(f"start phases: {runs} starts with a DEBUG log")
    name, index = f"{PREFIX}phase", 10
    ip = addr_of(index).split("/")[0]
    lab.create(name, index, "dir")
    samples, lsm, seccomp = [], None, []
    common.check_route(ip, NETWORK, LXC_BRIDGE)  # before any start, as in one_lifecycle
    try:
        for i in range(runs):
            logfile = LXC_PATH / f"phase-{i}.log"
            w0, m0 = time.time(), time.monotonic()
            lxc("start", "-n", name, "-d", "-l", "DEBUG", "-o", str(logfile))
            m1 = time.monotonic()
            w1 = w0 + (m1 - m0)
            answered = common.wait_http(ip, m1 + HTTP_TIMEOUT, POLL_INTERVAL)
            if answered is None:
                raise LxcError(f"{name} ({ip}) did not answer HTTP within {HTTP_TIMEOUT} s")
            lxc("stop", "-n", name, "-k")
            lines, lsm = parse_log(logfile)
            seccomp = sorted({msg for _, msg in lines if "seccomp" in msg.lower()})[:5]
            first = min(ts for ts, _ in lines)
            cloned = next(ts for ts, msg in lines if "Cloned CLONE_NEWNS" in msg)
            execd = next(ts for ts, msg in lines if "Exec'ing" in msg)
            samples.append({
                "spawn": ms(max(0.0, first - w0)),
                "monitor_cgroups": ms(cloned - first),
                "container_setup": ms(execd - cloned),
                "until_return": ms(max(0.0, w1 - execd)),
                "guest_to_http": ms(answered - m1),
                "start_ms": ms(m1 - m0),
                "start_to_http_ms": ms(answered - m0),
            })
    finally:
        lxc("stop", "-n", name, "-k", check=False)
        lxc("destroy", "-n", name, check=False)
    keys = [k for k, _ in START_PHASES] + ["start_ms", "start_to_http_ms"]
    return {
        "runs": runs,
        "stats_ms": {k: summary([s[k] for s in samples]) for k in keys},
        "samples": samples,
        "lsm_driver": lsm,
        "seccomp_log_lines": seccomp,
    }


# --- density --------------------------------------------------------------------------------


def density(lab: Lab, variant: str, n: int) -> dict:
    names = [f"{PREFIX}{variant[0]}{i}" for i in range(n)]
    index = {name: 16 + i for i, name in enumerate(names)}
    log(f"density ({variant}): creating {n} containers")
    t0 = time.monotonic()
    create_s = [lab.create(name, index[name], variant) for name in names]
    create_all_s = time.monotonic() - t0
    os.sync()
    time.sleep(1.0)
    mem_before = common.meminfo_sampled()
    free_before = common.meminfo("MemFree")
    log(f"density ({variant}): starting {n} containers")
    start_errors: dict[str, str] = {}
    start_s = []
    t0 = time.monotonic()
    for name in names:
        try:
            start_s.append(timed("start", "-n", name, "-d"))
        except LxcError as exc:
            start_errors[name] = str(exc)
    start_all_s = time.monotonic() - t0
    answered = {}
    deadline = time.monotonic() + HTTP_TIMEOUT
    for name in names:
        if name in start_errors:
            continue
        ip = addr_of(index[name]).split("/")[0]
        common.check_route(ip, NETWORK, LXC_BRIDGE)
        when = common.wait_http(ip, deadline)
        if when is not None:
            answered[name] = when
    all_http_s = (max(answered.values()) - t0) if answered else None
    time.sleep(2.0)  # settle
    mem_after = common.meminfo_sampled()
    free_after = common.meminfo("MemFree")
    log(f"density ({variant}): measuring")
    per = []
    for name in names:
        if name in start_errors:
            continue
        pid = init_pid(name)
        cg = cgroup_of(pid) if pid else None
        pids = cgroup_procs(cg) if cg else []
        monitor = monitor_of(pid) if pid else None
        _, own_rootfs = rootfs_of(name)
        per.append({
            "name": name,
            "cgroup": str(cg) if cg else None,
            "pids": len(pids),
            "pss_bytes": common.pss_of(pids),
            "monitor_pss_bytes": common.pss_of([monitor]) if monitor else 0,
            "cgroup_memory_bytes": cgroup_memory(cg) if cg else None,
            "rootfs_disk_bytes": disk_used(own_rootfs),
            "container_dir_disk_bytes": disk_used(LXC_PATH / name),
        })
    running = len(per) or 1
    log(f"density ({variant}): stopping {n} containers ({STOP_PARALLEL} lxc-stop at a time)")
    t0 = time.monotonic()
    stop_errors = stop_all([n_ for n_ in names if n_ not in start_errors])
    stop_all_s = time.monotonic() - t0
    t0 = time.monotonic()
    for name in names:
        lxc("destroy", "-n", name)
    destroy_all_s = time.monotonic() - t0

    def mean(key: str) -> float:
        vals = [p[key] for p in per if p[key] is not None]
        return sum(vals) / len(vals) if vals else 0.0

    return {
        "variant": variant,
        "description": VARIANTS[variant],
        "containers": n,
        "started": n - len(start_errors),
        "answered_http": len(answered),
        "answered_share": len(answered) / n if n else 0.0,
        "start_errors": start_errors,
        "stop_errors": stop_errors,
        "create_all_s": round(create_all_s, 3),
        "create_per_container_ms": summary([s * 1000 for s in create_s]),
        "start_all_s": round(start_all_s, 3),
        "start_per_container_ms": summary([s * 1000 for s in start_s]),
        "start_all_to_http_s": round(all_http_s, 3) if all_http_s is not None else None,
        "stop_all_s": round(stop_all_s, 3),
        "destroy_all_s": round(destroy_all_s, 3),
        "mem_available_before_bytes": mem_before,
        "mem_available_after_bytes": mem_after,
        "mem_available_delta_per_container_bytes": (mem_before - mem_after) / running,
        "mem_free_delta_per_container_bytes": (free_before - free_after) / running,
        "pss_per_container_bytes": mean("pss_bytes"),
        "monitor_pss_per_container_bytes": mean("monitor_pss_bytes"),
        "pss_with_monitor_per_container_bytes": mean("pss_bytes") + mean("monitor_pss_bytes"),
        "cgroup_memory_per_container_bytes": mean("cgroup_memory_bytes"),
        "rootfs_disk_per_container_bytes": mean("rootfs_disk_bytes"),
        "container_dir_disk_per_container_bytes": mean("container_dir_disk_bytes"),
        "processes_per_container": mean("pids"),
        "per_container": per,
    }


# --- cleanup --------------------------------------------------------------------------------


def hierarchies() -> list[Path]:
    """cgroup directories where LXC makes its lxc.* groups: each v1 hierarchy, or the v2 root."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


def lxc_cgroups(ours: bool) -> list[Path]:
    """lxc.payload.* / lxc.monitor.* groups of our containers (OURS) or of anyone else's."""
    found = []
    for h in hierarchies():
        for kind in ("lxc.payload.", "lxc.monitor."):
            for d in h.glob(kind + "*"):
                if d.name[len(kind):].startswith(PREFIX) == ours:
                    found.append(d)
    return found


def pivot_dirs() -> list[Path]:
    return [h / "lxc.pivot" for h in hierarchies() if (h / "lxc.pivot").is_dir()]


def our_processes() -> list[str]:
    """Monitors and lxc-* tools working on our lxcpath, and processes in our containers' cgroups."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        cmd = " ".join(argv).strip()
        tool = os.path.basename(argv[0]).startswith("lxc-") and str(LXC_PATH) in argv
        if cmd.startswith(f"[lxc monitor] {LXC_PATH} ") or tool or f"/lxc.payload.{PREFIX}" in cgroups:
            found.append(f"process {proc.name} {cmd[:80]}")
    return found


def bridge_ports() -> list[str] | None:
    """The interfaces on our bridge; None when it does not exist."""
    out = subprocess.run(["ip", "-o", "link", "show", "dev", LXC_BRIDGE], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    out = subprocess.run(["ip", "-o", "link", "show", "master", LXC_BRIDGE], capture_output=True, text=True)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if ":" in line]


def leftovers(pivot_ours: bool) -> list[str]:
    found = [f"mount {p}" for p in mounts_below(LXC_PATH)]
    if LXC_PATH.exists():
        found.append(f"directory {LXC_PATH}")
    if LOCK_DIR.exists():
        found.append(f"directory {LOCK_DIR}")
    ports = bridge_ports()
    if ports is not None:
        found.append(f"link {LXC_BRIDGE}")
        found += [f"link {p} (on {LXC_BRIDGE})" for p in ports]
    found += [f"cgroup {d}" for d in lxc_cgroups(ours=True)]
    if pivot_ours and not lxc_cgroups(ours=False):
        found += [f"cgroup {d}" for d in pivot_dirs()]
    found += our_processes()
    return sorted(set(found))


def rmdir_tree(cg: Path) -> None:
    """Remove an (empty of processes) cgroup directory and its children, deepest first."""
    for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        cg.rmdir()
    except OSError:
        pass


def cleanup(pivot_ours: bool) -> list[str]:
    """Stop and destroy every container of our lxcpath, remove the lxcpath, LXC's lock files of
    it, our cgroups and the bridge; return what is still left (empty when clean)."""
    from vservers.engine import network

    problems: list[str] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if LXC_PATH.is_dir():
            names = sorted(p.name for p in LXC_PATH.iterdir() if (p / "config").is_file())
            active = lxc("ls", "--active", "-1", check=False).stdout.split()
            for name in active:
                out = lxc("stop", "-n", name, "-k", check=False)
                if out.returncode != 0:
                    log(f"cleanup: lxc-stop -k {name}: {out.stderr.strip()}")
            # clones first: the base refuses to go while it has overlay snapshots
            for name in sorted(names, key=lambda n: n == BASE):
                out = lxc("destroy", "-n", name, "-f", check=False)
                if out.returncode != 0:
                    problems.append(f"lxc-destroy {name}: {out.stderr.strip()}")
        for point in sorted(mounts_below(LXC_PATH), key=len, reverse=True):
            subprocess.run(["umount", point], capture_output=True)
        if LXC_PATH.exists() and not mounts_below(LXC_PATH):
            shutil.rmtree(LXC_PATH, ignore_errors=True)
        shutil.rmtree(LOCK_DIR, ignore_errors=True)
        for cg in lxc_cgroups(ours=True):
            if not cgroup_procs(cg):
                rmdir_tree(cg)
        if pivot_ours and not lxc_cgroups(ours=False):
            for cg in pivot_dirs():
                if not cgroup_procs(cg):
                    rmdir_tree(cg)
        try:
            network.remove_bridge(LXC_BRIDGE)
        except Exception as exc:  # noqa: BLE001 - report it, keep checking
            problems.append(f"remove bridge {LXC_BRIDGE}: {exc}")
        problems += leftovers(pivot_ours)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return sorted(set(problems))


# --- batch start: N servers in one engine call against N lxc-start ---------------------------

BATCH_SERVERS = 20
BATCH_ROUNDS = 5
BATCH_INDEX = 1100  # LXC addresses of the batch containers: addr_of(BATCH_INDEX + i)


def wait_all_http(ips: dict[str, str], t0: float) -> dict[str, float]:
    """Poll every name's IP until each answers 200 (one try each per pass, a pass every 2 ms);
    seconds from T0 to each first 200. LxcError if one has not answered by HTTP_TIMEOUT."""
    pending = dict(ips)
    answered: dict[str, float] = {}
    deadline = t0 + HTTP_TIMEOUT
    while pending:
        for name, ip in list(pending.items()):
            if common.http_status(ip, timeout=0.5) == 200:
                answered[name] = time.monotonic() - t0
                del pending[name]
        if not pending:
            break
        if time.monotonic() >= deadline:
            raise LxcError(f"no HTTP 200 within {HTTP_TIMEOUT:.0f} s from {', '.join(sorted(pending))}")
        time.sleep(0.002)
    return answered


def kill_all(names: list[str]) -> None:
    """`lxc-stop -k` of NAMES, all at once (the batch rounds only need them gone)."""
    procs = [(name, popen(["lxc-stop", "-P", str(LXC_PATH), "-n", name, "-k"])) for name in names]
    failed = []
    for name, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            failed.append(f"{name}: {err.strip()}")
    if failed:
        raise LxcError("lxc-stop -k failed: " + "; ".join(failed))


def batch(lab: Lab, n: int, rounds: int) -> dict:
    """Start N busybox servers of ours in one engine call (`Engine.start_many`) and, the same
    round, N LXC busybox containers with one `lxc-start -d` after another, each until every
    one answers HTTP 200; also ours one `start` after another. The order of the three turns
    round by round; every round restarts the same servers and containers (a warm-up round
    first). Per server: from the first start until the last one answers, divided by N."""
    from vservers.engine import Engine, EngineConfig, network, templates

    env = common.engine_env()
    engine = Engine(EngineConfig.from_env(env))
    common.clean_earlier_run(engine, log)
    ours = {f"batch{i}": common.address(i).split("/")[0] for i in range(n)}
    theirs = {f"{PREFIX}b{i}": addr_of(BATCH_INDEX + i).split("/")[0] for i in range(n)}
    log(f"batch: {n} servers of ours and {n} LXC containers (dir), {rounds} rounds after a warm-up")
    try:
        templates.build(engine.config, "busybox")
        network.ensure_bridge(engine.config.bridge, engine.config.gateway4)
        for i, name in enumerate(ours):
            engine.create(name, "busybox", [common.address(i)])
        for i, name in enumerate(theirs):
            lab.create(name, BATCH_INDEX + i, "dir")
        # Before any start: the routes are the bridges', which exist already.
        for ip in ours.values():
            common.check_route(ip)
        for ip in theirs.values():
            common.check_route(ip, NETWORK, LXC_BRIDGE)

        def ours_batch() -> tuple[float, dict[str, float]]:
            t0 = time.monotonic()
            errors = {k: str(v) for k, v in engine.start_many(list(ours)).items() if v is not None}
            returned = time.monotonic() - t0
            if errors:
                raise LxcError(f"start_many: {errors}")
            answered = wait_all_http(ours, t0)
            stopped = {k: str(v) for k, v in engine.stop_many(list(ours)).items() if v is not None}
            if stopped:
                raise LxcError(f"stop_many: {stopped}")
            return returned, answered

        def ours_one_by_one() -> tuple[float, dict[str, float]]:
            t0 = time.monotonic()
            for name in ours:
                engine.start(name)
            returned = time.monotonic() - t0
            answered = wait_all_http(ours, t0)
            engine.stop_many(list(ours))
            return returned, answered

        def lxc_start() -> tuple[float, dict[str, float]]:
            t0 = time.monotonic()
            for name in theirs:
                lxc("start", "-n", name, "-d")
            returned = time.monotonic() - t0
            answered = wait_all_http(theirs, t0)
            kill_all(list(theirs))
            return returned, answered

        contenders = {"ours_batch": ours_batch, "ours_one_by_one": ours_one_by_one, "lxc": lxc_start}
        for run in contenders.values():  # warm-up: caches, the first start's set-up of the bridge ports
            run()
        samples: dict[str, list[dict]] = {k: [] for k in contenders}
        load_before = os.getloadavg()[0]
        for r in range(rounds):
            order = list(contenders)[r % 3:] + list(contenders)[:r % 3]
            for key in order:
                returned, answered = contenders[key]()
                samples[key].append({"returned_ms": ms(returned), "all_http_ms": ms(max(answered.values())),
                                     "per_server_ms": ms(max(answered.values()) / n)})
            log(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {samples[k][-1]['per_server_ms']:.1f} ms/server" for k in contenders))
        load_after = os.getloadavg()[0]
        per = {k: summary([s["per_server_ms"] for s in v]) for k, v in samples.items()}
        paired = [o["per_server_ms"] / t["per_server_ms"] for o, t in zip(samples["ours_batch"], samples["lxc"],
                                                                          strict=True)]
        return {
            "servers": n,
            "rounds": rounds,
            "host": common.host_info(),
            "load_before": round(load_before, 2),
            "load_after": round(load_after, 2),
            "start_parallel": _start_parallel(),
            "per_server_ms": per,
            "ratio_batch_to_lxc": per["ours_batch"]["median"] / per["lxc"]["median"],
            "ratio_per_round": summary(paired),
            "samples": samples,
        }
    finally:
        for name in theirs:
            if (LXC_PATH / name).exists():
                lxc("stop", "-n", name, "-k", check=False)
                lxc("destroy", "-n", name, "-f", check=False)
        left = common.cleanup_installation(engine, log)
        common.install_signal_handlers()
        if left:
            raise RuntimeError(f"batch: left behind: {left}")


def _start_parallel() -> int:
    from vservers.engine import lifecycle

    return lifecycle.START_PARALLEL


BATCH_LABELS = {
    "ours_batch": "ours, one engine call (`Engine.start_many`)",
    "ours_one_by_one": "ours, one `Engine.start` after another",
    "lxc": "LXC, one `lxc-start -d` after another",
}


def batch_markdown(b: dict) -> str:
    info = b["host"]
    n = b["servers"]
    rows = [[label, f"{b['per_server_ms'][k]['median']:.1f}", f"{b['per_server_ms'][k]['min']:.1f}",
             f"{b['per_server_ms'][k]['max']:.1f}",
             f"{summary([s['returned_ms'] / n for s in b['samples'][k]])['median']:.1f}"]
            for k, label in BATCH_LABELS.items()]
    out = [
        "## Batch start: N busybox servers against N LXC containers (bench/lxc.py)",
        "",
        common.host_line(info) + f", commit "
        f"{info['git_commit']}; {n} servers and {n} LXC dir containers (LXC's default backend), {b['rounds']} "
        f"rounds after a warm-up round, the order of the three turning each round; load average "
        f"{b['load_before']} before, {b['load_after']} after. Each round restarts the same servers and "
        f"containers. Per server: from the first start until the last of the {n} answers HTTP 200 (all "
        f"polled, one try each every 2 ms), divided by {n}. `start_many` runs {b['start_parallel']} starts at "
        "a time.",
        "",
        md_table(["how", "per server, median ms", "min", "max", "until the call(s) returned, per server"], rows),
        "",
        f"Ours in one call ÷ LXC: **{b['ratio_batch_to_lxc']:.2f}** (medians; per round "
        f"{b['ratio_per_round']['min']:.2f}–{b['ratio_per_round']['max']:.2f}).",
    ]
    return "\n".join(out) + "\n"


# --- report ---------------------------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "—"
    return f"{ours / theirs:.2f}"


def load_engine() -> dict | None:
    path = common.RESULTS_DIR / "engine.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def comparison(result: dict, engine: dict) -> list[str]:
    lat, den = result.get("latency") or {}, result.get("density") or {}
    elat, eden = engine.get("latency") or {}, engine.get("density") or {}
    dir_, ovl = den.get("dir") or {}, den.get("overlay") or {}

    def lat_med(d: dict, key: str, stat: str = "median") -> float | None:
        return (d.get("stats_ms") or {}).get(key, {}).get(stat)

    def fmt_ms(v: float | None) -> str:
        return f"{v:.1f} ms" if v is not None else "—"

    rows = []
    for label, key, stat in [
        ("start → first HTTP 200, median", "start_to_http_ms", "median"),
        ("start → first HTTP 200, p95", "start_to_http_ms", "p95"),
        ("create + start → first HTTP 200, median", "create_start_to_http_ms", "median"),
    ]:
        ours, theirs = lat_med(elat, key, stat), lat_med(lat, key, stat)
        rows.append([label, fmt_ms(ours), fmt_ms(theirs), ratio(ours, theirs), "—", "—"])
    e_ram = eden.get("mem_available_delta_per_server_bytes")
    e_pss = eden.get("pss_per_server_bytes")
    e_img = eden.get("image_allocated_per_server_bytes")
    mem_rows = [
        ("host memory per server (MemAvailable drop)", e_ram, "mem_available_delta_per_container_bytes"),
        ("PSS of the server's processes", e_pss, "pss_per_container_bytes"),
        ("PSS incl. LXC's `[lxc monitor]`", e_pss, "pss_with_monitor_per_container_bytes"),
        ("disk per server (ours: sparse image blocks; LXC: du of its directory)", e_img,
         "container_dir_disk_per_container_bytes"),
    ]
    for label, ours, key in mem_rows:
        a, b = dir_.get(key), ovl.get(key)
        rows.append([label, fmt_bytes(ours), fmt_bytes(a), ratio(ours, a), fmt_bytes(b), ratio(ours, b)])
    einfo = engine.get("host", {})
    n_e = eden.get("servers")
    n_l = dir_.get("containers")
    out = [
        "### Side by side with our engine",
        "",
        f"Ours: `bench/engine.py {' '.join(engine.get('argv', []))}` run of {einfo.get('date', '?')} "
        f"(commit {einfo.get('git_commit', '?')}{f', {n_e} servers' if n_e else ''}); LXC: this run, "
        f"{result['host']['date']} (commit {result['host']['git_commit']}"
        f"{f', {n_l} containers per variant' if n_l else ''}). "
        "Ratio = ours / LXC (below 1: ours is faster or smaller). Latency: LXC's dir backend.",
        "",
        md_table(["measure", "ours", "LXC dir", "ours / LXC dir", "LXC overlay snapshot", "ours / LXC overlay"], rows),
    ]
    return out


def markdown(result: dict, engine: dict | None, plots: dict[str, str]) -> str:
    info = result["host"]
    setup = result["lxc_setup"]
    out = [
        "## LXC from Debian on the same machine",
        "",
        common.host_line(info) + f", "
        f"commit {info['git_commit']}; `bench/lxc.py {' '.join(result['argv'])}`. "
        f"LXC {setup['lxc_version']} (Debian package {setup['lxc_package']}), `lxc-create -t busybox` "
        f"(host busybox {setup['busybox_package']}); lxcpath {LXC_PATH}, bridge {LXC_BRIDGE}. "
        f"Security: LSM driver `{setup['lsm_driver']}` (the kernel has no AppArmor, so "
        f"`lxc.apparmor.profile = {setup['apparmor_profile']}` from /etc/lxc/default.conf does nothing), "
        f"seccomp: {setup['seccomp']}. Init runs the template's rcS with `udhcpc` replaced by `{HTTPD_LINE}`; "
        f"dir copies made by {setup['dir_create_method']}.",
    ]
    if engine:
        out += [""] + comparison(result, engine)
    lat = result.get("latency")
    if lat:
        labels = {
            "create_ms": "create (`lxc-copy` of the base, dir backend + network config)",
            "start_ms": "`lxc-start -d` returns (container RUNNING, init exec'd)",
            "start_to_http_ms": "start → first HTTP 200",
            "create_start_to_http_ms": "create + start → first HTTP 200",
            "stop_ms": "`lxc-stop` (clean: SIGUSR1 to busybox init)",
            "destroy_ms": "`lxc-destroy` (stopped container)",
        }
        rows = [[label, f"{lat['stats_ms'][k]['median']:.1f}", f"{lat['stats_ms'][k]['p95']:.1f}"]
                for k, label in labels.items()]
        out += ["", f"### Latency ({lat['runs']} runs after 1 warm-up; HTTP polled every "
                f"{POLL_INTERVAL * 1000:g} ms)", "", md_table(["operation", "median ms", "p95 ms"], rows)]
    ph = result.get("phases")
    if ph:
        rows = [[label, f"{ph['stats_ms'][k]['median']:.1f}", f"{ph['stats_ms'][k]['p95']:.1f}"]
                for k, label in START_PHASES]
        rows.append(["**start → first HTTP 200** (these runs)", f"{ph['stats_ms']['start_to_http_ms']['median']:.1f}",
                     f"{ph['stats_ms']['start_to_http_ms']['p95']:.1f}"])
        out += ["", f"### Where LXC's start spends its time ({ph['runs']} extra starts with `-l DEBUG`; "
                "log timestamps have 1 ms resolution)", "",
                md_table(["phase", "median ms", "p95 ms"], rows)]
    den = result.get("density") or {}
    if den:
        variants = [v for v in VARIANTS if v in den]
        n = den[variants[0]]["containers"]

        def row(label: str, fn) -> list[str]:
            return [label] + [fn(den[v]) for v in variants]

        def http(d: dict) -> str:
            return f"{d['start_all_to_http_s']:.2f} s" if d["start_all_to_http_s"] is not None else "—"

        rows = [
            row("host memory (MemAvailable drop)", lambda d: fmt_bytes(d["mem_available_delta_per_container_bytes"])),
            row("PSS of the container's processes", lambda d: fmt_bytes(d["pss_per_container_bytes"])),
            row("PSS of its `[lxc monitor]`", lambda d: fmt_bytes(d["monitor_pss_per_container_bytes"])),
            row("PSS, both", lambda d: fmt_bytes(d["pss_with_monitor_per_container_bytes"])),
            row("cgroup memory (payload)", lambda d: fmt_bytes(d["cgroup_memory_per_container_bytes"])),
            row("processes in the container", lambda d: f"{d['processes_per_container']:.1f}"),
            row("disk: its rootfs / overlay upper", lambda d: fmt_bytes(d["rootfs_disk_per_container_bytes"])),
            row("disk: its whole directory", lambda d: fmt_bytes(d["container_dir_disk_per_container_bytes"])),
            row("create, median", lambda d: f"{d['create_per_container_ms']['median']:.1f} ms"),
            row("`lxc-start -d`, median", lambda d: f"{d['start_per_container_ms']['median']:.1f} ms"),
        ]
        out += ["", f"### Density: {n} busybox containers at once, per variant", "",
                "- " + "\n- ".join(f"**{v}**: {VARIANTS[v]}" for v in variants), "",
                md_table(["per container"] + variants, rows)]
        rows = [
            row("create all", lambda d: f"{d['create_all_s']:.2f} s"),
            row("start all (sequential `lxc-start -d`)", lambda d: f"{d['start_all_s']:.2f} s"),
            row("start of the first → all answer HTTP", http),
            row("answering HTTP", lambda d: f"{d['answered_http']}/{d['containers']} ({d['answered_share']:.0%})"),
            row(f"stop all (`lxc-stop`, {STOP_PARALLEL} at a time)", lambda d: f"{d['stop_all_s']:.2f} s"),
            row("destroy all", lambda d: f"{d['destroy_all_s']:.2f} s"),
        ]
        out += ["", md_table(["all containers"] + variants, rows)]
        out += ["", f"The base container's rootfs (the overlay snapshots' shared lower layer): "
                f"{fmt_bytes(result.get('base_disk_bytes'))}."]
    if plots:
        out += [""] + [f"![{title}]({fname})" for fname, title in plots.items()]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


def plot(result: dict, engine: dict | None) -> dict[str, str]:
    """PNG plots into the results directory; {file name: title}."""
    plt = report.pyplot()
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    made = {}
    lat = result.get("latency")
    if lat:
        series = [
            ("LXC: lxc-start -d", [s["start_ms"] for s in lat["samples"]]),
            ("LXC: start → HTTP", [s["start_to_http_ms"] for s in lat["samples"]]),
            ("LXC: create + start → HTTP", [s["create_start_to_http_ms"] for s in lat["samples"]]),
        ]
        esamples = ((engine or {}).get("latency") or {}).get("samples") or []
        if esamples:
            series += [
                ("ours: start", [s["start_ms"] for s in esamples]),
                ("ours: start → HTTP", [s["start_to_http_ms"] for s in esamples]),
                ("ours: create + start → HTTP", [s["create_start_to_http_ms"] for s in esamples]),
            ]
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(series) + 1.5))
        labels = [s[0] for s in series]
        ax.boxplot([s[1] for s in series], orientation="horizontal", tick_labels=labels, showfliers=False)
        for i, (_, vals) in enumerate(series, start=1):
            ax.scatter(vals, [i + (j % 7 - 3) * 0.03 for j in range(len(vals))], s=8, alpha=0.6)
        ax.set_xlabel("ms")
        ax.set_xlim(left=0)
        ax.set_title("Start latency (each run one container; dots = runs)")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        report.save(fig, common.RESULTS_DIR / "lxc-latency.png")
        made["lxc-latency.png"] = "start latency, LXC and ours"
    den = result.get("density") or {}
    if den:
        groups = [(f"LXC {v}", den[v]) for v in VARIANTS if v in den]
        eden = (engine or {}).get("density")
        metrics = [("MemAvailable drop", "mem_available_delta_per_container_bytes",
                    "mem_available_delta_per_server_bytes"),
                   ("PSS (container)", "pss_per_container_bytes", "pss_per_server_bytes"),
                   ("PSS ([lxc monitor])", "monitor_pss_per_container_bytes", None)]
        disk = ("disk", "container_dir_disk_per_container_bytes", "image_allocated_per_server_bytes")
        names = [g[0] for g in groups] + (["ours"] if eden else [])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1.3]})
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            src = eden if name == "ours" else dict(groups)[name]
            vals = []
            for _, lkey, ekey in metrics:
                key = ekey if name == "ours" else lkey
                vals.append((src.get(key) or 0) / MB if key else 0)
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(metrics))]
            bars = ax1.bar(xs, vals, width, label=name)
            ax1.bar_label(bars, fmt="%.2f", fontsize=7)
            key = disk[2] if name == "ours" else disk[1]
            bars = ax2.bar([k], [(src.get(key) or 0) / MB], 0.7, label=name, color=bars[0].get_facecolor())
            ax2.bar_label(bars, fmt="%.2f", fontsize=7)
        ax1.set_xticks(range(len(metrics)), [m[0] for m in metrics])
        ax1.set_ylabel("MB per container / server")
        ax1.set_title("Memory")
        ax1.legend(fontsize=8)
        ax2.set_xticks(range(len(names)), names, fontsize=8)
        ax2.set_title("Disk (LXC: du of its dir; ours: image blocks)", fontsize=9)
        fig.suptitle("Per container at density (LXC: this run; ours: bench/engine.py's last run)", fontsize=10)
        fig.tight_layout()
        report.save(fig, common.RESULTS_DIR / "lxc-memory.png")
        made["lxc-memory.png"] = "memory and disk per container, by variant"
    return made


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="a tiny development run: 3 runs, 5 containers (writes no results unless --write)")
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="20 runs, 100 containers per variant (the default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="50 runs, 300 containers per variant")
    parser.add_argument("--runs", type=int, help="latency runs (overrides the mode)")
    parser.add_argument("--density", type=int, help="containers per density variant (overrides the mode)")
    parser.add_argument("--batch", type=int, default=BATCH_SERVERS,
                        help=f"servers per side in the batch start (default {BATCH_SERVERS}; 0: none)")
    parser.add_argument("--batch-only", action="store_true",
                        help="only the batch start (writes lxc-batch.json and its section, nothing else)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write bench/results (default: yes, except for --smoke)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    runs, n, phase_runs = MODES[args.mode]
    runs = runs if args.runs is None else args.runs
    n = n if args.density is None else args.density
    write = args.write if args.write is not None else args.mode != "smoke"
    if runs < 1 or n < 0:
        parser.error("--runs must be >= 1 and --density >= 0")
    if n > 1000:
        parser.error("--density at most 1000 (a Linux bridge has at most 1024 ports)")
    if os.geteuid() != 0:
        parser.error("must run as root")
    for tool in ("lxc-create", "lxc-start", "lxc-copy", "busybox"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: install the Debian packages lxc and busybox-static (make bench)")

    from vservers.engine import network

    t_begin = time.monotonic()
    result: dict = {"host": common.host_info(), "argv": sys.argv[1:] if argv is None else argv, "mode": args.mode}
    crashed = LXC_PATH.exists() or bridge_ports() is not None or bool(lxc_cgroups(ours=True))
    # LXC's shared lxc.pivot cgroup: ours to remove if it was not there before us (or only a
    # crashed run of ours can have left it) and no other LXC container runs on the host.
    pivot_ours = not pivot_dirs() or (crashed and not lxc_cgroups(ours=False))
    common.install_signal_handlers()
    lab = Lab()
    ok = False
    batch_result = None
    try:
        if crashed:
            log(f"{LXC_PATH} / {LXC_BRIDGE} exist from an earlier run: cleaning them first")
            left = cleanup(pivot_ours)
            if left:
                raise RuntimeError(f"could not clean the earlier run: {left}")
            common.install_signal_handlers()
        network.ensure_bridge(LXC_BRIDGE, GATEWAY)
        result["base_create_s"] = round(lab.create_base(), 3)
        base_rootfs = rootfs_of(BASE)[1]
        result["base_disk_bytes"] = disk_used(base_rootfs)
        default_conf = DEFAULT_CONF.read_text() if DEFAULT_CONF.exists() else ""
        profile = re.search(r"^lxc\.apparmor\.profile\s*=\s*(\S+)", default_conf, re.M)
        result["lxc_setup"] = {
            "lxc_version": lxc_version(),
            "lxc_package": package_version("lxc"),
            "busybox_package": package_version("busybox-static"),
            "dir_create_method": lab.dir_create_method,
            "apparmor_profile": profile.group(1) if profile else None,
            "apparmor_in_kernel": Path("/sys/module/apparmor").exists(),
            "seccomp": "none (the busybox template does not include common.conf; no lxc.seccomp.profile)",
            "etc_lxc_default_conf": default_conf,
            "base_config": (LXC_PATH / BASE / "config").read_text(),
            "rcS": (base_rootfs / "etc/init.d/rcS").read_text(),
            "inittab": (base_rootfs / "etc/inittab").read_text(),
        }
        if args.batch:
            batch_result = batch(lab, args.batch, BATCH_ROUNDS if args.mode != "smoke" else 2)
        if not args.batch_only:
            result["latency"] = latency(lab, runs)
            result["phases"] = phases(lab, phase_runs)
            result["lxc_setup"]["lsm_driver"] = result["phases"]["lsm_driver"]
            if result["phases"]["seccomp_log_lines"]:
                result["lxc_setup"]["seccomp"] += "; log: " + " | ".join(result["phases"]["seccomp_log_lines"])
            if n:
                result["density"] = {v: density(lab, v, n) for v in VARIANTS}
        ok = True
    finally:
        log("cleaning up")
        result["leftovers"] = cleanup(pivot_ours)
        if result["leftovers"]:
            log("LEFT BEHIND: " + "; ".join(result["leftovers"]))
        if batch_result is not None:  # measured: worth its own results even if a later part failed
            batch_result["leftovers"] = result["leftovers"]
            md = batch_markdown(batch_result)
            print(md)
            if write and not result["leftovers"]:
                log(f"wrote {common.write_results('lxc-batch', batch_result, md)}")
    result["run_s"] = round(time.monotonic() - t_begin, 1)
    if not ok:
        return 1
    if args.batch_only:
        return 0 if not result["leftovers"] else 2
    engine = load_engine()
    if engine:
        result["engine_run"] = {"date": engine.get("host", {}).get("date"),
                                "git_commit": engine.get("host", {}).get("git_commit"),
                                "argv": engine.get("argv")}
    plots: dict[str, str] = {}
    if write:
        try:
            plots = plot(result, engine)
        except Exception as exc:  # noqa: BLE001 - the figures are worth more than the plots
            log(f"plots failed: {exc!r}")
            result["plot_error"] = repr(exc)
    md = markdown(result, engine, plots)
    report.show(result, md)
    if write:
        path = common.write_results("lxc", result, md)
        log(f"wrote {path}, {path.parent / 'SUMMARY.md'} and {', '.join(plots)}")
    log(f"run took {result['run_s']:.0f} s")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
