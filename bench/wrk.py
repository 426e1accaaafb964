"""Running wrk and reading what it prints, with the CPU time around each run: per CPU from
/proc/stat, of the server's processes (a callable the caller gives) and of wrk itself (rusage);
rounds of runs against several targets in a rotated order; wrk copied into a VPS.

The load generator is pinned to CLIENT_CPU, the servers to SERVER_CPU."""

from __future__ import annotations

import os
import re
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench import common
from bench.common import HOST_ENV, must, run, summary

SERVER_CPU = 0
CLIENT_CPU = 1
WRK_DIR = "/opt/wrk"  # inside a VPS: wrk, its libraries, its loader and a busybox for taskset

# --- wrk's output -------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def latency_ms(text: str) -> float:
    """A latency as wrk prints it ("812.00us", "1.20ms", "2.01s") in ms."""
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
            result[f"lat_p{q}_ms"] = latency_ms(m.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def wrk_args(url: str, seconds: int, conns: int) -> list[str]:
    return ["-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]


def warmup_argv(argv: list[str], seconds: int) -> list[str]:
    return [f"-d{seconds}s" if a.startswith("-d") and a.endswith("s") else a for a in argv]


# --- CPU time around a run ------------------------------------------------------------------------


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


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CONNTRACK = Path("/proc/sys/net/netfilter")
CONNTRACK_PAUSES: list[float] = []


def conntrack_guard(limit: float = 0.5, max_wait: float = 300.0) -> None:
    """Wait while the host's connection-tracking table is more than LIMIT full.

    The engine's firewall turns conntrack on for the host's network namespace, so every
    connection to the host side and the bare netns gets an entry that stays 120 s after it
    closes (connections to a VPS skip it: the bridge table's notrack rules, commits 16dcded
    and 8d0936a). busybox httpd
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


# --- rounds against several targets ------------------------------------------------------------


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
        common.log(f"  {what} round {i + 1}/{reps}: " + ", ".join(
            f"{t.label} {runs[t.label][-1]['rps']:.0f}/s" for t in targets))
    BACKGROUND[what] = quiet
    return {label: side_summary(samples) for label, samples in runs.items()}


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


# --- wrk inside a VPS -------------------------------------------------------------------------


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
        common.guest_write(engine, name, f"{WRK_DIR}/{fname}", path.read_bytes())
    done = engine.run(name, ["chmod", "755", *[f"{WRK_DIR}/{f}" for f in [*files, "busybox"]]])
    if done.returncode != 0:
        raise RuntimeError(f"chmod in {name}: {done.stderr.strip()}")
    loader = next(n for n in files if n.startswith("ld-linux"))
    return [f"{WRK_DIR}/busybox", "taskset", "-c", str(CLIENT_CPU),
            f"{WRK_DIR}/{loader}", "--library-path", WRK_DIR, f"{WRK_DIR}/wrk"]


def vps_runner(engine, name: str):
    """A runner for timed_wrk: ARGV through engine.run in the VPS NAME."""

    def runner(argv: list[str], timeout: float):
        return engine.run(name, argv, timeout=timeout)

    return runner
