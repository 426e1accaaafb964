"""The panel's worker for bench/panel.py: the real worker process with timers around the
engine's calls and the job's database steps (`bench/panel.py --worker-child`), its timings, and
the worker's time per job profiled in the bench's own process."""

from __future__ import annotations

import cProfile
import json
import resource
import signal
import time
from collections import defaultdict
from pathlib import Path

from bench import common, profiling
from bench.common import summary
from bench.panel_world import STEPS, new_server, submit, wait_op


def worker_child(timings_path: str, argv: list[str]) -> int:
    """`bench/panel.py --worker-child TIMINGS nodeworker …`: manage.py's nodeworker command,
    with timers (in this process only) that write one JSON line per run_operation to TIMINGS."""
    import django

    django.setup()
    install_worker_timers(Path(timings_path))
    from django.core.management import execute_from_command_line

    execute_from_command_line([str(common.REPO / "manage.py"), *argv])
    return 0


def install_worker_timers(path: Path) -> None:
    """Wrap run_operation (the job RQ imports by name), the engine's calls and the job's own
    database steps; per operation one line: {"op", "result", "t0", "run_ms", "events":
    [[label, start epoch, ms], …]}. Only outermost calls count (start's own status is in start)."""
    from vservers import jobs
    from vservers.engine import lifecycle
    from vservers.models import Operation

    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    state: dict = {"events": None, "depth": 0}

    def timed(label: str, fn):
        def wrapper(*args, **kwargs):
            if state["events"] is None or state["depth"]:
                return fn(*args, **kwargs)
            state["depth"] += 1
            start, t0 = time.time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                state["depth"] -= 1
                state["events"].append([label, start, (time.perf_counter() - t0) * 1000])

        return wrapper

    # Names that are not there (the panel changes) are left out rather than failing the worker.
    for owner, attr, label in [
        *[(lifecycle.Engine, n, f"engine.{n}") for n in ("create", "start", "stop", "delete", "restart", "status",
                                                          "spec")],
        # The guest's lists as the job reads and stores them after a start or account change
        # (the public store_* the job's refresh steps call).
        (jobs, "store_accounts", "engine.accounts (refresh)"),
        (jobs, "store_services", "engine.services (refresh)"),
        # The server's row lock, the busy check and the claim's UPDATE (once more after the
        # job's operation: the look for the server's next one).
        (jobs, "claim_next", "db.claim"),
        (Operation, "finish", "db.finish"),
    ]:
        if hasattr(owner, attr):
            setattr(owner, attr, timed(label, getattr(owner, attr)))
    original = jobs.run_operation

    def run_operation(operation_id: int) -> str:
        state["events"] = []
        start, t0, cpu0 = time.time(), time.perf_counter(), _cpu()
        result = "raised"
        try:
            result = original(operation_id)
            return result
        finally:
            cpu1 = _cpu()
            # The process's CPU (all its threads: the watch and heartbeat too, a little) and
            # that of the children it reaped meanwhile (the engine's forks, guests' inits).
            line = {"op": operation_id, "result": result, "t0": start,
                    "run_ms": (time.perf_counter() - t0) * 1000, "events": state["events"],
                    "cpu_own_ms": (cpu1[0] - cpu0[0]) * 1000, "cpu_children_ms": (cpu1[1] - cpu0[1]) * 1000}
            state["events"] = None
            out.write(json.dumps(line) + "\n")

    jobs.run_operation = run_operation


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children, to the microsecond (getrusage;
    os.times counts clock ticks of 10 ms)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def read_worker_timings(path: Path) -> dict[int, dict]:
    from vservers.jobs import LEFT

    found: dict[int, dict] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("result") in (LEFT, "skipped", "missing"):  # jobs that ran no operation of theirs
            continue
        found[int(row["op"])] = row
    return found


# Functions whose cumulative time per job the worker's profile reports: (label, file, function).
WORKER_WATCH = [
    ("SimpleWorker.execute_job (all of one job but the dequeue)", "rq/worker/worker_classes.py", "execute_job"),
    ("vservers.jobs.run_operation (the job itself)", "vservers/jobs.py", "run_operation"),
    ("… jobs.claim_next (server lock, busy check, claim UPDATE)", "vservers/jobs.py", "claim_next"),
    ("… Operation.finish (update + re-read)", "vservers/models/operations.py", "finish"),
    ("RQ dequeue_job_and_maintain_ttl", "rq/worker/base.py", "dequeue_job_and_maintain_ttl"),
    ("RQ prepare_job_execution", "rq/worker/base.py", "prepare_job_execution"),
    ("RQ handle_job_success", "rq/worker/base.py", "handle_job_success"),
    ("Django close_old_connections (before and after each job)", "django/db/__init__.py", "close_old_connections"),
    ("Django: open a database connection (SQLite + PRAGMAs)", "django/db/backends/base/base.py", "connect"),
    ("RQ heartbeat", "rq/worker/base.py", "heartbeat"),
]


def profile_worker(ctx, cycles: int, dump: Path | None = None) -> dict:
    """After the worker process has stopped: one warm-up cycle, then CYCLES more cycles, each
    job run by a PanelWorker in this process (burst mode, as tests/panel/conftest.py's drain
    does). cProfile covers only what a long-running worker pays per job: RQ's SimpleWorker
    execute_job (RQ's preparation, the job, RQ's bookkeeping, Django's connection handling) and
    the dequeue; not burst mode's own start and teardown (registration, the pub/sub thread)."""
    from django_rq import get_connection

    from vservers.queues import get_queue
    from vservers.worker import PanelWorker

    connection = get_connection("default")
    queue = get_queue("default")
    profiler = cProfile.Profile()
    walls: dict[str, list[float]] = defaultdict(list)
    jobs = 0
    for i in range(-1, cycles):  # cycle -1 warms up this process (imports, first calls), unprofiled
        server = new_server(ctx, f"prof{i + 1}")
        for kind in STEPS:
            op = submit(ctx, server, kind)
            for job_id in queue.get_job_ids():
                if job_id.startswith("reconcile-"):
                    queue.remove(job_id)  # the periodic job, not ours to time here
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            worker = PanelWorker([queue], connection=connection)
            spent: list[float] = []
            for name in ("execute_job", "dequeue_job_and_maintain_ttl"):
                setattr(worker, name, profiling.profiled(getattr(worker, name), profiler if i >= 0 else None, spent))
            try:
                worker.work(burst=True, logging_level="WARNING")
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
            if i >= 0:
                walls[kind].append(sum(spent))
                jobs += 1
            row = wait_op(op.pk)
            if row["status"] != "succeeded":
                raise RuntimeError(f"profiled {kind} of prof{i + 1} failed: {row['error']}")
    if dump is not None:
        profiler.dump_stats(dump)
    return {"cycles": cycles, "jobs": jobs, "profiled_ms": {k: summary(v) for k, v in walls.items()},
            "profile": profiling.profile_summary(profiler, jobs, top=15, watch=WORKER_WATCH)}
