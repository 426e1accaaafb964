"""Benchmark of the panel: list pages with 1,000 servers and 10,000 operations in the
database, operations per second through the queue with one worker, and approval → HTTP 200.

Run as root from the repository root::

    .venv/bin/python bench/panel.py --quick     # 20 cycles, 20 requests per page (about 1.5 minutes)
    .venv/bin/python bench/panel.py --full      # 100 cycles, 50 page requests, also 3,000 servers
    .venv/bin/python bench/panel.py --smoke     # every step once or twice

Everything is its own: a temporary directory with a SQLite database (migrated), a private
redis-server on a Unix socket, one real worker process (`manage.py nodeworker default`, as
scripts/run-panel starts it), a gunicorn on 127.0.0.1 for the page timings over HTTP, and the
engine installation bench/common.PANEL_ENV (bridge vsbenchpn0, 198.19.216.1/21; the panel's
pool hands out 198.19.217.0 upwards). Prints JSON and Markdown, writes bench/results/panel.json,
bench/results/panel-*.png and its section of bench/results/SUMMARY.md, and removes everything
it made at the end (also on SIGINT/SIGTERM).

This file runs it: the processes it starts, the cycles through the queue, approval → HTTP,
cleanup. Beside it: panel_world.py (installation, database, crowd, a cycle's steps),
panel_pages.py (the list pages), panel_worker.py (the worker's timers and profile) and
panel_report.py (analysis, tables, plots).
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.common import ms, summary  # noqa: E402
from bench.panel_pages import rows_split, start_gunicorn, time_pages, time_pages_gunicorn  # noqa: E402
from bench.panel_report import analyse_http, analyse_phase, findings, markdown, plots, strip_samples  # noqa: E402
from bench.panel_worker import profile_worker, read_worker_timings, worker_child  # noqa: E402
from bench.panel_world import (  # noqa: E402
    BRIDGE,
    CROWD_NETWORK,
    ENV,
    FIRST_GUEST,
    HTTP_TIMEOUT,
    NETWORK,
    OP_FIELDS,
    OP_TIMEOUT,
    OPS_PER_SERVER,
    POLL,
    POLL_MANY,
    REUSE_TIMEOUT,
    STEPS,
    TARGET_SCALE,
    TEMPLATE,
    UID_NOTE,
    add_rq_times,
    fill_crowd,
    log,
    make_world,
    new_server,
    op_record,
    setup_django,
    submit,
    wait_op,
)
from bench.procs import reap_zombies, session_members, stop_process, tail  # noqa: E402

REPO = common.REPO
LOCK_FILE = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "vservers-bench-panel.lock"
MODES = {
    "smoke": {"scales": [10, 1000], "reps": 5, "small_reps": 3, "gunicorn_reps": 5, "profile_reps": 2,
              "cycles": 3, "inflight": 3, "http_runs": 2, "profile_cycles": 1, "workers": 2},
    "quick": {"scales": [10, 1000], "reps": 20, "small_reps": 10, "gunicorn_reps": 10, "profile_reps": 3,
              "cycles": 20, "inflight": 20, "http_runs": 5, "profile_cycles": 1, "workers": 4},
    "full": {"scales": [10, 1000, 3000], "reps": 50, "small_reps": 20, "gunicorn_reps": 50, "profile_reps": 10,
             "cycles": 100, "inflight": 100, "http_runs": 20, "profile_cycles": 2, "workers": 4},
}


# --- processes we start ---------------------------------------------------------------------


def start_redis(ctx) -> None:
    import redis

    sock = ctx.tmp / "redis.sock"
    (ctx.tmp / "redis").mkdir()
    ctx.redis_proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(ctx.tmp / "redis"), "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=open(ctx.tmp / "redis.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    ctx.redis_url = f"unix://{sock}?db=0"
    client = redis.Redis.from_url(ctx.redis_url, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (redis.ConnectionError, FileNotFoundError):
            if ctx.redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not come up") from None
            time.sleep(0.05)
    client.close()


def start_worker(ctx) -> None:
    ctx.worker_timings = ctx.tmp / "worker-timings.jsonl"
    ctx.worker_log = ctx.tmp / "worker.log"
    ctx.worker_proc = spawn_worker(ctx, ctx.worker_log)
    wait_for_workers(ctx, 1, [ctx.worker_proc])


def spawn_worker(ctx, log_path: Path) -> subprocess.Popen:
    """A worker process as `make run` starts it (manage.py nodeworker), with the timers."""
    # One process each (the bench starts as many as it measures, each with its timers), as
    # a node's `nodeworker` group runs them.
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-child", str(ctx.worker_timings),
           "nodeworker", "--processes", "1", "default"]
    return subprocess.Popen(cmd, cwd=REPO, env=ctx.child_env, stdout=open(log_path, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_workers(ctx, count: int, procs: list[subprocess.Popen]) -> None:
    """Until COUNT workers have registered with Redis."""
    from django_rq import get_connection
    from rq import Worker

    connection = get_connection("default")
    deadline = time.monotonic() + 60
    while len(Worker.all(connection=connection)) < count:
        if any(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
            raise RuntimeError("a worker did not start:\n" + tail(ctx.worker_log))
        time.sleep(0.05)


def run_with_more_workers(ctx, workers: int, k: int) -> dict:
    """K cycles all in flight with WORKERS worker processes on the queue (the first one and
    WORKERS - 1 more; the node's reconcile job has one id, whichever of them queues it)."""
    ctx.extra_workers = [spawn_worker(ctx, ctx.tmp / f"worker-{i}.log") for i in range(2, workers + 1)]
    try:
        wait_for_workers(ctx, workers, [ctx.worker_proc, *ctx.extra_workers])
        wait_start_jobs_done()
        phase = run_cycles(ctx, "many", k, k)
    finally:
        stop_extra_workers(ctx)
    phase["workers"] = workers
    return phase


def wait_start_jobs_done() -> None:
    """Until the jobs a worker's watch queues when it starts (the node's reconcile, its usage
    sampling, its backup pass) have run: with the bench's 1,000 crowd rows the reconcile takes
    about 200 ms, once per start and then every 30 s, which would otherwise land inside the
    phase measured right after the workers started."""
    from rq.registry import StartedJobRegistry

    from vservers.queues import get_queue

    queue = get_queue("default")
    started = StartedJobRegistry(queue=queue)
    time.sleep(1.5)  # the new watches' first tick (every second) has queued them
    deadline, quiet = time.monotonic() + 30, 0
    while quiet < 3 and time.monotonic() < deadline:
        quiet = quiet + 1 if len(queue) == 0 and started.count == 0 else 0
        time.sleep(0.05)


def stop_extra_workers(ctx) -> None:
    for i, proc in enumerate(getattr(ctx, "extra_workers", [])):
        note = stop_process(proc, f"worker {i + 2}", 60)
        if note:
            ctx.notes.append(note)
    ctx.extra_workers = []


# --- operations through the queue ---------------------------------------------------------


def run_cycles(ctx, label: str, k: int, concurrency: int, nodes: list | None = None) -> dict:
    """K cycles (request + approval → provision, stop, delete), at most CONCURRENCY at once;
    each next step is asked as soon as the bench sees the previous one finished (it looks at
    the rows every POLL seconds, POLL_MANY with several in flight). Cycle i is approved on
    NODES[i % len(NODES)] (default: ctx.node)."""
    from vservers.actions import ActionRefused
    from vservers.models import FINISHED, Operation

    todo = list(range(k))
    active: dict[int, tuple[SimpleNamespace, float]] = {}
    cycles, ops = [], []
    cpu0 = cpu_snapshot(ctx)
    t0 = time.monotonic()

    def ask(cycle: SimpleNamespace) -> None:
        try:
            op = submit(ctx, cycle.server, STEPS[cycle.step], node=cycle.node)
        except ActionRefused as exc:
            cycle.errors.append(f"{STEPS[cycle.step]} refused: {exc}")
            cycle.end = time.monotonic() - t0
            cycles.append(cycle)
            return
        active[op.pk] = (cycle, time.monotonic())

    while todo or active:
        while todo and len(active) < concurrency:
            i = todo.pop(0)
            cycle = SimpleNamespace(index=i, step=0, begin=time.monotonic() - t0, end=None, errors=[],
                                    node=nodes[i % len(nodes)] if nodes else None)
            cycle.server = new_server(ctx, f"{label}{i}")
            ask(cycle)
        rows = list(Operation.objects.filter(pk__in=list(active), status__in=list(FINISHED)).values(*OP_FIELDS))
        now = time.monotonic()
        for row in rows:
            cycle, submitted = active.pop(row["pk"])
            ops.append(op_record(row, cycle.index, submitted, now, t0))
            if row["status"] != "succeeded":
                cycle.errors.append(f"{row['kind']} failed: {row['error'][:200]}")
                step = 2 if cycle.step < 2 else 3  # after a failure: delete, then give up
            else:
                step = cycle.step + 1
            if step >= len(STEPS):
                cycle.end = now - t0
                cycles.append(cycle)
                continue
            cycle.step = step
            ask(cycle)
        for cycle, submitted in active.values():
            if now - submitted > OP_TIMEOUT:
                raise RuntimeError(f"{label}{cycle.index}: {STEPS[cycle.step]} did not finish in {OP_TIMEOUT:.0f} s")
        if not rows:
            # With many in flight the worker has the next job anyway: look less often, so the
            # bench takes less CPU from the worker on this 2-core machine.
            time.sleep(POLL if concurrency == 1 else POLL_MANY)
    failed = [c for c in cycles if c.errors]
    if failed:
        # Throughput of operations that failed early says nothing about the panel.
        raise RuntimeError(f"{label}: {len(failed)} of {k} cycles failed, e.g. {label}{failed[0].index}: "
                           f"{'; '.join(failed[0].errors)}")
    wall = max(c.end for c in cycles) if cycles else 0.0
    cpu = cpu_per_cycle(cpu0, cpu_snapshot(ctx), k)
    add_rq_times(ops)
    return {
        "cpu_ms_per_cycle": cpu,
        "cycles": k,
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "cycles_per_s": round(k / wall, 3) if wall else None,
        "ops_per_s": round(len(ops) / wall, 3) if wall else None,
        "failed_cycles": [{"cycle": c.index, "errors": c.errors} for c in cycles if c.errors],
        "cycle_s": summary([c.end - c.begin for c in cycles]),
        "cycle_samples": [{"cycle": c.index, "begin_s": round(c.begin, 4), "end_s": round(c.end, 4),
                           "ok": not c.errors} for c in sorted(cycles, key=lambda c: c.index)],
        "operations": ops,
    }


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, children: bool | None = None) -> float:
    """PID's CPU seconds: its own (utime + stime), its reaped children's (the engine's forks, the
    guests' inits it was subreaper of: cutime + cstime) or, with CHILDREN None, both; 0 if it is
    gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    first, last = {None: (11, 15), False: (11, 13), True: (13, 15)}[children]
    return sum(int(x) for x in fields[first:last]) / CLOCK_TICK


def cpu_snapshot(ctx) -> dict[str, float]:
    """CPU seconds so far: the whole machine's busy time (/proc/stat), the worker processes,
    redis-server and this process (the bench's own polling and requests)."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in line[1:9])
    workers = [p for p in [getattr(ctx, "worker_proc", None), *getattr(ctx, "extra_workers", [])] if p is not None]
    own = os.times()
    return {
        "machine": (user + nice + system + irq + softirq + steal) / CLOCK_TICK,
        "workers": sum(_proc_cpu(p.pid) for p in workers),
        "workers_own": sum(_proc_cpu(p.pid, children=False) for p in workers),
        "workers_children": sum(_proc_cpu(p.pid, children=True) for p in workers),
        "redis": _proc_cpu(ctx.redis_proc.pid) if getattr(ctx, "redis_proc", None) else 0.0,
        "bench": own.user + own.system,
    }


def cpu_per_cycle(before: dict[str, float], after: dict[str, float], k: int) -> dict[str, float]:
    """CPU milliseconds per cycle between two snapshots; "other" is the machine's rest (other
    work on the host, kernel threads such as the loop devices' and kworkers)."""
    spent = {key: (after[key] - before[key]) * 1000 / k for key in before}
    spent["other"] = spent["machine"] - spent["workers"] - spent["redis"] - spent["bench"]
    return {key: round(value, 1) for key, value in spent.items()}


def wait_route(ip: str, deadline: float) -> None:
    """common.check_route until it passes (the bridge appears with the first start); no
    request goes anywhere before it does."""
    while True:
        try:
            common.check_route(ip, NETWORK, BRIDGE)
            return
        except common.UnsafeRoute:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


CONNECT_TIMEOUT = 0.05  # per attempt: a SYN sent before the guest has its address is not waited on long


def poll_http(ip: str, deadline: float) -> tuple[float | None, int, float | None]:
    """GET / from IP:80 every POLL seconds until 200 (http.client, no proxy; the caller has
    checked the route). Each connect waits CONNECT_TIMEOUT at most, so an attempt made before
    the guest has its address costs little. Returns when it answered 200 (monotonic), the
    attempts made, and when a TCP answer (connected or refused) first came."""
    attempts, reached = 0, None
    while True:
        attempts += 1
        conn = http.client.HTTPConnection(ip, 80, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
            reached = reached or time.monotonic()
            conn.sock.settimeout(2.0)
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return time.monotonic(), attempts, reached
        except ConnectionRefusedError:
            reached = reached or time.monotonic()
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() >= deadline:
            return None, attempts, reached
        time.sleep(POLL)


def wait_running(pk: int, deadline: float) -> float:
    """Until the panel shows server PK running (the worker sets it right after the engine's
    start returned); when it did (monotonic)."""
    from vservers.models import State, VirtualServer

    while True:
        state = VirtualServer.objects.filter(pk=pk).values_list("state", flat=True).first()
        if state == State.RUNNING:
            return time.monotonic()
        if state == State.ERROR or time.monotonic() > deadline:
            raise RuntimeError(f"server {pk} is {state}, not running")
        time.sleep(POLL)


def one_http_run(ctx, name: str, timeout: float) -> dict:
    """Request NAME, then from the approval (the operator's click) until it answers GET / with
    200, or TIMEOUT seconds. The server is left running."""
    server = new_server(ctx, name)
    w0, t0 = time.time(), time.monotonic()
    op = submit(ctx, server, "provision")
    t_approved = time.monotonic()
    ip = server.ip_list()[0]
    running = wait_running(server.pk, t0 + timeout)
    wait_route(ip, t0 + timeout)
    answered, attempts, reached = poll_http(ip, t0 + timeout)
    row = wait_op(op.pk)
    rec = op_record(row, 0, t0, time.monotonic(), t0)
    rec.update({"name": name, "server": server, "ip": ip, "approve_call_ms": ms(t_approved - t0),
                "approval_to_http_ms": ms(answered - t0) if answered is not None else None,
                "approved_at": w0, "http_at": w0 + (answered - t0) if answered is not None else None,
                "http_attempts": attempts, "first_tcp_answer_ms": ms(reached - t0) if reached is not None else None,
                "running_ms": ms(running - t0)})
    return rec


def stop_and_delete(ctx, servers: list) -> list[str]:
    """Stop, then delete SERVERS through the panel (all queued at once); the errors."""
    errors = []
    for kind in ("stop", "delete"):
        ops = [submit(ctx, server, kind) for server in servers]
        for server, op in zip(servers, ops, strict=True):
            done = wait_op(op.pk)
            if done["status"] != "succeeded":
                errors.append(f"{kind} of {server.name} failed: {done['error'][:200]}")
    return errors


def approval_to_http(ctx, runs: int) -> dict:
    """RUNS times, one at a time, each a new server on a fresh address (the earlier ones stay
    running, so the pool hands out the next address): from the approval until the new server
    answers GET / with 200. Then all are stopped and deleted through the panel, and one more run
    gets the lowest address again, just freed: does a server on a reused address answer (within
    REUSE_TIMEOUT) while the host still has the neighbour entry of the address's last owner?

    The HTTP polling starts once the panel shows the server running (its rows are polled every
    POLL seconds): a request sent before the guest has its address leaves the host's ARP entry
    for it unresolved until the kernel's next probe, a second later, which would measure the
    kernel's ARP timer rather than the panel."""
    samples = []
    for i in range(runs):
        rec = one_http_run(ctx, f"http{i}", HTTP_TIMEOUT)
        if rec["approval_to_http_ms"] is None:
            raise RuntimeError(f"http{i} ({rec['ip']}) did not answer HTTP within {HTTP_TIMEOUT:.0f} s of its approval")
        rec["cycle"] = i
        samples.append(rec)
        log(f"  http{i} ({rec['ip']}): approval → HTTP 200 in {rec['approval_to_http_ms']:.0f} ms")
    errors = stop_and_delete(ctx, [s.pop("server") for s in samples])
    reuse = one_http_run(ctx, "reuse", REUSE_TIMEOUT)
    errors += stop_and_delete(ctx, [reuse.pop("server")])
    log(f"  reused address {reuse['ip']}: " + (f"HTTP 200 after {reuse['approval_to_http_ms']:.0f} ms"
                                              if reuse["approval_to_http_ms"] is not None
                                              else f"no answer within {REUSE_TIMEOUT:.0f} s"))
    if errors:
        raise RuntimeError("; ".join(errors))
    add_rq_times(samples)
    return {"runs": runs, "samples": samples, "reuse": reuse,
            "approval_to_http_ms": summary([s["approval_to_http_ms"] for s in samples]),
            "approve_call_ms": summary([s["approve_call_ms"] for s in samples])}


# --- main ---------------------------------------------------------------------------------


def run(ctx, mode: dict) -> None:
    from vservers.engine import templates

    result = ctx.result
    t0 = time.monotonic()
    templates.build(ctx.engine.config, TEMPLATE)
    ctx.engine.config.servers_dir.mkdir(parents=True, exist_ok=True)  # the reconciler expects it
    result["setup"]["template_build_s"] = round(time.monotonic() - t0, 3)
    start_redis(ctx)
    # As in run_two_nodes: every cycle is one tenant's, and its cap on waiting operations (20
    # by default) refused the full run's 100 in flight.
    os.environ["PANEL_MAX_PENDING_PER_TENANT"] = "1000"
    setup_django(ctx)
    make_world(ctx)
    log(f"database migrated in {result['setup']['migrate_s']:.1f} s")

    pages: dict = {"scales": mode["scales"], "by_scale": {}}
    result["pages"] = pages
    for scale in [] if mode.get("queue_only") else mode["scales"]:
        fill_s = fill_crowd(ctx, scale)
        reps = mode["reps"] if scale >= TARGET_SCALE else mode["small_reps"]
        log(f"pages with {scale} servers / {scale * OPS_PER_SERVER} operations (filled in {fill_s:.1f} s), {reps} each")
        block = {"servers": scale, "operations": scale * OPS_PER_SERVER, "fill_s": round(fill_s, 3), "reps": reps}
        block["pages"] = time_pages(ctx, reps, mode["profile_reps"] if scale == TARGET_SCALE else 0)
        pages["by_scale"][str(scale)] = block
        if scale == TARGET_SCALE:
            block["rows_split"] = rows_split(ctx, max(3, mode["profile_reps"]))
            start_gunicorn(ctx)
            pages["gunicorn"] = time_pages_gunicorn(ctx, mode["gunicorn_reps"])
            common_stop(ctx, "web_proc", "gunicorn", 15)

    log("starting the worker")
    t0 = time.monotonic()
    start_worker(ctx)
    result["setup"]["worker_start_s"] = round(time.monotonic() - t0, 3)
    log("warm-up cycle")
    result["queue"] = {"warmup": run_cycles(ctx, "warm", 1, 1)}
    log(f"{mode['cycles']} cycles one at a time")
    result["queue"]["sequential"] = run_cycles(ctx, "seq", mode["cycles"], 1)
    log(f"  {result['queue']['sequential']['cycles_per_s']} cycles/s")
    log(f"{mode['inflight']} cycles in flight at once")
    result["queue"]["inflight"] = run_cycles(ctx, "fly", mode["inflight"], mode["inflight"])
    log(f"  {result['queue']['inflight']['cycles_per_s']} cycles/s")
    if not mode.get("queue_only"):
        log(f"approval → HTTP, {mode['http_runs']} runs")
        result["http"] = approval_to_http(ctx, mode["http_runs"])
    by_workers = {}
    for workers in mode.get("worker_counts") or [mode["workers"]]:
        log(f"{mode['inflight']} cycles in flight at once, {workers} workers")
        phase = by_workers[workers] = run_with_more_workers(ctx, workers, mode["inflight"])
        log(f"  {phase['cycles_per_s']} cycles/s, CPU ms per cycle {phase['cpu_ms_per_cycle']}")
    if mode.get("write_gate_ab"):
        write_gate_ab(ctx, mode["write_gate_ab"], max(by_workers), mode["inflight"])
    best = max(by_workers, key=lambda n: by_workers[n]["cycles_per_s"] or 0)
    result["queue"]["inflight_workers"] = by_workers[mode["workers"] if mode["workers"] in by_workers else best]
    if len(by_workers) > 1:
        result["queue"]["by_workers"] = {
            str(n): {k: v for k, v in phase.items() if k not in ("operations", "cycle_samples")}
            for n, phase in by_workers.items()}
    result["reconcile"] = reconcile_runs()
    log("stopping the worker process")
    common_stop(ctx, "worker_proc", "worker", 60)
    timings = read_worker_timings(ctx.worker_timings)
    for key in ("warmup", "sequential", "inflight"):
        analyse_phase(result["queue"][key], timings)
    if "http" in result:
        analyse_http(result["http"], timings)
    if mode.get("profile_dump"):
        log(f"profiling 3 cycles in this process into {mode['profile_dump']}")
        profile_worker(ctx, 3, Path(mode["profile_dump"]))
    elif not mode.get("queue_only"):
        log(f"profiling {mode['profile_cycles']} cycle(s) in this process")
        result["worker_profile"] = profile_worker(ctx, mode["profile_cycles"])


def set_write_gate(ctx, on: bool) -> None:
    """The SQLite write gate (panel/sqlite/base.py) on or off, for this process's next
    connection and the worker processes started from now on."""
    from django.db import connections

    ctx.child_env["BENCH_WRITE_GATE"] = "1" if on else "0"
    connections["default"].settings_dict["OPTIONS"]["write_gate"] = on
    connections["default"].close()


def write_gate_ab(ctx, rounds: int, workers: int, k: int) -> None:
    """ROUNDS rounds of K cycles in flight with WORKERS workers, with the SQLite write gate
    and without it in turn (every process restarted with the arm's setting): result["queue"]
    gets "gate on N" and "gate off N" phases, and "write_gate_ab" the medians."""
    from django.db import connection

    if connection.vendor != "sqlite":
        raise RuntimeError("--write-gate-ab compares SQLite's write gate; this database is " + connection.vendor)
    arms: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        for arm in ("off", "on") if r % 2 else ("on", "off"):
            common_stop(ctx, "worker_proc", "worker", 60)
            set_write_gate(ctx, arm == "on")
            ctx.worker_proc = spawn_worker(ctx, ctx.worker_log)
            wait_for_workers(ctx, 1, [ctx.worker_proc])
            log(f"write gate {arm}, round {r + 1}: {k} cycles in flight, {workers} workers")
            phase = run_with_more_workers(ctx, workers, k)
            phase.pop("operations", None)
            phase.pop("cycle_samples", None)
            log(f"  {phase['cycles_per_s']} cycles/s, CPU ms per cycle {phase['cpu_ms_per_cycle']}")
            ctx.result["queue"][f"gate {arm} {r + 1}"] = phase
            arms[arm].append(phase["cycles_per_s"] or 0.0)
    set_write_gate(ctx, True)
    ctx.result["queue"]["write_gate_ab"] = {arm: summary(rates) for arm, rates in arms.items()}


def run_two_nodes(ctx, mode: dict) -> None:
    """Lifecycle cycles through the panel with one node (its worker on "default") against two
    (node "b" with an installation of its own, common.PANEL2_ENV, and its own worker process on
    its queue "node-b"), in the same run: MODE's in-flight cycles, split over the nodes in turn."""
    import ipaddress

    from vservers.engine import templates

    result = ctx.result
    for engine in (ctx.engine, ctx.engine_b):
        templates.build(engine.config, TEMPLATE)
        engine.config.servers_dir.mkdir(parents=True, exist_ok=True)
    start_redis(ctx)
    # One tenant has every cycle in flight at once: its cap on waiting operations (20 by
    # default) would refuse steps of the full run's 100.
    os.environ["PANEL_MAX_PENDING_PER_TENANT"] = "1000"
    setup_django(ctx)
    make_world(ctx)
    from django.utils import timezone

    from vservers.models import IPAddress, IPPool, Node

    network = ipaddress.ip_network(common.PANEL2_ENV["VSERVER_GATEWAY"], strict=False)
    gateway = ipaddress.ip_interface(common.PANEL2_ENV["VSERVER_GATEWAY"]).ip
    ctx.node_b = Node.objects.create(name="b", queue_name="node-b", cpus=os.cpu_count() or 2, last_seen=timezone.now(),
                                     vserver_root=common.PANEL2_ENV["VSERVER_ROOT"])
    pool = IPPool.objects.create(name="bench-b", node=ctx.node_b, network=str(network), gateway=str(gateway))
    # As on node a: guests from the second /24 up.
    IPAddress.objects.bulk_create(IPAddress(pool=pool, address=str(network.network_address + i)) for i in range(2, 256))
    from django.db import connection

    result["database"] = connection.vendor
    log(f"database: {connection.vendor}")
    start_worker(ctx)
    run_cycles(ctx, "warma", 1, 1)
    k = mode["inflight"]
    log(f"one node, one worker: {k} cycles in flight")
    one = run_cycles(ctx, "one", k, k)
    log(f"  {one['cycles_per_s']} cycles/s")
    env_b = {**ctx.child_env, **common.PANEL2_ENV}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-child", str(ctx.tmp / "worker-b-timings.jsonl"),
           "nodeworker", "--processes", "1", "node-b"]
    ctx.worker_b_log = ctx.tmp / "worker-b.log"
    ctx.worker_b_proc = subprocess.Popen(cmd, cwd=REPO, env=env_b, stdout=open(ctx.worker_b_log, "wb"),  # noqa: SIM115
                                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_workers(ctx, 2, [ctx.worker_proc, ctx.worker_b_proc])
    except RuntimeError:
        raise RuntimeError("node b's worker did not start:\n" + tail(ctx.worker_b_log)) from None
    run_cycles(ctx, "warmb", 1, 1, nodes=[ctx.node_b])
    log(f"two nodes, a worker each: {k} cycles in flight")
    two = run_cycles(ctx, "two", k, k, nodes=[ctx.node, ctx.node_b])
    log(f"  {two['cycles_per_s']} cycles/s")
    from vservers.models import Operation

    # Where the operations of the two-node phase ran: each node's worker runs its node's only.
    two["operations_by_node"] = {node.name: Operation.objects.filter(server__node=node,
                                                                     server__name__startswith="two").count()
                                 for node in (ctx.node, ctx.node_b)}
    log(f"  operations by node: {two['operations_by_node']}")
    for phase in (one, two):
        phase.pop("operations", None)
        phase.pop("cycle_samples", None)
    result["queue"] = {"one_node": one, "two_nodes": two,
                       "speedup": round(two["cycles_per_s"] / one["cycles_per_s"], 2)
                       if one["cycles_per_s"] and two["cycles_per_s"] else None}


def two_nodes_markdown(result: dict) -> str:
    q = result["queue"]
    rows = [[label, q[key]["cycles"], f"{q[key]['wall_s']:.1f}", f"{q[key]['cycles_per_s']:.2f}",
             f"{q[key]['ops_per_s']:.2f}", f"{q[key]['cycle_s']['median']:.2f}", f"{q[key]['cycle_s']['p95']:.2f}"]
            for key, label in (("one_node", "1 node, 1 worker"), ("two_nodes", "2 nodes, a worker each"))]
    return "\n".join([
        "## Panel: lifecycle cycles with two node workers against one (panel.py --two-nodes)",
        "",
        f"Database: {result['database']}; {result['host']['cpus']} CPUs (both nodes and their workers on this one "
        f"machine, each node with its own root, bridge, address range, uid range, queue and worker). A cycle: "
        f"request, approval (provision: create + start), stop, delete; all cycles in flight at once, cycle i on "
        f"node i mod 2. Speed-up: {q['speedup']}x.",
        "",
        common.md_table(["", "cycles", "wall s", "cycles/s", "operations/s", "cycle median s", "cycle p95 s"], rows),
    ])


def queue_digest(result: dict) -> dict:
    """--queue-only's printout: per phase the rate, the CPU per cycle and the medians per part."""
    digest = {"loadavg": [result["loadavg_start"], result["loadavg_end"]]}
    if "write_gate_ab" in result["queue"]:
        digest["write_gate_ab_cycles_per_s"] = result["queue"]["write_gate_ab"]
    phases = {**{k: v for k, v in result["queue"].items() if k not in ("by_workers", "warmup", "write_gate_ab")},
              **{f"{n} workers": v for n, v in result["queue"].get("by_workers", {}).items()}}
    for key, phase in phases.items():
        digest[key] = {"cycles_per_s": phase["cycles_per_s"], "cpu_ms_per_cycle": phase["cpu_ms_per_cycle"],
                       "median_ms": {kind: {part: s["median"] for part, s in parts.items() if isinstance(s, dict)}
                                     for kind, parts in phase.get("per_kind_ms", {}).items()}}
    return digest


def reconcile_runs() -> dict:
    """The worker's periodic reconcile jobs that ran beside ours (the node's one job id; RQ
    keeps the results of its last ten runs): how many, and how long each took."""
    from vservers.queues import get_queue

    queue = get_queue("default")
    durations = []
    for job_id in queue.finished_job_registry.get_job_ids():
        job = queue.fetch_job(job_id) if job_id.startswith("reconcile-") else None
        for result in job.results() if job else []:
            if result.execution_started_at and result.execution_ended_at:
                durations.append((result.execution_ended_at - result.execution_started_at).total_seconds() * 1000)
    return {"runs": len(durations), "ms": summary(durations)}


def common_stop(ctx, attr: str, name: str, grace: float) -> None:
    note = stop_process(getattr(ctx, attr, None), name, grace)
    if note:
        ctx.notes.append(note)


def cleanup(ctx) -> list[str]:
    """Everything we started, in order: web, worker, the engine's servers (then the bridge and
    root), stray members of the worker's session, Redis, zombies, the temporary directory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    problems: list[str] = []
    common_stop(ctx, "web_proc", "gunicorn", 15)
    stop_extra_workers(ctx)
    common_stop(ctx, "worker_proc", "worker", 60)
    common_stop(ctx, "worker_b_proc", "node b's worker", 60)
    problems += common.cleanup_installation(ctx.engine, log)
    if getattr(ctx, "engine_b", None) is not None:
        problems += common.cleanup_installation(ctx.engine_b, log)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup_installation restored the defaults
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001 - Django may not be set up yet
        pass
    common_stop(ctx, "redis_proc", "redis-server", 15)
    # Each child had a session of its own: whatever is still in one (a gunicorn worker whose
    # parent had to be killed) is ours to end. The guests' inits were in the
    # worker's session too; the engine has stopped them above.
    for attr in ("worker_proc", "worker_b_proc", "web_proc", "redis_proc"):
        proc = getattr(ctx, attr, None)
        if proc is None:
            continue
        for pid in session_members(proc.pid):
            if pid == os.getpid():
                continue
            problems.append(f"process {pid} of the {attr[:-5]}'s session was still running; killed")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.1)
    reap_zombies()
    if ctx.tmp is not None and ctx.tmp.exists():
        shutil.rmtree(ctx.tmp, ignore_errors=True)
        if ctx.tmp.exists():
            problems.append(f"directory {ctx.tmp}")
    for attr in ("worker_proc", "worker_b_proc", "web_proc", "redis_proc"):
        proc = getattr(ctx, attr, None)
        if proc is not None and proc.poll() is None:
            problems.append(f"{attr[:-5]} pid {proc.pid} still running")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker-child"]:
        return worker_child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="every step once or twice (about a minute)")
    group.add_argument("--quick", action="store_true", help="the default: 20 cycles, 20 requests per page")
    group.add_argument("--full", action="store_true", help="100 cycles, 50 requests per page, also 3,000 servers")
    parser.add_argument("--name", help="results file name (default: panel, panel-nodes with --two-nodes)")
    parser.add_argument("--two-nodes", action="store_true",
                        help="only cycles in flight with one node against two, each with its own installation and "
                             "worker (run it under scripts/with-postgres for PostgreSQL)")
    parser.add_argument("--queue-only", action="store_true",
                        help="only the cycles through the queue (no pages, no approval → HTTP, no profile); "
                             "a try-out: prints its figures and writes nothing to bench/results/")
    parser.add_argument("--workers", help="worker counts to run the in-flight phase with, e.g. 1,2,4 "
                                          "(default: the mode's, 4)")
    parser.add_argument("--write-gate-ab", type=int, metavar="ROUNDS",
                        help="with --queue-only: ROUNDS rounds with SQLite's write gate (panel/sqlite) and without it "
                             "in turn, cycles in flight with the largest worker count")
    parser.add_argument("--profile-dump", help="with --queue-only: profile 3 cycles' jobs in this process and "
                                               "write cProfile's stats to this file")
    args = parser.parse_args(argv)
    args.name = args.name or ("panel-nodes" if args.two_nodes else "panel")
    mode_name = "smoke" if args.smoke else "full" if args.full else "quick"
    mode = dict(MODES[mode_name], queue_only=args.queue_only, profile_dump=args.profile_dump,
                write_gate_ab=args.write_gate_ab)
    if args.write_gate_ab and not args.queue_only:
        parser.error("--write-gate-ab is a try-out: use it with --queue-only")
    if args.workers:
        try:
            mode["worker_counts"] = [int(n) for n in args.workers.split(",")]
        except ValueError:
            parser.error(f"--workers takes numbers separated by commas, not {args.workers!r}")
        if any(n < 1 for n in mode["worker_counts"]):
            parser.error("--workers: each count must be at least 1")
    if os.geteuid() != 0:
        parser.error("must run as root (the worker drives the engine)")
    if shutil.which("redis-server") is None:
        parser.error("redis-server is not installed (make install)")
    if max(mode["cycles"], mode["inflight"]) + 8 > int(NETWORK.broadcast_address) - int(FIRST_GUEST):
        parser.error("too many servers for the address range")

    lock = open(LOCK_FILE, "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        parser.error(f"another bench/panel.py holds {LOCK_FILE}")

    env = common.engine_env(ENV)
    from vservers.engine import Engine, EngineConfig
    from vservers.engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

    # Guests' inits come to us, not to PID 1, if the worker dies first.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    engine = Engine(EngineConfig.from_env(env))
    result: dict = {"host": common.host_info(), "argv": argv, "mode": mode_name, "settings": mode, "setup": {},
                    "installation": {"root": ENV["VSERVER_ROOT"], "bridge": BRIDGE, "network": str(NETWORK),
                                     "uid_base": ENV["VSERVER_UID_BASE"], "pool_first": str(FIRST_GUEST),
                                     "crowd_network_rows_only": str(CROWD_NETWORK)}}
    result["setup_notes"] = [
        "panel/settings.py reads no variable for the SQLite file, so a settings module in the temporary "
        "directory imports panel.settings and sets DATABASES' NAME."]
    if UID_NOTE:
        result["setup_notes"].append(UID_NOTE + ".")
    result["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    # What the run measured beyond HEAD: others change the tree while it runs.
    result["host"]["uncommitted"] = common.uncommitted(["vservers", "accounts", "panel", "templates"])
    ctx = SimpleNamespace(engine=engine, result=result, tmp=None, notes=[], redis_url=None, engine_b=None)
    if args.two_nodes:
        ctx.engine_b = Engine(EngineConfig.from_env(dict(common.PANEL2_ENV)))
        result["installation_b"] = {k: common.PANEL2_ENV[k] for k in
                                    ("VSERVER_ROOT", "VSERVER_BRIDGE", "VSERVER_GATEWAY", "VSERVER_UID_BASE")}
    common.install_signal_handlers()
    ok = False
    started = time.monotonic()
    try:
        common.clean_earlier_run(engine, log)
        if ctx.engine_b is not None:
            common.clean_earlier_run(ctx.engine_b, log)
        ctx.tmp = Path(tempfile.mkdtemp(prefix="vservers-bench-panel-"))
        if args.two_nodes:
            run_two_nodes(ctx, mode)
        else:
            run(ctx, mode)
        ok = True
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit 1
        log(f"FAILED: {type(exc).__name__}: {exc}")
        if getattr(ctx, "worker_log", None):
            log("worker log (tail):\n" + tail(ctx.worker_log))
        import traceback

        traceback.print_exc()
    finally:
        log("cleaning up")
        result["leftovers"] = cleanup(ctx)
        result["notes"] = ctx.notes
        log("LEFT BEHIND: " + "; ".join(result["leftovers"]) if result["leftovers"] else "nothing left behind")
    if not ok:
        return 1
    result["run_s"] = round(time.monotonic() - started, 1)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.queue_only:
        print(json.dumps(queue_digest(result), indent=1))
        return 0 if not result["leftovers"] else 2
    if args.two_nodes:
        md = two_nodes_markdown(result)
        report.show(result, md)
        path = common.write_results(args.name, result, md)
        log(f"wrote {path} in {result['run_s']:.0f} s")
        return 0 if not result["leftovers"] else 2
    result["findings"] = findings(result)
    result["plots"] = plots(result)
    strip_samples(result)
    md = markdown(result)
    report.show(result, md)
    path = common.write_results(args.name, result, md)
    log(f"wrote {path}, {', '.join(result['plots'])} and {path.parent / 'SUMMARY.md'} in {result['run_s']:.0f} s")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
