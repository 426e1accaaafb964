"""Benchmark of the engine itself: lifecycle latency, a breakdown of start, and density.

Run as root from the repository root::

    .venv/bin/python bench/engine.py --runs 20 --density 100
    .venv/bin/python bench/engine.py --quick        # a smoke run: 3 runs, 5 servers

Uses its own installation (see bench/common.py), prints JSON and Markdown tables, writes
bench/results/engine.json and updates bench/results/SUMMARY.md, and removes everything it
made at the end (also on SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import MB, md_table, summary  # noqa: E402

TEMPLATE = "busybox"
HTTP_TIMEOUT = 30.0

START_PHASES = [
    ("clean_leftovers", "clean leftovers of a previous run (`Engine._clean_leftovers`)"),
    ("cgroups.create", "cgroup create + limits (`cgroups.create`)"),
    ("network.ensure_bridge", "bridge check (`network.ensure_bridge`)"),
    ("userns.create", "user namespace (`userns.create`)"),
    ("launch.setup", "setup child: loop mount, idmapped template, overlay, namespaces, fork init"),
    ("launch.wire_network", "veth + addresses + routes (`wire_network` callback)"),
    ("launch.record", "write runtime.json (`record` callback)"),
    ("launch.exec", "go signal until init has exec'd"),
    ("status", "`Engine.status` after start"),
    ("other", "rest: lock, config read, template lookup"),
]


# --- phase timing (monkeypatching the engine in this process only) ----------------------


class PhaseTimer:
    """Accumulates ms per label while `current` is a dict (i.e. during a timed start)."""

    def __init__(self) -> None:
        self.current: dict[str, float] | None = None
        self._undo: list[tuple[object, str, object]] = []

    def add(self, label: str, ms: float) -> None:
        if self.current is not None:
            self.current[label] = self.current.get(label, 0.0) + ms

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, (time.perf_counter() - t0) * 1000)

        return timed

    def patch(self, owner: object, attr: str, new: object) -> None:
        self._undo.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def install(self, engine) -> None:
        from vservers.engine import launch as launch_mod
        from vservers.engine import lifecycle, network, userns

        self.patch(userns, "create", self.wrap("userns.create", userns.create))
        self.patch(network, "ensure_bridge", self.wrap("network.ensure_bridge", network.ensure_bridge))
        self.patch(engine.cgroups, "create", self.wrap("cgroups.create", engine.cgroups.create))
        self.patch(lifecycle.Engine, "status", self.wrap("status", lifecycle.Engine.status))
        self.patch(lifecycle.Engine, "_clean_leftovers",
                   self.wrap("clean_leftovers", lifecycle.Engine._clean_leftovers))
        original_launch = launch_mod.launch
        marks: dict[str, float] = {}

        def record_wrapper(record):
            def timed(launched):
                t0 = time.perf_counter()
                try:
                    return record(launched)
                finally:
                    marks["after_record"] = time.perf_counter()
                    self.add("launch.record", (marks["after_record"] - t0) * 1000)

            return timed

        def launch(plan, userns_fd, wire_network, record):
            t0 = time.perf_counter()
            wired: dict[str, float] = {}

            def wire(init_pid):
                wired["start"] = time.perf_counter()
                try:
                    return wire_network(init_pid)
                finally:
                    self.add("launch.wire_network", (time.perf_counter() - wired["start"]) * 1000)

            marks.clear()
            try:
                return original_launch(plan, userns_fd, wire, record_wrapper(record))
            finally:
                end = time.perf_counter()
                if "start" in wired:
                    self.add("launch.setup", (wired["start"] - t0) * 1000)
                if "after_record" in marks:
                    self.add("launch.exec", (end - marks["after_record"]) * 1000)
                self.add("launch", (end - t0) * 1000)

        self.patch(launch_mod, "launch", launch)
        self.patch(lifecycle, "launch", launch)  # lifecycle imported the name itself

    def uninstall(self) -> None:
        while self._undo:
            owner, attr, old = self._undo.pop()
            setattr(owner, attr, old)


# --- the measurements ---------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def one_lifecycle(engine, timer: PhaseTimer, name: str, addr: str) -> dict:
    ip = addr.split("/")[0]
    t0 = time.monotonic()
    engine.create(name, TEMPLATE, [addr])
    t1 = time.monotonic()
    timer.current = {}
    try:
        engine.start(name)
    finally:
        phases, timer.current = timer.current, None
    t2 = time.monotonic()
    common.check_route(ip)
    answered = common.wait_http(ip, t2 + HTTP_TIMEOUT)
    if answered is None:
        raise RuntimeError(f"{name} ({ip}) did not answer HTTP within {HTTP_TIMEOUT} s")
    t3 = time.monotonic()
    engine.stop(name)
    t4 = time.monotonic()
    engine.delete(name)
    t5 = time.monotonic()
    start_ms = ms(t2 - t1)
    known = sum(v for k, v in phases.items() if k != "launch" and not k.startswith("launch."))
    phases["other"] = max(0.0, start_ms - known - phases.get("launch", 0.0))
    return {
        "create_ms": ms(t1 - t0),
        "start_ms": start_ms,
        "start_to_http_ms": ms(answered - t1),
        "create_start_to_http_ms": ms(answered - t0),
        "stop_ms": ms(t4 - t3),
        "delete_ms": ms(t5 - t4),
        "phases_ms": {k: round(v, 3) for k, v in phases.items()},
    }


def latency(engine, timer: PhaseTimer, runs: int, log) -> dict:
    log(f"latency: 1 warm-up + {runs} runs")
    warmup = one_lifecycle(engine, timer, "lat-warmup", common.address(0))
    samples = []
    for i in range(runs):
        samples.append(one_lifecycle(engine, timer, f"lat{i}", common.address(1 + i % 8)))
        log(f"  run {i + 1}/{runs}: start {samples[-1]['start_ms']:.1f} ms, "
            f"to HTTP {samples[-1]['start_to_http_ms']:.1f} ms, stop {samples[-1]['stop_ms']:.1f} ms")
    keys = ["create_ms", "start_ms", "start_to_http_ms", "create_start_to_http_ms", "stop_ms", "delete_ms"]
    phase_keys = [k for k, _ in START_PHASES] + ["launch"]
    return {
        "runs": runs,
        "warmup": warmup,
        "stats_ms": {k: summary([s[k] for s in samples]) for k in keys},
        "phases_ms": {k: summary([s["phases_ms"].get(k, 0.0) for s in samples]) for k in phase_keys},
        "samples": samples,
    }


def pss_of(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return total


def density(engine, n: int, log) -> dict:
    names = [f"dens{i}" for i in range(n)]
    addrs = {name: common.address(16 + i) for i, name in enumerate(names)}
    log(f"density: creating {n} servers")
    t0 = time.monotonic()
    for name in names:
        engine.create(name, TEMPLATE, [addrs[name]])
    create_all_s = time.monotonic() - t0
    os.sync()
    time.sleep(1.0)
    mem_before = common.meminfo_sampled()
    free_before = common.meminfo("MemFree")
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
    deadline = time.monotonic() + HTTP_TIMEOUT
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
    mem_after = common.meminfo_sampled()
    free_after = common.meminfo("MemFree")
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
            "pss_bytes": pss_of(pids),
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
        "servers": n,
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


# --- report -------------------------------------------------------------------------------


def fmt_bytes(value: float) -> str:
    if value >= MB:
        return f"{value / MB:.2f} MB"
    return f"{value / 1000:.0f} KB"


def markdown(result: dict) -> str:
    info = result["host"]
    out = [
        "## Engine: lifecycle latency and density",
        "",
        f"{info['date']}, kernel {info['kernel']}, {info['cpus']} CPUs, cgroup {info['cgroup']}, "
        f"commit {info['git_commit']}; `bench/engine.py {' '.join(result['argv'])}`. "
        f"busybox template (built in {result['template_build_s']:.2f} s).",
    ]
    lat = result.get("latency")
    if lat:
        labels = {
            "create_ms": "create (config + sparse ext4 image)",
            "start_ms": "start (returns when init runs)",
            "start_to_http_ms": "start → first HTTP 200",
            "create_start_to_http_ms": "create + start → first HTTP 200",
            "stop_ms": "stop",
            "delete_ms": "delete (stopped server)",
        }
        rows = [[label, f"{lat['stats_ms'][k]['median']:.1f}", f"{lat['stats_ms'][k]['p95']:.1f}"]
                for k, label in labels.items()]
        out += ["", f"### Latency ({lat['runs']} runs after 1 warm-up; HTTP polled every 2 ms)", "",
                md_table(["operation", "median ms", "p95 ms"], rows)]
        rows = [[label, f"{lat['phases_ms'][k]['median']:.2f}", f"{lat['phases_ms'][k]['p95']:.2f}"]
                for k, label in START_PHASES]
        rows.append(["**start total**", f"{lat['stats_ms']['start_ms']['median']:.2f}",
                     f"{lat['stats_ms']['start_ms']['p95']:.2f}"])
        out += ["", "### Where start spends its time", "",
                md_table(["phase", "median ms", "p95 ms"], rows)]
    den = result.get("density")
    if den:
        n = den["servers"]
        vm_ram, vm_disk = common.SLIDES_VM_RAM_BYTES, common.SLIDES_VM_DISK_BYTES
        ram = den["mem_available_delta_per_server_bytes"]
        img = den["image_allocated_per_server_bytes"]

        def ratio(ours: float, vm: float) -> str:
            return f"{vm / ours:.0f}×" if ours > 0 else "—"

        rows = [
            ["host memory (MemAvailable drop)", fmt_bytes(ram), "150 MB", ratio(ram, vm_ram)],
            ["PSS of the server's processes", fmt_bytes(den["pss_per_server_bytes"]), "", ""],
            ["cgroup memory", fmt_bytes(den["cgroup_memory_per_server_bytes"]), "", ""],
            ["disk allocated (sparse image blocks)", fmt_bytes(img), "700 MB", ratio(img, vm_disk)],
            ["disk used inside (upper filesystem)", fmt_bytes(den["disk_used_per_server_bytes"]), "", ""],
        ]
        out += ["", f"### Density: {n} busybox servers at once", "",
                md_table(["per server", "ours (busybox VPS)", "full VM (slides, Apache)", "VM / ours"], rows)]
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
        out += ["", "Full-VM figures are the project's slides (one VM running an Apache web server); ours "
                "run busybox httpd. The like-for-like Apache comparison, LXC and HTTP overhead are not "
                "in this part."]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="lifecycle runs for the latency figures")
    parser.add_argument("--density", type=int, default=100, help="servers started at once")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 runs, 5 servers")
    parser.add_argument("--name", default="engine", help="results file name (default: engine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.density = 3, 5
    if args.runs < 1 or args.density < 0:
        parser.error("--runs must be >= 1 and --density >= 0")
    if args.density + 16 > common.NETWORK.num_addresses - 257:
        parser.error("--density too large for the benchmark address range")
    if os.geteuid() != 0:
        parser.error("must run as root")

    env = common.engine_env()
    from vservers.engine import Engine, EngineConfig, templates

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    config = EngineConfig.from_env(env)
    engine = Engine(config)
    timer = PhaseTimer()
    result: dict = {"host": common.host_info(), "argv": sys.argv[1:] if argv is None else argv}
    common.install_signal_handlers()
    ok = False
    try:
        if config.root.exists():
            log(f"{config.root} exists from an earlier run: cleaning it first")
            left = common.cleanup_installation(engine, log)
            if left:
                raise RuntimeError(f"could not clean the earlier run: {left}")
            common.install_signal_handlers()
        t0 = time.monotonic()
        templates.build(config, TEMPLATE)
        result["template_build_s"] = round(time.monotonic() - t0, 3)
        timer.install(engine)
        result["latency"] = latency(engine, timer, args.runs, log)
        timer.uninstall()
        if args.density:
            result["density"] = density(engine, args.density, log)
        ok = True
    finally:
        timer.uninstall()
        log("cleaning up")
        result["leftovers"] = common.cleanup_installation(engine, log)
        if result["leftovers"]:
            log("LEFT BEHIND: " + "; ".join(result["leftovers"]))
    if not ok:
        return 1
    md = markdown(result)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    print()
    print(md)
    path = common.write_results(args.name, result, md)
    log(f"wrote {path} and {path.parent / 'SUMMARY.md'}")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
