"""Benchmark of the engine itself: lifecycle latency, a breakdown of start, throughput of
whole lifecycles, and density, for the busybox and the Debian/Apache templates.

Run as root from the repository root::

    .venv/bin/python bench/engine.py --quick   # make bench: 20 runs, 100 busybox, 100 Apache
    .venv/bin/python bench/engine.py --full    # make bench FULL=1: 50 runs, 1000 busybox
    .venv/bin/python bench/engine.py --smoke   # a few of each, to check the benchmark itself

Uses its own installation (see bench/common.py), prints JSON and Markdown tables, writes
bench/results/engine.json and updates bench/results/SUMMARY.md, and removes everything it
made at the end (also on SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.common import MB, log, md_table, ms, summary  # noqa: E402
from bench.report import fmt_bytes  # noqa: E402

TEMPLATE = "busybox"
APACHE = "debian"
HTTP_TIMEOUT = 30.0
# How often the latency runs try GET / until the first 200. Half the interval is the average
# measurement error it adds; the samples' poll_cpu_share says what share of one CPU the polling
# took meanwhile (the guest's boot rows come from the kernel's trace, so a boot slowed by it
# would show there).
POLL_INTERVAL = 0.0005
APACHE_HTTP_TIMEOUT = 120.0
# /proc/meminfo fields whose change per server says where a server's memory goes.
MEMINFO_FIELDS = ("MemAvailable", "MemFree", "Cached", "Buffers", "Shmem", "AnonPages", "Slab",
                  "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "Percpu", "VmallocUsed")
PROFILES = {
    # runs, busybox density, Apache runs, Apache density, throughput seconds
    "smoke": {"runs": 3, "density": 5, "apache_runs": 1, "apache_density": 2, "cycle_seconds": 3},
    "quick": {"runs": 20, "density": 100, "apache_runs": 5, "apache_density": 100, "cycle_seconds": 10},
    "full": {"runs": 50, "density": 1000, "apache_runs": 20, "apache_density": 100, "cycle_seconds": 30},
}

# Where start → first HTTP 200 goes, in the order things happen on the way; the rows add up to
# the total. The engine's rows end when the guest's init is exec'd; the guest's rows come from
# the kernel's exec and listen events (tracefs, see BootTrace).
ENGINE_PHASES = [
    ("clean_leftovers", "engine: clean leftovers of a previous run (`Engine._clean_leftovers`)"),
    ("cgroups.create", "engine: cgroup create + limits (`cgroups.create`)"),
    ("network.ensure_bridge", "engine: bridge check (`network.ensure_bridge`)"),
    ("firewall.protect", "engine: the port's firewall elements (`firewall.protect`)"),
    ("launch.setup", "engine: setup child: cgroup join, meanwhile the user namespace and the loop "
                     "mount; then idmapped template, overlay, namespaces, fork init"),
    ("launch.wire_network", "engine: veth + addresses + routes (`wire_network`; meanwhile init mounts "
                            "/proc, /sys, /dev, and the setup child puts the guest's guard in place)"),
    ("launch.record", "engine: write runtime.json, I/O limits (`record`)"),
    ("launch.exec", "the guard in place → go signal → the guest's init exec'd (caps, seccomp, execve)"),
    ("other", "engine: rest until then (lock, config and template reads, launch plan)"),
]
GUEST_PHASES = [
    ("guest.rcs", "guest: busybox init → rcS exec'd (reads inittab, forks ::sysinit)"),
    ("guest.runsvdir", "guest: rcS runs → runsvdir exec'd"),
    ("guest.runsv", "guest: runsvdir → runsv exec'd (scans /etc/service)"),
    ("guest.run", "guest: runsv → ./run exec'd (supervise/ set up)"),
    ("guest.httpd", "guest: ./run → httpd exec'd (the shell execs it)"),
    ("guest.listen", "guest: httpd → listening"),
    ("guest.answer", f"listening → first HTTP 200 at the client (polled every {POLL_INTERVAL * 1000:g} ms)"),
]
UNTRACED_GUEST = [("guest", "guest's boot, start returned → first HTTP 200 (no tracefs: not split)")]
# Exec'd programs of the busybox guest, in boot order, and the row that ends with each.
GUEST_EXECS = [("rcS", "guest.rcs"), ("runsvdir", "guest.runsvdir"), ("runsv", "guest.runsv"),
               ("run", "guest.run"), ("httpd", "guest.httpd")]


# --- phase timing (monkeypatching the engine in this process only) ----------------------


class PhaseTimer:
    """Accumulates ms per label while `current` is a dict (i.e. during a timed start)."""

    def __init__(self) -> None:
        self.current: dict[str, float] | None = None
        self.marks: dict[str, float] = {}  # time.monotonic() of "after_record", "launched"
        self._undo: list[tuple[object, str, object]] = []

    def add(self, label: str, ms: float) -> None:
        if self.current is not None:
            self.current[label] = self.current.get(label, 0.0) + ms

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, (time.monotonic() - t0) * 1000)

        return timed

    def patch(self, owner: object, attr: str, new: object) -> None:
        self._undo.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def install(self, engine) -> None:
        from vservers.engine import firewall, lifecycle, network
        from vservers.engine import launch as launch_mod

        self.patch(network, "ensure_bridge", self.wrap("network.ensure_bridge", network.ensure_bridge))
        self.patch(firewall, "protect", self.wrap("firewall.protect", firewall.protect))
        self.patch(engine.cgroups, "create", self.wrap("cgroups.create", engine.cgroups.create))
        self.patch(lifecycle.Engine, "status", self.wrap("status", lifecycle.Engine.status))
        # Private: start's clean-up of a previous run has no public function; start calls it
        # before launching, and the breakdown times it apart.
        self.patch(lifecycle.Engine, "_clean_leftovers",
                   self.wrap("clean_leftovers", lifecycle.Engine._clean_leftovers))
        original_launch = launch_mod.launch
        marks = self.marks

        def record_wrapper(record):
            def timed(launched):
                t0 = time.monotonic()
                try:
                    return record(launched)
                finally:
                    marks["after_record"] = time.monotonic()
                    self.add("launch.record", (marks["after_record"] - t0) * 1000)

            return timed

        def launch(plan, wire_network, record, forker=None):
            t0 = time.monotonic()
            wired: dict[str, float] = {}

            def wire(init_pid, *handles):
                wired["start"] = time.monotonic()
                try:
                    return wire_network(init_pid, *handles)
                finally:
                    self.add("launch.wire_network", (time.monotonic() - wired["start"]) * 1000)

            marks.clear()
            try:
                return original_launch(plan, wire, record_wrapper(record), forker)
            finally:
                end = marks["launched"] = time.monotonic()
                if "start" in wired:
                    self.add("launch.setup", (wired["start"] - t0) * 1000)
                if "after_record" in marks:
                    self.add("launch.exec", (end - marks["after_record"]) * 1000)
                self.add("launch", (end - t0) * 1000)

        self.patch(launch_mod, "launch", launch)  # lifecycle imports it at each start

    def uninstall(self) -> None:
        while self._undo:
            owner, attr, old = self._undo.pop()
            setattr(owner, attr, old)


# --- the guest's boot, seen by the kernel -------------------------------------------------


class BootTrace:
    """The kernel's exec and listen events of this benchmark's own processes and their children
    (a tracefs instance of its own, following forks from this process only), timestamped on
    CLOCK_MONOTONIC like time.monotonic(): the guest's boot, step by step, with no probe in it."""

    ROOT = Path("/sys/kernel/tracing")
    EVENTS = ("sched/sched_process_exec", "syscalls/sys_enter_listen")
    LINE = re.compile(r"-(\d+)\s+\[\d+\]\s+(?:\S+\s+)?(\d+\.\d+): (\w+)[:(]\s?(.*)$")

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.mounted = False

    def open(self) -> str | None:
        """Start tracing; None, or why the guest's boot cannot be split (then nothing is left)."""
        try:
            if not (self.ROOT / "instances").is_dir():
                done = common.run(["mount", "-t", "tracefs", "tracefs", str(self.ROOT)])
                if done.returncode != 0:
                    return f"no tracefs: {done.stderr.strip()}"
                self.mounted = True
            self.dir = self.ROOT / "instances" / f"vsbench-engine-{os.getpid()}"
            self.dir.mkdir()
            for name, value in (("trace_clock", "mono"), ("buffer_size_kb", "4096"), ("options/event-fork", "1"),
                                ("set_event_pid", str(os.getpid())),
                                *((f"events/{event}/enable", "1") for event in self.EVENTS),
                                ("tracing_on", "1")):
                (self.dir / name).write_text(value)
            return None
        except OSError as exc:
            self.close()
            return f"tracefs: {exc}"

    def clear(self) -> None:
        if self.dir is not None:
            (self.dir / "trace").write_text("")

    def events(self) -> list[tuple[float, int, str, str]]:
        """(time, pid, event, rest of the line) since the last clear()."""
        if self.dir is None:
            return []
        found = []
        for line in (self.dir / "trace").read_text().splitlines():
            m = self.LINE.search(line)
            if m:
                found.append((float(m.group(2)), int(m.group(1)), m.group(3), m.group(4)))
        return found

    def close(self) -> None:
        if self.dir is not None and self.dir.exists():
            try:
                (self.dir / "tracing_on").write_text("0")
            except OSError:
                pass
            self.dir.rmdir()  # tracefs removes the instance with its buffers and settings
        self.dir = None
        if self.mounted:
            common.run(["umount", str(self.ROOT)])
            self.mounted = False


def guest_marks(events: list[tuple[float, int, str, str]], init_pid: int) -> dict[str, float]:
    """When the guest's init was exec'd ("init"), then each of GUEST_EXECS, and when httpd
    listened ("listen"): the first of each after init's exec."""
    marks: dict[str, float] = {}
    httpd: set[int] = set()
    for when, pid, event, rest in sorted(events):
        if event == "sched_process_exec":
            filename = rest.split()[0].removeprefix("filename=")
            if pid == init_pid and "init" not in marks:
                marks["init"] = when
            elif "init" in marks:
                marks.setdefault(os.path.basename(filename), when)
                if os.path.basename(filename) == "httpd":
                    httpd.add(pid)
        elif event == "sys_listen" and pid in httpd:
            marks.setdefault("listen", when)
    return marks


def whole_path(phases: dict[str, float], marks: dict[str, float], guest: dict[str, float],
               t_start: float, t_return: float, answered: float) -> tuple[dict[str, float], dict[str, float]]:
    """The rows of start → first HTTP 200 (ENGINE_PHASES, then GUEST_PHASES or UNTRACED_GUEST),
    adding up to the total, and what the engine does meanwhile (off that path)."""
    path = {key: phases.get(key, 0.0) for key, _ in ENGINE_PHASES[:-2]}
    t_init = guest.get("init")
    steps = ["init", *(name for name, _ in GUEST_EXECS), "listen"]
    if t_init is not None and all(step in guest for step in steps):
        path["launch.exec"] = (t_init - marks["after_record"]) * 1000
        path["other"] = (t_init - t_start) * 1000 - sum(path.values())
        for (before, after), (key, _) in zip(zip(steps, steps[1:], strict=False), GUEST_PHASES[:-1], strict=True):
            path[key] = (guest[after] - guest[before]) * 1000
        path["guest.answer"] = (answered - guest["listen"]) * 1000
        meanwhile = {"init exec'd → start returned": (t_return - t_init) * 1000}
    else:  # no trace (or another template's boot): the guest's boot in one row
        path["launch.exec"] = (marks["launched"] - marks["after_record"]) * 1000
        path["other"] = (marks["launched"] - t_start) * 1000 - sum(path.values())
        path["guest"] = (answered - marks["launched"]) * 1000
        meanwhile = {}
    meanwhile["`Engine.status` after start"] = phases.get("status", 0.0)
    return {k: round(v, 3) for k, v in path.items()}, {k: round(v, 3) for k, v in meanwhile.items()}


# --- the measurements ---------------------------------------------------------------------


def one_lifecycle(engine, timer: PhaseTimer, name: str, addr: str, template: str = TEMPLATE,
                  http_timeout: float = HTTP_TIMEOUT, trace: BootTrace | None = None) -> dict:
    ip = addr.split("/")[0]
    common.check_route(ip)  # the bridge's route, there before any start: outside the timed path
    if trace is not None:
        trace.clear()  # outside the timed path too: emptying the trace buffers takes ~20 ms
    t0 = time.monotonic()
    engine.create(name, template, [addr])
    t1 = time.monotonic()
    timer.current = {}
    try:
        status = engine.start(name)
    finally:
        phases, timer.current = timer.current, None
    t2 = time.monotonic()
    cpu0 = time.process_time()
    answered = common.wait_http(ip, t2 + http_timeout, POLL_INTERVAL)
    poll_cpu_share = (time.process_time() - cpu0) / max(time.monotonic() - t2, 1e-9)
    if answered is None:
        raise RuntimeError(f"{name} ({ip}) did not answer HTTP within {http_timeout} s")
    guest = guest_marks(trace.events(), status.init_pid) if trace is not None else {}
    t3 = time.monotonic()
    engine.stop(name)
    t4 = time.monotonic()
    engine.delete(name)
    t5 = time.monotonic()
    path, meanwhile = whole_path(phases, timer.marks, guest, t1, t2, answered)
    return {
        "create_ms": ms(t1 - t0),
        "start_ms": ms(t2 - t1),
        "start_to_http_ms": ms(answered - t1),
        "create_start_to_http_ms": ms(answered - t0),
        "poll_cpu_share": round(poll_cpu_share, 3),
        "stop_ms": ms(t4 - t3),
        "delete_ms": ms(t5 - t4),
        "phases_ms": {k: round(v, 3) for k, v in phases.items()},
        "path_ms": path,
        "meanwhile_ms": meanwhile,
    }


def latency(engine, timer: PhaseTimer, runs: int, log, template: str = TEMPLATE,
            http_timeout: float = HTTP_TIMEOUT, trace: BootTrace | None = None) -> dict:
    log(f"latency ({template}): 1 warm-up + {runs} runs")
    from vservers.engine import network

    network.ensure_bridge(engine.config.bridge, engine.config.gateway4, engine.config.gateway6)
    warmup = one_lifecycle(engine, timer, f"lat-{template}-warmup", common.address(0), template, http_timeout,
                           trace)
    samples = []
    for i in range(runs):
        samples.append(one_lifecycle(engine, timer, f"lat-{template}{i}", common.address(1 + i % 8), template,
                                     http_timeout, trace))
        log(f"  run {i + 1}/{runs}: start {samples[-1]['start_ms']:.1f} ms, "
            f"to HTTP {samples[-1]['start_to_http_ms']:.1f} ms, stop {samples[-1]['stop_ms']:.1f} ms")
    keys = ["create_ms", "start_ms", "start_to_http_ms", "create_start_to_http_ms", "stop_ms", "delete_ms"]
    path_keys = list(samples[0]["path_ms"])
    meanwhile_keys = list(samples[0]["meanwhile_ms"])
    return {
        "template": template,
        "runs": runs,
        "warmup": warmup,
        "stats_ms": {k: summary([s[k] for s in samples]) for k in keys},
        "path_ms": {k: _stats([s["path_ms"].get(k, 0.0) for s in samples]) for k in path_keys},
        "meanwhile_ms": {k: _stats([s["meanwhile_ms"].get(k, 0.0) for s in samples]) for k in meanwhile_keys},
        "start_to_http_mean_ms": sum(s["start_to_http_ms"] for s in samples) / len(samples),
        "poll_cpu_share": summary([s["poll_cpu_share"] for s in samples])["median"],
        "samples": samples,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {**summary(values), "mean": sum(values) / len(values)}


def meminfo_all() -> dict[str, int]:
    """The MEMINFO_FIELDS in bytes, MemAvailable as the median of a few readings."""
    values = {field: common.meminfo(field) for field in MEMINFO_FIELDS if field != "MemAvailable"}
    values["MemAvailable"] = common.meminfo_sampled()
    return values


def density(engine, n: int, log, template: str = TEMPLATE, http_timeout: float = HTTP_TIMEOUT) -> dict:
    names = [f"dens-{template}{i}" for i in range(n)]
    addrs = {name: common.address(16 + i) for i, name in enumerate(names)}
    log(f"density ({template}): creating {n} servers")
    t0 = time.monotonic()
    for name in names:
        engine.create(name, template, [addrs[name]])
    create_all_s = time.monotonic() - t0
    os.sync()
    time.sleep(1.0)
    before = meminfo_all()
    mem_before = before["MemAvailable"]
    free_before = before["MemFree"]
    log(f"density: starting {n} servers")
    t0 = time.monotonic()
    start_errors = {}
    for name in names:
        try:
            engine.start(name)
        except Exception as exc:  # noqa: BLE001 - count it and go on
            start_errors[name] = str(exc)
    start_all_s = time.monotonic() - t0
    answered = {}
    deadline = time.monotonic() + http_timeout
    for name in names:
        if name in start_errors:
            continue
        ip = addrs[name].split("/")[0]
        common.check_route(ip)
        when = common.wait_http(ip, deadline)
        if when is not None:
            answered[name] = when
    all_http_s = (max(answered.values()) - t0) if answered else None
    time.sleep(2.0)  # settle
    after = meminfo_all()
    mem_after = after["MemAvailable"]
    free_after = after["MemFree"]
    log("density: measuring")
    per = []
    for name in names:
        if name in start_errors:
            continue
        st = engine.status(name, with_addresses=False)
        pids = engine.cgroups.procs(name)
        image = engine.config.server_dir(name) / "disk.img"
        per.append({
            "name": name,
            "pids": len(pids),
            "pss_bytes": common.pss_of(pids),
            "cgroup_memory_bytes": st.usage.memory_bytes,
            "disk_used_bytes": st.usage.disk_used_bytes,
            "image_allocated_bytes": image.stat().st_blocks * 512,
            "image_apparent_bytes": image.stat().st_size,
        })
    running = len(per) or 1
    log(f"density: stopping {n} servers with stop_many")
    t0 = time.monotonic()
    stop_errors = {k: str(v) for k, v in engine.stop_many(names).items() if v is not None}
    stop_all_s = time.monotonic() - t0
    t0 = time.monotonic()
    for name in names:
        engine.delete(name)
    delete_all_s = time.monotonic() - t0

    def mean(key: str) -> float:
        return sum(p[key] for p in per) / running

    return {
        "template": template,
        "servers": n,
        "meminfo_delta_per_server_bytes": {f: (after[f] - before[f]) / running for f in MEMINFO_FIELDS},
        "started": n - len(start_errors),
        "answered_http": len(answered),
        "answered_share": len(answered) / n,
        "start_errors": start_errors,
        "stop_errors": stop_errors,
        "create_all_s": round(create_all_s, 3),
        "start_all_s": round(start_all_s, 3),
        "start_all_to_http_s": round(all_http_s, 3) if all_http_s is not None else None,
        "stop_many_s": round(stop_all_s, 3),
        "delete_all_s": round(delete_all_s, 3),
        "mem_available_before_bytes": mem_before,
        "mem_available_after_bytes": mem_after,
        "mem_available_delta_per_server_bytes": (mem_before - mem_after) / running,
        "mem_free_delta_per_server_bytes": (free_before - free_after) / running,
        "pss_per_server_bytes": mean("pss_bytes"),
        "cgroup_memory_per_server_bytes": mean("cgroup_memory_bytes"),
        "disk_used_per_server_bytes": mean("disk_used_bytes"),
        "image_allocated_per_server_bytes": mean("image_allocated_bytes"),
        "image_apparent_bytes": per[0]["image_apparent_bytes"] if per else None,
        "processes_per_server": mean("pids"),
        "per_server": per,
    }


def _cycle_worker(index: int, seconds: float, results) -> None:
    """Create, start, stop and delete one server again and again for SECONDS; report the
    count and each cycle's time (runs in a process of its own)."""
    from vservers.engine import Engine, EngineConfig
    from vservers.engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

    prctl(PR_SET_CHILD_SUBREAPER, 1)  # the inits it starts are reparented here and reaped by stop
    engine = Engine(EngineConfig.from_env(common.BENCH_ENV))
    name, addr = f"cycle{index}", common.address(2000 + index)
    cycles: list[float] = []
    steps: dict[str, list[float]] = {"create": [], "start": [], "stop": [], "delete": []}
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            engine.create(name, TEMPLATE, [addr])
            t1 = time.monotonic()
            if engine.start(name).state != "running":
                raise RuntimeError("start did not leave it running")
            t2 = time.monotonic()
            engine.stop(name)
            t3 = time.monotonic()
            engine.delete(name)
        except Exception as exc:  # noqa: BLE001 - reported, and the loop ends
            errors.append(f"{name}: {exc}")
            break
        t4 = time.monotonic()
        cycles.append(t4 - t0)
        for step, took in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[step].append(took)
    results.put({"index": index, "cycles_s": cycles, "steps_s": steps, "errors": errors})


def throughput(workers: int, seconds: float, log) -> dict:
    """Whole lifecycles per second: WORKERS processes each cycling its own server."""
    import multiprocessing

    log(f"throughput: {workers} process(es) cycling create/start/stop/delete for {seconds:.0f} s")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    t0 = time.monotonic()
    procs = [ctx.Process(target=_cycle_worker, args=(i, seconds, queue)) for i in range(workers)]
    for proc in procs:
        proc.start()
    reports = [queue.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    wall = time.monotonic() - t0
    cycles = [c for r in reports for c in r["cycles_s"]]
    return {
        "workers": workers,
        "seconds": round(wall, 3),
        "cycles": len(cycles),
        "cycles_per_s": round(len(cycles) / wall, 2) if wall else 0.0,
        "cycle_ms": summary([ms(c) for c in cycles]),
        "steps_ms": {step: summary([ms(t) for r in reports for t in r["steps_s"][step]])
                     for step in ("create", "start", "stop", "delete")},
        "errors": [e for r in reports for e in r["errors"]],
    }


# --- report -------------------------------------------------------------------------------


LATENCY_LABELS = {
    "create_ms": "create (config + sparse ext4 image)",
    "start_ms": "start (returns when init runs)",
    "start_to_http_ms": "start → first HTTP 200",
    "create_start_to_http_ms": "create + start → first HTTP 200",
    "stop_ms": "stop",
    "delete_ms": "delete (stopped server)",
}
TEMPLATE_TITLES = {TEMPLATE: "busybox (busybox httpd)", APACHE: "Debian 12 with Apache"}


def _latency_md(lat: dict) -> list[str]:
    rows = [[label, f"{lat['stats_ms'][k]['median']:.1f}", f"{lat['stats_ms'][k]['p95']:.1f}"]
            for k, label in LATENCY_LABELS.items()]
    return ["", f"### Latency, {TEMPLATE_TITLES[lat['template']]} ({lat['runs']} runs after 1 warm-up; "
            f"HTTP polled every {POLL_INTERVAL * 1000:g} ms, which took {lat['poll_cpu_share']:.0%} of one CPU "
            "while it waited)", "", md_table(["operation", "median ms", "p95 ms"], rows)]


def _ratio(ours: float, vm: float) -> str:
    return f"{vm / ours:.0f}×" if ours > 0 else "—"


def _density_md(den: dict) -> list[str]:
    n = den["servers"]
    vm_ram, vm_disk = common.SLIDES_VM_RAM_BYTES, common.SLIDES_VM_DISK_BYTES
    ram = den["mem_available_delta_per_server_bytes"]
    img = den["image_allocated_per_server_bytes"]
    rows = [
        ["host memory (MemAvailable drop)", fmt_bytes(ram), "150 MB", _ratio(ram, vm_ram)],
        ["PSS of the server's processes", fmt_bytes(den["pss_per_server_bytes"]), "", ""],
        ["cgroup memory (charged to it)", fmt_bytes(den["cgroup_memory_per_server_bytes"]), "", ""],
        ["disk allocated (sparse image blocks)", fmt_bytes(img), "700 MB", _ratio(img, vm_disk)],
        ["disk used inside (its upper layer's filesystem)", fmt_bytes(den["disk_used_per_server_bytes"]), "", ""],
        ["processes", f"{den['processes_per_server']:.1f}", "", ""],
    ]
    out = ["", f"### Density: {n} servers of {TEMPLATE_TITLES[den['template']]} at once", "",
           md_table(["per server", "ours", "full VM (slides, Apache)", "VM / ours"], rows)]
    http_s = den["start_all_to_http_s"]
    rows = [
        ["create all", f"{den['create_all_s']:.2f} s"],
        ["start all (sequential `start`)", f"{den['start_all_s']:.2f} s"],
        ["start of the first → all answer HTTP", f"{http_s:.2f} s" if http_s is not None else "—"],
        ["answering HTTP", f"{den['answered_http']}/{n} ({den['answered_share']:.0%})"],
        ["stop all (`stop_many`)", f"{den['stop_many_s']:.2f} s"],
        ["delete all", f"{den['delete_all_s']:.2f} s"],
    ]
    out += ["", md_table(["all servers", "value"], rows)]
    delta = den.get("meminfo_delta_per_server_bytes")
    if delta:
        rows = [[field, f"{delta[field] / 1000:+.0f} KB"] for field in MEMINFO_FIELDS]
        out += ["", "Where the host memory went (change of `/proc/meminfo` per server, before → after "
                "starting all):", "", md_table(["field", "per server"], rows)]
    return out


PATH_LABELS = dict(ENGINE_PHASES + GUEST_PHASES + UNTRACED_GUEST)


def _path_md(lat: dict, trace_note: str | None) -> list[str]:
    """The table of where start → first HTTP 200 goes: rows in the order they happen."""
    path = lat["path_ms"]
    rows = [[PATH_LABELS[k], f"{v['median']:.2f}", f"{v['mean']:.2f}", f"{v['p95']:.2f}"] for k, v in path.items()]
    total = lat["stats_ms"]["start_to_http_ms"]
    rows.append(["**start → first HTTP 200**", f"{total['median']:.2f}", f"{lat['start_to_http_mean_ms']:.2f}",
                 f"{total['p95']:.2f}"])
    out = ["", f"### Where start → first HTTP 200 goes (busybox; {lat['runs']} runs)", "",
           md_table(["step (in the order they happen)", "median ms", "mean ms", "p95 ms"], rows), "",
           f"The means add up to the total's mean ({sum(v['mean'] for v in path.values()):.2f} ms); medians "
           "do not add up. Engine rows are timed in the engine; the guest's rows from the kernel's exec and "
           "listen events (a tracefs instance following this benchmark's own processes). "
           + (f"Not split this run: {trace_note}." if trace_note else "")]
    meanwhile = lat.get("meanwhile_ms") or {}
    if meanwhile:
        rows = [[k, f"{v['median']:.2f}", f"{v['p95']:.2f}"] for k, v in meanwhile.items()]
        rows.append(["`Engine.start` returned (start total)", f"{lat['stats_ms']['start_ms']['median']:.2f}",
                     f"{lat['stats_ms']['start_ms']['p95']:.2f}"])
        out += ["", "Off that path, while the guest boots:", "", md_table(["the engine", "median ms", "p95 ms"], rows)]
    return out


def markdown(result: dict) -> str:
    info = result["host"]
    out = [
        "## Engine: lifecycle latency, throughput and density",
        "",
        common.host_line(info) + f", "
        f"commit {info['git_commit']}; `bench/engine.py {' '.join(result['argv'])}`. "
        f"Templates built in: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["template_build_s"].items()) + ".",
    ]
    lat = result.get("latency")
    if lat:
        out += _latency_md(lat)
        out += _path_md(lat, result.get("boot_trace"))
    for tp in result.get("throughput", []):
        out += ["", f"### Throughput: create + start + stop + delete, {tp['workers']} at a time", "",
                md_table(["cycles", "wall s", "cycles/s", "cycle median ms", "cycle p95 ms", "errors"],
                         [[tp["cycles"], f"{tp['seconds']:.1f}", f"{tp['cycles_per_s']:.1f}",
                           f"{tp['cycle_ms']['median']:.1f}", f"{tp['cycle_ms']['p95']:.1f}",
                           len(tp["errors"])]])]
    if result.get("density"):
        out += _density_md(result["density"])
    if result.get("apache_latency"):
        out += _latency_md(result["apache_latency"])
    if result.get("apache_density"):
        out += _density_md(result["apache_density"])
    out += ["", "Full-VM figures are the project's slides (one VM running an Apache web server). A page "
            "of the shared template is charged to the memory cgroup of the first server that touches "
            "it, so cgroup memory per server is an average over uneven charges; MemAvailable counts "
            "everything, kernel objects included, once."]
    plots = result.get("plots") or []
    if plots:
        out += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


def plot(result: dict) -> list[str]:
    """PNG plots next to the results; their paths."""
    plt = report.pyplot()
    paths = []
    lat = result.get("latency")
    if lat:
        fig, ax = plt.subplots(figsize=(7, 4))
        keys = ["start_ms", "start_to_http_ms", "create_start_to_http_ms", "stop_ms"]
        data = [[s[k] for s in lat["samples"]] for k in keys]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), ["start", "start→HTTP", "create+start→HTTP", "stop"])
        ax.set_ylabel("ms")
        ax.set_title(f"busybox VPS lifecycle latency ({lat['runs']} runs)")
        ax.grid(axis="y", alpha=0.3)
        paths.append(_save(fig, "engine-latency.png"))
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = list(lat["path_ms"])
        values = [lat["path_ms"][k]["mean"] for k in labels]
        ax.barh(labels[::-1], values[::-1])
        ax.set_xlabel("mean ms")
        ax.set_title("where start → first HTTP 200 goes (busybox)")
        fig.tight_layout()
        paths.append(_save(fig, "engine-start-phases.png"))
    dens = [d for d in (result.get("density"), result.get("apache_density")) if d]
    if dens:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [TEMPLATE_TITLES[d["template"]] for d in dens] + ["full VM (slides)"]
        values = [d["mem_available_delta_per_server_bytes"] / MB for d in dens] + [common.SLIDES_VM_RAM_BYTES / MB]
        ax.bar(names, values, color=["tab:blue"] * len(dens) + ["tab:gray"])
        ax.set_yscale("log")
        ax.set_ylabel("host memory per server, MB (log)")
        ax.set_title("memory per server: MemAvailable drop")
        for i, v in enumerate(values):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom")
        paths.append(_save(fig, "engine-memory.png"))
    return paths


def _save(fig, name: str) -> str:
    return str(report.save(fig, common.RESULTS_DIR / name, dpi=100))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    for profile in PROFILES:
        size.add_argument(f"--{profile}", dest="profile", action="store_const", const=profile,
                          help=f"sizes: {PROFILES[profile]}")
    parser.add_argument("--runs", type=int, help="lifecycle runs for the latency figures")
    parser.add_argument("--density", type=int, help="busybox servers started at once")
    parser.add_argument("--apache-density", type=int, help="Apache servers started at once (0: no Debian)")
    parser.add_argument("--workers", type=int, default=4, help="processes cycling servers for throughput")
    parser.add_argument("--name", default="engine", help="results file name (default: engine)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the busybox latency and where start → first HTTP 200 goes; prints the "
                             "tables and writes no results file")
    args = parser.parse_args(argv)
    sizes = dict(PROFILES[args.profile or "quick"])
    for key in ("runs", "density", "apache_density"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if sizes["runs"] < 1 or sizes["density"] < 0 or sizes["apache_density"] < 0:
        parser.error("--runs must be >= 1, densities >= 0")
    if max(sizes["density"], sizes["apache_density"]) + 16 > 1900:
        parser.error("density too large for the benchmark address plan (< 1,900)")
    if os.geteuid() != 0:
        parser.error("must run as root")

    env = common.engine_env()
    from vservers.engine import Engine, EngineConfig, templates
    from vservers.engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

    prctl(PR_SET_CHILD_SUBREAPER, 1)  # inits of stopped servers are reaped here, not left as zombies
    config = EngineConfig.from_env(env)
    engine = Engine(config)
    timer = PhaseTimer()
    result: dict = {"host": common.host_info(), "argv": sys.argv[1:] if argv is None else argv,
                    "sizes": sizes, "template_build_s": {}}
    common.install_signal_handlers()
    ok = False
    try:
        common.clean_earlier_run(engine, log)
        t0 = time.monotonic()
        templates.build(config, TEMPLATE)
        result["template_build_s"][TEMPLATE] = round(time.monotonic() - t0, 3)
        timer.install(engine)
        trace = BootTrace()
        result["boot_trace"] = trace.open()
        try:
            result["latency"] = latency(engine, timer, sizes["runs"], log, trace=trace)
        finally:
            trace.close()  # before throughput forks its workers: they are not followed
        timer.uninstall()
        if not args.latency_only:
            result["throughput"] = [throughput(1, sizes["cycle_seconds"], log),
                                    throughput(args.workers, sizes["cycle_seconds"], log)]
        if sizes["density"] and not args.latency_only:
            result["density"] = density(engine, sizes["density"], log)
        if sizes["apache_density"] and not args.latency_only:
            log("building the debian template (debootstrap)")
            t0 = time.monotonic()
            templates.build(config, APACHE)
            result["template_build_s"][APACHE] = round(time.monotonic() - t0, 3)
            result["apache_latency"] = latency(engine, timer, sizes["apache_runs"], log, APACHE,
                                               APACHE_HTTP_TIMEOUT)
            result["apache_density"] = density(engine, sizes["apache_density"], log, APACHE, APACHE_HTTP_TIMEOUT)
        ok = True
    finally:
        timer.uninstall()
        log("cleaning up")
        result["leftovers"] = common.cleanup_installation(engine, log)
        if result["leftovers"]:
            log("LEFT BEHIND: " + "; ".join(result["leftovers"]))
    if not ok:
        return 1
    if args.latency_only:  # a quick look, not the project's figures: printed only
        print(markdown(result))
        return 0 if not result["leftovers"] else 2
    result["plots"] = plot(result)
    md = markdown(result)
    report.show(result, md)
    path = common.write_results(args.name, result, md)
    log(f"wrote {path} and {path.parent / 'SUMMARY.md'}")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
