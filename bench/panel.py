"""Benchmark of the panel: list pages with 1,000 servers and 10,000 operations in the
database, operations per second through the queue with one worker, and approval → HTTP 200.

Run as root from the repository root::

    .venv/bin/python bench/panel.py --quick     # 20 cycles, 20 requests per page (about 1.5 minutes)
    .venv/bin/python bench/panel.py --full      # 100 cycles, 50 page requests, also 3,000 servers
    .venv/bin/python bench/panel.py --smoke     # every step once or twice

Everything is its own: a temporary directory with a SQLite database (migrated), a private
redis-server on a Unix socket, one real PanelWorker (`manage.py rqworker … --worker-class
vservers.worker.PanelWorker --serializer rq.serializers.JSONSerializer --with-scheduler`, as
scripts/run-panel starts it), a gunicorn on 127.0.0.1 for the page timings over HTTP, and the
engine installation bench/common.PANEL_ENV (bridge vsbenchpn0, 198.19.216.1/21; the panel's
pool hands out 198.19.217.0 upwards). Prints JSON and Markdown, writes bench/results/panel.json,
bench/results/panel-*.png and its section of bench/results/SUMMARY.md, and removes everything
it made at the end (also on SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import cProfile
import fcntl
import http.client
import ipaddress
import json
import os
import pstats
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import md_table, percentile, summary  # noqa: E402

REPO = common.REPO
# The engine accepts uid bases below 2^31 only; common.PANEL_ENV's 3500000000 is above. Then
# this one is used: clear of the other installations (tests 5M-600M+, bench 700M+, overhead
# 1.8G+), with room for 4,000 servers of 65,536 ids below 2^31.
UID_BASE_FALLBACK = 1_900_000_000
ENV = dict(common.PANEL_ENV)
if int(ENV["VSERVER_UID_BASE"]) >= 2**31:
    ENV["VSERVER_UID_BASE"] = str(UID_BASE_FALLBACK)
NETWORK = common.network_of(ENV)  # 198.19.216.0/21
BRIDGE = ENV["VSERVER_BRIDGE"]
GATEWAY = str(ipaddress.ip_interface(ENV["VSERVER_GATEWAY"]).ip)
# The pool's first address handed out: 198.19.217.0 (the rest of 198.19.216.0/24 is reserved).
FIRST_GUEST = NETWORK.network_address + 256
# Addresses of the crowd (1,000 servers that exist only as rows, on an inactive node of their
# own): never configured anywhere, never contacted.
CROWD_NETWORK = ipaddress.ip_network("198.18.64.0/20")
TEMPLATE = "busybox"
LOCK_FILE = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "vservers-bench-panel.lock"
TARGET_SCALE = 1000  # servers; the operations are 10 per server
OPS_PER_SERVER = 10
PAGE_TARGET_MS = 100.0
CYCLE_TARGET_PER_S = 10.0
OP_TIMEOUT = 120.0
HTTP_TIMEOUT = 30.0
POLL = 0.002  # seconds between looks at the operations' rows, and between HTTP attempts
POLL_MANY = 0.01  # between looks at the rows while many cycles are in flight
STEPS = ["provision", "stop", "delete"]  # one cycle; provision = create + start

MODES = {
    "smoke": {"scales": [10, 1000], "reps": 5, "small_reps": 3, "gunicorn_reps": 5, "profile_reps": 2,
              "cycles": 3, "inflight": 3, "http_runs": 2, "profile_cycles": 1, "workers": 2},
    "quick": {"scales": [10, 1000], "reps": 20, "small_reps": 10, "gunicorn_reps": 10, "profile_reps": 3,
              "cycles": 20, "inflight": 20, "http_runs": 5, "profile_cycles": 1, "workers": 4},
    "full": {"scales": [10, 1000, 3000], "reps": 50, "small_reps": 20, "gunicorn_reps": 50, "profile_reps": 10,
             "cycles": 100, "inflight": 100, "http_runs": 20, "profile_cycles": 2, "workers": 4},
}

# Stands for the ETag of the page's own last answer in PAGES' headers (see _headers).
ETAG = "<etag>"
# (key, label, user, url name, extra request headers)
PAGES = [
    ("tenant_list", "tenant: server list (own 1/4 of the servers)", "alice", "server_list", {}),
    ("tenant_rows", "tenant: rows fragment (htmx live poll)", "alice", "server_list_rows", {"HX-Request": "true"}),
    # The poll again with the ETag of its last answer, nothing changed meanwhile: a 304.
    ("tenant_rows_304", "tenant: rows fragment, unchanged (If-None-Match → 304)", "alice", "server_list_rows",
     {"HX-Request": "true", "If-None-Match": ETAG}),
    ("operator_all", "operator: /servers/ (every tenant's servers)", "operator", "server_list", {}),
    ("operator_servers", "operator: server list (50 per page)", "operator", "op_servers", {}),
    ("operator_operations", "operator: operations list (50 per page)", "operator", "op_operations", {}),
]

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- the worker's own process: the real PanelWorker with timers around the engine --------


def worker_child(timings_path: str, argv: list[str]) -> int:
    """`bench/panel.py --worker-child TIMINGS rqworker …`: manage.py's rqworker command, with
    timers (in this process only) that write one JSON line per run_operation to TIMINGS."""
    import django

    django.setup()
    install_worker_timers(Path(timings_path))
    from django.core.management import execute_from_command_line

    execute_from_command_line([str(REPO / "manage.py"), *argv])
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
        (jobs, "_refresh_accounts", "engine.accounts (refresh)"),
        (jobs, "_refresh_services", "engine.services (refresh)"),
        (jobs, "_claim", "db.claim"),
        (Operation, "finish", "db.finish"),
    ]:
        if hasattr(owner, attr):
            setattr(owner, attr, timed(label, getattr(owner, attr)))
    original = jobs.run_operation

    def run_operation(operation_id: int) -> str:
        state["events"] = []
        start, t0 = time.time(), time.perf_counter()
        result = "raised"
        try:
            result = original(operation_id)
            return result
        finally:
            line = {"op": operation_id, "result": result, "t0": start,
                    "run_ms": (time.perf_counter() - t0) * 1000, "events": state["events"]}
            state["events"] = None
            out.write(json.dumps(line) + "\n")

    jobs.run_operation = run_operation


def read_worker_timings(path: Path) -> dict[int, dict]:
    found: dict[int, dict] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("result") in ("deferred", "skipped", "missing"):
            continue
        found[int(row["op"])] = row
    return found


# --- processes we start ---------------------------------------------------------------------


def stop_process(proc: subprocess.Popen | None, name: str, grace: float) -> str | None:
    """SIGTERM PROC (by its PID), SIGKILL after GRACE seconds; a note if it had to be killed."""
    if proc is None or proc.poll() is not None:
        return None
    note = None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        note = f"{name} (pid {proc.pid}) did not stop in {grace:.0f} s; killed"
        proc.kill()
        proc.wait(timeout=10)
    return note


def _processes():
    """(pid, state, parent pid, session id) of every process, from /proc/PID/stat."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        yield int(entry.name), fields[0], int(fields[1]), int(fields[3])


def session_members(sid: int) -> list[int]:
    """PIDs of live processes in session SID (the one start_new_session made for a child)."""
    return [pid for pid, state, _parent, session in _processes() if state != b"Z" and session == sid]


def reap_zombies() -> int:
    """Collect exited children that no Popen waits for (guests' inits and RQ's scheduler are
    handed to us, a child subreaper, once the worker is gone). Not waitpid(-1): that would
    take the exit status of the children Popen waits for."""
    me, reaped = os.getpid(), 0
    for pid, state, parent, _session in _processes():
        if state == b"Z" and parent == me:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
            except ChildProcessError:
                pass
    return reaped


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
    ctx.worker_proc = spawn_worker(ctx, ctx.worker_log, scheduler=True)
    wait_for_workers(ctx, 1, [ctx.worker_proc])


def spawn_worker(ctx, log_path: Path, scheduler: bool) -> subprocess.Popen:
    """A PanelWorker process as `make run` starts it (manage.py rqworker), with the timers."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-child", str(ctx.worker_timings),
           "rqworker", "default", "--worker-class", "vservers.worker.PanelWorker",
           "--serializer", "rq.serializers.JSONSerializer", *(["--with-scheduler"] if scheduler else [])]
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
    WORKERS - 1 more, without a scheduler: one per node schedules the reconcile)."""
    ctx.extra_workers = [spawn_worker(ctx, ctx.tmp / f"worker-{i}.log", scheduler=False)
                         for i in range(2, workers + 1)]
    try:
        wait_for_workers(ctx, workers, [ctx.worker_proc, *ctx.extra_workers])
        phase = run_cycles(ctx, "many", k, k)
    finally:
        stop_extra_workers(ctx)
    phase["workers"] = workers
    return phase


def stop_extra_workers(ctx) -> None:
    for i, proc in enumerate(getattr(ctx, "extra_workers", [])):
        note = stop_process(proc, f"worker {i + 2}", 60)
        if note:
            ctx.notes.append(note)
    ctx.extra_workers = []


def start_gunicorn(ctx) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ctx.web_port = probe.getsockname()[1]
    ctx.access_log = ctx.tmp / "access.log"
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "panel.wsgi:application", "--chdir", str(REPO),
           "--bind", f"127.0.0.1:{ctx.web_port}", "--workers", "1",
           "--access-logfile", str(ctx.access_log), "--access-logformat", "%(U)s %(s)s %(D)s %(B)s",
           "--error-logfile", str(ctx.tmp / "gunicorn.log")]
    ctx.web_proc = subprocess.Popen(cmd, cwd=REPO, env=ctx.child_env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ctx.web_port), timeout=1):
                break
        except OSError:
            if ctx.web_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + tail(ctx.tmp / "gunicorn.log")) from None
            time.sleep(0.05)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the database ---------------------------------------------------------------------------


def setup_django(ctx) -> None:
    """Our own settings module (the panel's, with the database in our temporary directory:
    panel/settings.py reads no variable for the SQLite path), then migrate."""
    db = ctx.tmp / "db.sqlite3"
    (ctx.tmp / "benchpanel_settings.py").write_text(
        "from panel.settings import *  # noqa: F401,F403\n"
        "from panel.settings import ALLOWED_HOSTS, DATABASES\n\n"
        f"DATABASES['default']['NAME'] = {str(db)!r}\n"
        "ALLOWED_HOSTS = [*ALLOWED_HOSTS, 'testserver']\n"
    )
    ctx.child_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchpanel_settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "0",
        "REDIS_URL": ctx.redis_url,
        "PYTHONPATH": f"{ctx.tmp}{os.pathsep}{REPO}",
        "PANEL_RECONCILE_SECONDS": "30",
    }
    os.environ.update({k: ctx.child_env[k] for k in ("DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY",
                                                      "DJANGO_DEBUG", "REDIS_URL", "PANEL_RECONCILE_SECONDS")})
    sys.path.insert(0, str(ctx.tmp))
    import django

    django.setup()
    from django.core.management import call_command

    t0 = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    ctx.result["setup"]["migrate_s"] = round(time.monotonic() - t0, 3)


def make_world(ctx) -> None:
    """Node "local" (queue "default") with pool 198.19.216.0/21 that hands out 198.19.217.0 and
    up; plan, template, tenant "bench" with its admin, an operator; and, on an inactive node of
    their own, the crowd's tenants (alice is admin of the first)."""
    from django.contrib.auth import get_user_model
    from django.test import RequestFactory

    from accounts.models import Membership, Tenant
    from vservers.models import IPAddress, IPPool, Node, Plan, Template

    User = get_user_model()
    ctx.operator = User.objects.create_user("operator", "ops@bench.example", is_staff=True)
    ctx.node = Node.objects.create(name="local", queue_name="default", cpus=os.cpu_count() or 2)
    ctx.pool = IPPool.objects.create(name="bench", node=ctx.node, network=str(NETWORK), gateway=GATEWAY)
    reserved = [NETWORK.network_address + i for i in range(2, 256)]
    IPAddress.objects.bulk_create(IPAddress(pool=ctx.pool, address=str(ip)) for ip in reserved)
    ctx.plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    ctx.template = Template.objects.create(name=TEMPLATE, display_name="BusyBox")
    ctx.tenant = Tenant.objects.create(name="Bench", slug="bench", max_servers=100_000)
    ctx.admin = User.objects.create_user("bench-admin", "admin@bench.example")
    Membership.objects.create(user=ctx.admin, tenant=ctx.tenant, role=Membership.ADMIN)
    factory = RequestFactory()
    ctx.admin_request, ctx.operator_request = factory.post("/"), factory.post("/")
    ctx.admin_request.user, ctx.operator_request.user = ctx.admin, ctx.operator

    ctx.crowd_node = Node.objects.create(name="crowd", queue_name="crowd", is_active=False)
    ctx.crowd_pool = IPPool.objects.create(name="crowd", node=ctx.crowd_node, network=str(CROWD_NETWORK),
                                           gateway=str(CROWD_NETWORK.network_address + 1))
    ctx.crowd_tenants = [Tenant.objects.create(name=f"Crowd {i}", slug=f"crowd{i}", max_servers=100_000)
                         for i in range(4)]
    ctx.alice = User.objects.create_user("alice", "alice@crowd0.example")
    Membership.objects.create(user=ctx.alice, tenant=ctx.crowd_tenants[0], role=Membership.ADMIN)
    ctx.crowd = 0


def fill_crowd(ctx, upto: int) -> float:
    """Add crowd servers (states running, stopped, requested, error in turn; usage samples on
    the running ones) and OPS_PER_SERVER finished operations each, up to UPTO servers."""
    from django.utils import timezone

    from vservers.models import IPAddress, Operation, State, VirtualServer

    t0 = time.monotonic()
    now = timezone.now()
    states = [State.RUNNING, State.STOPPED, State.REQUESTED, State.ERROR]
    first = ctx.crowd
    servers = VirtualServer.objects.bulk_create(
        VirtualServer(tenant=ctx.crowd_tenants[i % 4], name=f"s{i}", hostname=f"s{i}.crowd.example", plan=ctx.plan,
                      template=ctx.template, node=ctx.crowd_node, state=states[i % 4],
                      **({"cpu_seconds": 12.5, "memory_bytes": 3 << 20, "pids": 4, "disk_used_bytes": 30 << 10,
                          "sampled_at": now} if states[i % 4] == State.RUNNING else {}))
        for i in range(first, upto)
    )
    IPAddress.objects.bulk_create(
        IPAddress(pool=ctx.crowd_pool, address=str(CROWD_NETWORK.network_address + 2 + i), server=server)
        for i, server in zip(range(first, upto), servers, strict=True)
    )
    kinds = [("provision", {}), ("start", {}), ("stop", {}), ("restart", {}), ("refresh", {}),
             ("account_add", {"account": "web"}), ("service_restart", {"service": "httpd"}), ("stop", {}),
             ("start", {}), ("change_plan", {"plan_id": ctx.plan.pk})]
    users = [ctx.operator, ctx.alice, None]
    Operation.objects.bulk_create(
        Operation(server=server, kind=kinds[j][0], params=kinds[j][1], status="failed" if j == 9 and i % 7 == 0
                  else "succeeded", output="ok", started=now, finished=now, requested_by=users[(i + j) % 3],
                  error="example failure" if j == 9 and i % 7 == 0 else "")
        for i, server in enumerate(servers) for j in range(OPS_PER_SERVER)
    )
    ctx.crowd = upto
    return time.monotonic() - t0


# --- page timings -------------------------------------------------------------------------


def _clients(ctx) -> dict:
    from django.test import Client

    clients = {}
    for who, user in (("alice", ctx.alice), ("operator", ctx.operator)):
        client = Client()
        client.force_login(user)
        clients[who] = client
    return clients


def _expected_status(headers: dict) -> int:
    return 304 if "If-None-Match" in headers else 200


def _headers(client, url: str, headers: dict) -> dict:
    """HEADERS with ETAG replaced by the ETag of a plain request's answer (the same user
    and data give the same ETag, whichever client asks)."""
    if headers.get("If-None-Match") != ETAG:
        return headers
    plain = {k: v for k, v in headers.items() if k != "If-None-Match"}
    return {**headers, "If-None-Match": _get(client, url, plain)["ETag"]}


def _get(client, url: str, headers: dict):
    response = client.get(url, headers=headers)
    if response.status_code != _expected_status(headers):
        raise RuntimeError(f"GET {url}: status {response.status_code}")
    return response


def visible_rows(content: bytes) -> int:
    """Table rows of the page (a <thead> holds one)."""
    return content.count(b"<tr") - content.count(b"<thead")


def crowd_rows(content: bytes) -> int:
    return len(set(re.findall(rb"\bs(\d+)\.crowd\.example", content)))


def time_pages(ctx, reps: int, profile_reps: int = 0) -> dict:
    """In-process with django.test.Client (the WSGI handler and every middleware, no network):
    3 warm-up requests, REPS timed ones, one more to count queries; PROFILE_REPS more under
    cProfile when asked."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    clients = _clients(ctx)
    out = {}
    for key, _label, who, name, headers in PAGES:
        client, url = clients[who], reverse(name)
        headers = _headers(client, url, headers)
        for _ in range(3):
            response = _get(client, url, headers)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _get(client, url, headers)
            times.append((time.perf_counter() - t0) * 1000)
        with CaptureQueriesContext(connection) as captured:
            response = _get(client, url, headers)
        page = {"url": url, "user": who, "ms": summary(times), "samples_ms": [round(t, 3) for t in times],
                "queries": len(captured.captured_queries), "bytes": len(response.content),
                "rows": visible_rows(response.content), "crowd_servers_shown": crowd_rows(response.content)}
        if profile_reps:
            profiler = cProfile.Profile()
            for _ in range(profile_reps):
                profiler.enable()
                _get(client, url, headers)
                profiler.disable()
            page["profile"] = profile_summary(profiler, profile_reps)
        out[key] = page
        log(f"  {key}: median {page['ms']['median']:.1f} ms, p95 {page['ms']['p95']:.1f} ms, "
            f"{page['queries']} queries, {page['rows']} rows, {page['bytes'] // 1000} kB")
    return out


def rows_split(ctx, reps: int) -> dict | None:
    """The server rows of the tenant's list (alice: a quarter) and of the operator's (every
    server) without a profiler: building them (vservers.views.tenant._server_rows: the query,
    model objects, usage meters) apart from rendering their template (_server_rows.html)."""
    from django.template.loader import render_to_string
    from django.test import RequestFactory

    try:
        from vservers.views.tenant import _server_rows
    except ImportError:
        return None
    out = {}
    for who, user in (("alice", ctx.alice), ("operator", ctx.operator)):
        request = RequestFactory().get("/servers/rows/")
        request.user = user
        build, render = [], []
        for _ in range(reps + 2):  # the first two warm up
            t0 = time.perf_counter()
            servers = _server_rows(request)
            t1 = time.perf_counter()
            render_to_string("vservers/tenant/_server_rows.html",
                             {"servers": servers, "show_tenant": user.is_staff, "can_request": True}, request=request)
            t2 = time.perf_counter()
            build.append((t1 - t0) * 1000)
            render.append((t2 - t1) * 1000)
        out[who] = {"rows": len(servers), "build_ms": summary(build[2:]), "render_ms": summary(render[2:]),
                    "render_per_row_ms": round(percentile(render[2:], 50) / max(1, len(servers)), 4),
                    "build_per_row_ms": round(percentile(build[2:], 50) / max(1, len(servers)), 4)}
        log(f"  rows of {who}: {len(servers)} rows, build {out[who]['build_ms']['median']:.1f} ms, "
            f"render {out[who]['render_ms']['median']:.1f} ms")
    return out


def time_pages_gunicorn(ctx, reps: int) -> dict:
    """The same pages from gunicorn (1 sync worker) on 127.0.0.1: the client's wall clock and
    gunicorn's own request time (access log %(D)s, microseconds)."""
    from django.conf import settings
    from django.urls import reverse

    clients = _clients(ctx)
    cookies = {who: client.cookies[settings.SESSION_COOKIE_NAME].value for who, client in clients.items()}
    out = {}
    for key, _label, who, name, headers in PAGES:
        url = reverse(name)
        headers = _headers(clients[who], url, headers)
        expected = _expected_status(headers)
        hdrs = {"Host": "127.0.0.1", "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookies[who]}", **headers}
        for _ in range(3):
            local_get(ctx.web_port, url, hdrs)
        offset = ctx.access_log.stat().st_size if ctx.access_log.exists() else 0
        wall = []
        for _ in range(reps):
            t0 = time.perf_counter()
            status, _body = local_get(ctx.web_port, url, hdrs)
            wall.append((time.perf_counter() - t0) * 1000)
            if status != expected:
                raise RuntimeError(f"gunicorn: GET {url}: status {status}")
        server = []
        deadline = time.monotonic() + 5
        while len(server) < reps and time.monotonic() < deadline:
            with open(ctx.access_log, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode(errors="replace").splitlines()
            server = [int(parts[2]) / 1000 for parts in (line.split() for line in lines)
                      if len(parts) >= 3 and parts[0] == url and parts[1] == str(expected) and parts[2].isdigit()]
            if len(server) < reps:
                time.sleep(0.05)
        out[key] = {"url": url, "wall_ms": summary(wall), "server_ms": summary(server[-reps:]),
                    "samples_wall_ms": [round(t, 3) for t in wall]}
        log(f"  gunicorn {key}: server median {out[key]['server_ms']['median']:.1f} ms, "
            f"client wall median {out[key]['wall_ms']['median']:.1f} ms")
    return out


def local_get(port: int, path: str, headers: dict) -> tuple[int, bytes]:
    """GET from our own gunicorn on 127.0.0.1 (http.client: no proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- profiles -----------------------------------------------------------------------------

CATEGORIES = [
    ("waiting (select, sleep, waitpid, pipe and socket reads)", None),
    ("SQLite (C library via sqlite3)", None),
    ("Django ORM (django/db)", "/django/db/"),
    ("Django templates", "/django/template"),
    ("Django URL reversing (django/urls)", "/django/urls/"),
    ("Django utils (escaping, formats, lazy objects)", "/django/utils/"),
    ("Django other (handler, middleware, sessions, auth, forms)", "/django/"),
    ("RQ", "/rq/"),
    ("redis client", "/redis/"),
    ("pyroute2 (netlink)", "/pyroute2/"),
    ("engine (vservers/engine)", "/vservers/engine/"),
    ("panel code (vservers, accounts, panel)", str(REPO)),
    ("other (stdlib, builtins)", ""),
]
WAIT_CALLS = ("select.select", "time.sleep", "posix.waitpid", "recv_into", "'recv'", "poll'", "epoll",
              "method 'acquire'", "'read' of '_io.BufferedReader'", "posix.read")


def categorize(filename: str, func: str) -> str:
    if filename == "~":
        if any(w in func for w in WAIT_CALLS):
            return CATEGORIES[0][0]
        if "sqlite3" in func:
            return CATEGORIES[1][0]
        return CATEGORIES[-1][0]
    for label, needle in CATEGORIES[2:]:
        if needle and needle in filename:
            return label
    return CATEGORIES[-1][0]


# Functions whose cumulative time per job the worker's profile reports: (label, file, function).
WORKER_WATCH = [
    ("PanelWorker.execute_job (all of one job but the dequeue)", "vservers/worker.py", "execute_job"),
    ("vservers.jobs.run_operation (the job itself)", "vservers/jobs.py", "run_operation"),
    ("… jobs._claim (server lock, busy check, claim UPDATE)", "vservers/jobs.py", "_claim"),
    ("… Operation.finish (update + re-read)", "vservers/models/operations.py", "finish"),
    ("RQ dequeue_job_and_maintain_ttl", "rq/worker/base.py", "dequeue_job_and_maintain_ttl"),
    ("RQ prepare_job_execution", "rq/worker/base.py", "prepare_job_execution"),
    ("RQ handle_job_success", "rq/worker/base.py", "handle_job_success"),
    ("Django close_old_connections (before and after each job)", "django/db/__init__.py", "close_old_connections"),
    ("Django: open a database connection (SQLite + PRAGMAs)", "django/db/backends/base/base.py", "connect"),
    ("PanelWorker.heartbeat (between jobs: housekeeping)", "vservers/worker.py", "heartbeat"),
    ("… reap_zombie_children (/proc scan)", "vservers/worker.py", "reap_zombie_children"),
    ("… PanelWorker.registered", "vservers/worker.py", "registered"),
    ("… PanelWorker.flush_outbox", "vservers/worker.py", "flush_outbox"),
    ("… PanelWorker.ensure_scheduler", "vservers/worker.py", "ensure_scheduler"),
]


def profile_summary(profiler: cProfile.Profile, per: int, top: int = 12, watch=()) -> dict:
    """Exclusive time per category, the top functions by cumulative time and the cumulative
    time of the WATCH functions, in ms per run."""
    stats = pstats.Stats(profiler)
    cats: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
        cats[categorize(filename, func)] += tt
        total += tt
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        where = filename.replace(str(REPO) + "/", "").split("site-packages/")[-1]
        rows.append({"function": f"{where}:{line}({func})" if filename != "~" else func,
                     "cum_ms": round(ct * 1000 / per, 3), "own_ms": round(tt * 1000 / per, 3),
                     "calls": round(nc / per, 1)})
    rows.sort(key=lambda r: -r["cum_ms"])
    own = sorted(rows, key=lambda r: -r["own_ms"])
    watched = {}
    for label, path, name in watch:
        found = [(ct, nc) for (filename, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items()
                 if func == name and filename.endswith(path)]
        if found:
            watched[label] = {"cum_ms": round(sum(ct for ct, _ in found) * 1000 / per, 3),
                              "calls": round(sum(nc for _, nc in found) / per, 2)}
    return {
        "runs": per,
        "total_ms": round(total * 1000 / per, 3),
        "watched": watched,
        "categories_ms": {k: round(v * 1000 / per, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_cumulative": rows[:top],
        "top_own": own[:top],
    }


# --- operations through the queue ---------------------------------------------------------


def new_server(ctx, name: str):
    """A request for a server, recorded as the tenant's request view records one (under the
    tenant's lock, with an audit entry)."""
    from django.db import transaction

    from accounts.models import AuditEntry, Tenant
    from vservers.models import State, VirtualServer

    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=ctx.tenant.pk).first()
        server = VirtualServer.objects.create(tenant=ctx.tenant, name=name, hostname=f"{name}.bench.example",
                                              plan=ctx.plan, template=ctx.template, state=State.REQUESTED,
                                              requested_by=ctx.admin)
        AuditEntry.record(ctx.admin_request, "server.request", server, plan=ctx.plan.name, template=TEMPLATE)
    return server


def submit(ctx, server, kind: str):
    """Step KIND of a cycle, as the views do it: the operator's approval (which queues the
    provisioning: create + start), then the tenant's stop and delete."""
    from vservers import actions

    if kind == "provision":
        return actions.approve(server, ctx.operator, node=ctx.node, request=ctx.operator_request)
    server.refresh_from_db(fields=["state", "state_reason", "node"])
    return actions.request_operation(server, kind, ctx.admin, request=ctx.admin_request)


OP_FIELDS = ("pk", "kind", "status", "error", "job_id", "created", "started", "finished")


def op_record(row: dict, cycle: int, submitted: float, seen: float, t0: float) -> dict:
    return {
        "op": row["pk"], "kind": row["kind"], "cycle": cycle, "status": row["status"],
        "error": row["error"][:300], "job_id": row["job_id"],
        "created": epoch(row["created"]), "started": epoch(row["started"]), "finished": epoch(row["finished"]),
        "submitted_s": round(submitted - t0, 4), "seen_s": round(seen - t0, 4),
    }


def run_cycles(ctx, label: str, k: int, concurrency: int) -> dict:
    """K cycles (request + approval → provision, stop, delete), at most CONCURRENCY at once;
    each next step is asked as soon as the bench sees the previous one finished (it looks at
    the rows every POLL seconds, POLL_MANY with several in flight)."""
    from vservers.actions import ActionRefused
    from vservers.models import FINISHED, Operation

    todo = list(range(k))
    active: dict[int, tuple[SimpleNamespace, float]] = {}
    cycles, ops = [], []
    t0 = time.monotonic()

    def ask(cycle: SimpleNamespace) -> None:
        try:
            op = submit(ctx, cycle.server, STEPS[cycle.step])
        except ActionRefused as exc:
            cycle.errors.append(f"{STEPS[cycle.step]} refused: {exc}")
            cycle.end = time.monotonic() - t0
            cycles.append(cycle)
            return
        active[op.pk] = (cycle, time.monotonic())

    while todo or active:
        while todo and len(active) < concurrency:
            i = todo.pop(0)
            cycle = SimpleNamespace(index=i, step=0, begin=time.monotonic() - t0, end=None, errors=[])
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
    add_rq_times(ops)
    return {
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


def add_rq_times(ops: list[dict]) -> None:
    """The RQ job's own timestamps (enqueued, started, ended) of each operation."""
    from django_rq import get_connection
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    connection = get_connection("default")
    for op in ops:
        if not op["job_id"]:
            continue
        try:
            job = Job.fetch(op["job_id"], connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        op["rq_enqueued"], op["rq_started"], op["rq_ended"] = (
            epoch(job.enqueued_at), epoch(job.started_at), epoch(job.ended_at))


def wait_op(pk: int) -> dict:
    from vservers.models import FINISHED, Operation

    deadline = time.monotonic() + OP_TIMEOUT
    while True:
        row = Operation.objects.filter(pk=pk, status__in=list(FINISHED)).values(*OP_FIELDS).first()
        if row is not None:
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"operation {pk} did not finish in {OP_TIMEOUT:.0f} s")
        time.sleep(POLL)


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


REUSE_TIMEOUT = 10.0


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


def profile_worker(ctx, cycles: int) -> dict:
    """After the worker process has stopped: one warm-up cycle, then CYCLES more cycles, each
    job run by a PanelWorker in this process (burst mode, as tests/panel/conftest.py's drain
    does). cProfile covers only what a long-running worker pays per job: PanelWorker's
    execute_job (RQ's preparation, the job, RQ's bookkeeping, Django's connection handling) and
    the dequeue; not burst mode's own start and teardown (registration, the pub/sub thread)."""
    from django_rq import get_connection
    from rq.serializers import JSONSerializer

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
            worker = PanelWorker([queue], connection=connection, serializer=JSONSerializer)
            worker.schedule_reconcile = False
            spent: list[float] = []
            for name in ("execute_job", "dequeue_job_and_maintain_ttl"):
                setattr(worker, name, _profiled(getattr(worker, name), profiler if i >= 0 else None, spent))
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
    return {"cycles": cycles, "jobs": jobs, "profiled_ms": {k: summary(v) for k, v in walls.items()},
            "profile": profile_summary(profiler, jobs, top=15, watch=WORKER_WATCH)}


def _profiled(method, profiler: cProfile.Profile | None, spent: list[float]):
    """METHOD run under PROFILER (if any); its wall time appended to SPENT (ms)."""

    def run(*args, **kwargs):
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            return method(*args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()
            spent.append((time.perf_counter() - t0) * 1000)

    return run


# --- analysis -----------------------------------------------------------------------------

COMPONENTS = [
    ("commit_to_redis", "row saved → job in Redis (commit, push)"),
    ("queue_wait", "waiting in the queue"),
    ("rq_to_claim", "RQ picks it up → operation claimed"),
    ("engine", "engine calls (create/start/stop/delete, guest reads)"),
    ("handler_db", "handler's own database work and Python"),
    ("rq_finish", "operation finished → RQ done with the job"),
]


def components(op: dict, timings: dict[int, dict]) -> dict | None:
    need = ("created", "started", "finished", "rq_enqueued", "rq_started", "rq_ended")
    if any(op.get(k) is None for k in need):
        return None
    worker = timings.get(op["op"])
    engine = sum(e[2] for e in worker["events"] if e[0].startswith("engine")) if worker else None
    run = (op["finished"] - op["started"]) * 1000
    out = {
        "commit_to_redis": (op["rq_enqueued"] - op["created"]) * 1000,
        "queue_wait": (op["rq_started"] - op["rq_enqueued"]) * 1000,
        "rq_to_claim": (op["started"] - op["rq_started"]) * 1000,
        "engine": engine if engine is not None else float("nan"),
        "handler_db": run - engine if engine is not None else float("nan"),
        "rq_finish": (op["rq_ended"] - op["finished"]) * 1000,
        "total": (op["rq_ended"] - op["created"]) * 1000,
    }
    if worker:
        for label, _start, dur in worker["events"]:
            out[label] = out.get(label, 0.0) + dur
        out["run_operation"] = worker["run_ms"]
    return out


def analyse_phase(phase: dict, timings: dict[int, dict]) -> None:
    """Per kind: summaries of the operation's times (from the rows, RQ and the worker's timers);
    between jobs: RQ's own time from one job's end to the next one's start while more waited."""
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for op in phase["operations"]:
        parts = components(op, timings)
        op["components_ms"] = {k: round(v, 3) for k, v in parts.items()} if parts else None
        if parts:
            by_kind[op["kind"]].append(parts)
    stats = {}
    for kind in STEPS:
        rows = by_kind.get(kind, [])
        keys = sorted({k for r in rows for k in r})
        stats[kind] = {k: summary([r[k] for r in rows if k in r and r[k] == r[k]]) for k in keys}
        stats[kind]["n"] = len(rows)
    phase["per_kind_ms"] = stats
    ordered = sorted((op for op in phase["operations"] if op.get("rq_started") and op.get("rq_ended")),
                     key=lambda op: op["rq_started"])
    gaps = []
    for prev, nxt in zip(ordered, ordered[1:], strict=False):
        # Only when the next job was already waiting: then the gap is the worker's own time.
        if nxt.get("rq_enqueued") and nxt["rq_enqueued"] < prev["rq_ended"]:
            gaps.append((nxt["rq_started"] - prev["rq_ended"]) * 1000)
    phase["between_jobs_ms"] = summary(gaps)


# --- report -------------------------------------------------------------------------------


def f1(value) -> str:
    return "—" if value is None or value != value else f"{value:.1f}"


def markdown(result: dict) -> str:
    info = result["host"]
    out = [
        "## Panel: list pages, operations through the queue, approval → HTTP",
        "",
        f"{info['date']}, kernel {info['kernel']}, {info['cpus']} CPUs, cgroup {info['cgroup']}, "
        f"commit {info['git_commit']}" + (f" (+ {len(info['uncommitted'])} uncommitted files of the panel/engine, "
                                          "listed in the JSON)" if info.get("uncommitted") else "") +
        f"; `bench/panel.py {' '.join(result['argv'])}` ({result['mode']}, "
        f"{result.get('run_s', 0):.0f} s; load average {result['loadavg_start'][0]:.1f} at the start, "
        f"{result.get('loadavg_end', [0])[0]:.1f} at the end: other work shares this machine). "
        "SQLite (WAL) in a temporary directory, a private redis-server on a "
        "Unix socket, one real PanelWorker process (JSON serializer, with its scheduler), busybox servers "
        f"on the installation's own bridge {BRIDGE}.",
    ]
    pages = result.get("pages")
    if pages:
        out += ["", "### List pages: server time", "",
                "In-process: `django.test.Client` (the WSGI handler with every middleware and the session, "
                "no network), after 3 warm-up requests. gunicorn: one sync worker on 127.0.0.1, its own "
                "request time (access log `%(D)s`) and the client's wall clock. The crowd: servers in 4 "
                f"tenants (the tenant admin sees a quarter), {OPS_PER_SERVER} finished operations per server. "
                f"Target: under {PAGE_TARGET_MS:.0f} ms at {TARGET_SCALE:,} servers.", ""]
        rows = []
        for scale in pages["scales"]:
            block = pages["by_scale"][str(scale)]
            guni = pages.get("gunicorn") if scale == TARGET_SCALE else None
            for key, label, *_ in PAGES:
                p = block["pages"][key]
                g = guni[key] if guni else None
                ok = "yes" if p["ms"]["median"] < PAGE_TARGET_MS else "**no**"
                rows.append([f"{scale:,} / {scale * OPS_PER_SERVER:,}", label, p["rows"], p["queries"],
                             f"{p['ms']['median']:.1f}", f"{p['ms']['p95']:.1f}",
                             f"{g['server_ms']['median']:.1f} / {g['server_ms']['p95']:.1f}" if g else "",
                             f"{g['wall_ms']['median']:.1f}" if g else "",
                             ok if scale == TARGET_SCALE else ""])
        out.append(md_table(["servers / operations", "page", "rows", "queries", "median ms", "p95 ms",
                             "gunicorn median / p95 ms", "client wall ms", f"< {PAGE_TARGET_MS:.0f} ms"], rows))
        prof = pages["by_scale"][str(TARGET_SCALE)]["pages"]
        cats = [label for label, _ in CATEGORIES]
        present = [c for c in cats if any(prof[k].get("profile", {}).get("categories_ms", {}).get(c) for k in prof)]
        if present:
            header = ["where the time goes (cProfile, ms per request, exclusive)"] + [k for k, *_ in PAGES]
            rows = [[c] + [f1(prof[k]["profile"]["categories_ms"].get(c, 0.0)) for k, *_ in PAGES] for c in present]
            rows.append(["**total (profiled)**"] + [f1(prof[k]["profile"]["total_ms"]) for k, *_ in PAGES])
            out += ["", f"At {TARGET_SCALE:,} servers, under cProfile (which inflates Python against C):", "",
                    md_table(header, rows)]
        split = pages["by_scale"][str(TARGET_SCALE)].get("rows_split")
        if split:
            rows = [[f"{who} ({v['rows']} rows)", f1(v["build_ms"]["median"]), f1(v["render_ms"]["median"]),
                     f"{v['build_per_row_ms']:.3f}", f"{v['render_per_row_ms']:.3f}"] for who, v in split.items()]
            out += ["", "The server rows of the first page without a profiler: `_server_rows()` (queries, values, "
                    "meters) apart from rendering `_server_rows.html`:", "",
                    md_table(["rows of", "build median ms", "render median ms", "build ms/row", "render ms/row"],
                             rows)]
        out += ["", "![page times](panel-pages.png)"]
    queue = result.get("queue")
    if queue:
        out += ["", "### Operations through the queue", "",
                "A cycle is what a tenant and the operator do: request a server, approve it (the worker "
                "provisions it: engine create + start + a first read of its accounts and services), stop, "
                "delete; each step asked (through `vservers.actions` as the views call it) as soon as the "
                f"previous one finished. Target: {CYCLE_TARGET_PER_S:.0f} cycles per second.", ""]
        rows = []
        many = (queue.get("inflight_workers") or {}).get("workers")
        for key, label in (("sequential", "one cycle at a time, one worker"),
                           ("inflight", "all cycles in flight at once, one worker"),
                           ("inflight_workers", f"all cycles in flight at once, {many} workers")):
            ph = queue.get(key)
            if not ph:
                continue
            ok = "yes" if (ph["cycles_per_s"] or 0) >= CYCLE_TARGET_PER_S else "**no**"
            rows.append([label, ph["cycles"], f"{ph['wall_s']:.1f}", f"{ph['cycles_per_s']:.2f}",
                         f"{ph['ops_per_s']:.2f}", f"{ph['cycle_s']['median']:.2f}", f"{ph['cycle_s']['p95']:.2f}",
                         len(ph["failed_cycles"]), ok])
        out.append(md_table(["phase", "cycles", "wall s", "cycles/s", "operations/s", "cycle median s",
                             "cycle p95 s", "failed", f"≥ {CYCLE_TARGET_PER_S:.0f}/s"], rows))
        for key, label in (("sequential", "one at a time"), ("inflight", "all in flight")):
            ph = queue.get(key)
            if not ph:
                continue
            rows = []
            for comp, text in [*COMPONENTS, ("total", "**row saved → RQ done**")]:
                cells = [text]
                for kind in STEPS:
                    s = ph["per_kind_ms"][kind].get(comp)
                    cells.append(f"{f1(s['median'])} / {f1(s['p95'])}" if s else "—")
                rows.append(cells)
            out += ["", f"Per operation, {label} (median / p95 ms; from the rows' and RQ's timestamps and "
                    "timers in the worker process):", "",
                    md_table(["part", *STEPS], rows)]
            engine_rows = []
            labels = sorted({k for kind in STEPS for k in ph["per_kind_ms"][kind] if k.startswith(("engine.", "db."))})
            for lab in labels:
                cells = [f"`{lab}`"]
                for kind in STEPS:
                    s = ph["per_kind_ms"][kind].get(lab)
                    cells.append(f1(s["median"]) if s else "")
                engine_rows.append(cells)
            if key == "sequential" and engine_rows:
                out += ["", "Inside the job (median ms):", "", md_table(["call", *STEPS], engine_rows)]
            if ph["between_jobs_ms"]["n"] >= 3:
                out += ["", f"The worker's own time between two jobs when the next one already waits ({label}): "
                        f"median {f1(ph['between_jobs_ms']['median'])} ms, p95 {f1(ph['between_jobs_ms']['p95'])} ms "
                        f"(n={ph['between_jobs_ms']['n']})."]
        rec = result.get("reconcile")
        if rec:
            out += ["", f"The worker's periodic reconcile job (every 30 s) ran {rec['runs']} times beside these, "
                    f"median {f1(rec['ms']['median'])} ms."]
        out += ["", "![operations](panel-queue.png)", "", "![in flight](panel-inflight.png)"]
    http = result.get("http")
    if http:
        s = http["approval_to_http_ms"]
        out += ["", "### Approval → HTTP 200", "",
                f"{http['runs']} runs, one server at a time: from the operator's approval (`actions.approve`: "
                "address, provision operation, commit, push to Redis) until the new server answers `GET /` "
                f"with 200 (polled every {POLL * 1000:.0f} ms once the panel shows it running, after `ip route get` "
                f"names {BRIDGE}: earlier requests would leave the host's ARP entry unresolved for a second).", "",
                md_table(["", "median ms", "p95 ms"], [
                    ["approval → HTTP 200", f1(s["median"]), f1(s["p95"])],
                    ["of which `approve()` itself", f1(http["approve_call_ms"]["median"]),
                     f1(http["approve_call_ms"]["p95"])],
                    ["approval → the panel shows it running", f1(http["running_ms"]["median"]),
                     f1(http["running_ms"]["p95"])],
                    ["approval → first TCP answer (connect or refusal)", f1(http["first_tcp_ms"]["median"]),
                     f1(http["first_tcp_ms"]["p95"])],
                ] + [[f"… {text}", f1(http["split_ms"][k]["median"]), f1(http["split_ms"][k]["p95"])]
                     for k, text in HTTP_SPLIT if k in http.get("split_ms", {})])]
        reuse = http.get("reuse")
        if reuse:
            what = (f"answered after {reuse['approval_to_http_ms']:.0f} ms" if reuse["approval_to_http_ms"] is not None
                    else f"did **not** answer within {REUSE_TIMEOUT:.0f} s")
            out += ["", f"Each run above had a fresh address. A server approved right after the others were "
                    f"deleted gets the lowest address again ({reuse['ip']}, whose last owner the host had just "
                    f"talked to): it {what} ({reuse['http_attempts']} attempts)."]
    prof = result.get("worker_profile")
    if prof:
        p = prof["profile"]
        rows = [[c, f1(v)] for c, v in p["categories_ms"].items() if v >= 0.05]
        rows.append(["**total (profiled)**", f1(p["total_ms"])])
        out += ["", f"### The worker's time per job (cProfile, {prof['jobs']} jobs in a PanelWorker in the "
                "bench's process, after the worker process stopped; `execute_job` and the dequeue only)", "",
                md_table(["category (exclusive time)", "ms per job"], rows), "",
                md_table(["function (cumulative)", "ms per job", "calls per job"],
                         [[label, f1(v["cum_ms"]), v["calls"]] for label, v in p.get("watched", {}).items()])]
    notes = result.get("setup_notes", []) + result.get("notes", [])
    if notes:
        out += ["", "Notes: " + " ".join(notes)]
    findings = result.get("findings")
    if findings:
        out += ["", "### Findings", ""] + [f"- {line}" for line in findings]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


HTTP_SPLIT = [
    ("to_claim", "approval → the worker claims the operation"),
    ("create", "engine create"),
    ("start", "engine start"),
    ("start_to_http", "start returned → first 200 (negative: answered before start returned)"),
]


def analyse_http(http: dict, timings: dict[int, dict]) -> None:
    split: dict[str, list[float]] = defaultdict(list)
    for s in http["samples"]:
        if s.get("started") is None:
            continue
        split["to_claim"].append((s["started"] - s["approved_at"]) * 1000)
        worker = timings.get(s["op"])
        if not worker:
            continue
        for label, start, dur in worker["events"]:
            if label == "engine.create":
                split["create"].append(dur)
            if label == "engine.start":
                split["start"].append(dur)
                split["start_to_http"].append((s["http_at"] - (start + dur / 1000)) * 1000)
        s["worker_events"] = worker["events"]
    http["split_ms"] = {k: summary(v) for k, v in split.items()}
    http["running_ms"] = summary([s["running_ms"] for s in http["samples"]])
    http["first_tcp_ms"] = summary([s["first_tcp_answer_ms"] for s in http["samples"]
                                    if s.get("first_tcp_answer_ms") is not None])


def findings(result: dict) -> list[str]:
    """The figures against the targets, in words (the report adds the causes)."""
    lines = []
    pages = result.get("pages")
    if pages:
        block = pages["by_scale"].get(str(TARGET_SCALE), {}).get("pages", {})
        slow = [f"{k} ({v['ms']['median']:.0f} ms)" for k, v in block.items() if v["ms"]["median"] >= PAGE_TARGET_MS]
        fast = [k for k, v in block.items() if v["ms"]["median"] < PAGE_TARGET_MS]
        lines.append(f"List pages at {TARGET_SCALE:,} servers: under {PAGE_TARGET_MS:.0f} ms: "
                     f"{', '.join(fast) or 'none'}" + (f"; over: {', '.join(slow)}." if slow else "."))
    queue = result.get("queue")
    if queue:
        for key, how in (("sequential", "one cycle at a time: each stop is asked right after its provision "
                                        "finished"),
                         ("inflight", "all in flight: a server has run for seconds when its stop comes")):
            ph = queue.get(key)
            if not ph:
                continue
            kinds = ph["per_kind_ms"]
            engine = {k: kinds[k].get("engine", {}).get("median") for k in STEPS}
            lines.append(f"{key} ({how}): {ph['cycles_per_s']:.2f} cycles/s against {CYCLE_TARGET_PER_S:.0f}. "
                         "Engine calls per cycle (medians): " +
                         ", ".join(f"{k} {f1(v)} ms" for k, v in engine.items()) + ".")
        ph = queue.get("sequential")
        if ph:
            # What the panel and RQ add to one operation, the engine's calls taken out (queue wait
            # counts: in one-at-a-time mode it is the worker getting to the job).
            overhead = [op["components_ms"]["total"] - op["components_ms"]["engine"] for op in ph["operations"]
                        if op.get("components_ms") and op["components_ms"].get("engine") is not None]
            if overhead:
                med = percentile(overhead, 50)
                lines.append(f"The panel and RQ add a median {med:.0f} ms to each operation around the engine's "
                             f"calls (row saved → RQ done, minus the engine), so {len(STEPS)} operations per cycle "
                             f"alone allow at most {1000 / (len(STEPS) * med):.1f} cycles/s with one worker.")
        many = queue.get("inflight_workers")
        if many:
            lines.append(f"With {many['workers']} worker processes on the queue: {many['cycles_per_s']:.2f} cycles/s "
                         f"against {CYCLE_TARGET_PER_S:.0f}; on {os.cpu_count()} CPUs the workers' Python and the "
                         "engine's forks share the same cores (8 workers gave no more than 4).")
    http = result.get("http")
    if http and http.get("reuse"):
        reuse = http["reuse"]
        if reuse["approval_to_http_ms"] is None:
            lines.append(f"A new server on a just-freed address ({reuse['ip']}) did not answer the host within "
                         f"{REUSE_TIMEOUT:.0f} s: the host kept the old owner's neighbour (ARP) entry.")
    return lines


def plots(result: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    pages = result.get("pages")
    if pages:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        keys = [k for k, *_ in PAGES]
        scales = pages["scales"]
        series = [(f"{s:,} servers (in-process)", [pages["by_scale"][str(s)]["pages"][k]["ms"] for k in keys])
                  for s in scales]
        if pages.get("gunicorn"):
            series.append((f"{TARGET_SCALE:,} servers (gunicorn)", [pages["gunicorn"][k]["server_ms"] for k in keys]))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(keys))]
            ax.bar(xs, [v["median"] for v in values], width, label=label)
            ax.scatter(xs, [v["p95"] for v in values], marker="_", color="black", s=80, zorder=3)
        ax.axhline(PAGE_TARGET_MS, color="red", linestyle="--", linewidth=1, label=f"target {PAGE_TARGET_MS:.0f} ms")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k.replace("_", "\n") for k in keys])
        ax.set_ylabel("server time, ms (bar: median, tick: p95)")
        ax.set_title("Panel list pages")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = common.RESULTS_DIR / "panel-pages.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path.name)
    queue = result.get("queue")
    if queue:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 1]})
        ax = axes[0]
        labels, bottoms = [], []
        bars = []
        # The queue wait (seconds when all are in flight) would dwarf the rest: left out here.
        shown = [(c, text) for c, text in COMPONENTS if c != "queue_wait"]
        for key in ("sequential", "inflight"):
            ph = queue.get(key)
            if not ph:
                continue
            for kind in STEPS:
                labels.append(f"{kind}\n{key}")
                bars.append([ph["per_kind_ms"][kind].get(c, {}).get("median", 0.0) or 0.0 for c, _ in shown])
        bottoms = [0.0] * len(bars)
        for ci, (_comp, text) in enumerate(shown):
            values = [b[ci] if b[ci] == b[ci] else 0.0 for b in bars]
            ax.bar(range(len(bars)), values, bottom=bottoms, label=text)
            bottoms = [x + y for x, y in zip(bottoms, values, strict=True)]
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("ms (medians)")
        ax.set_title("One operation, without its wait in the queue (medians)")
        ax.legend(fontsize=7)
        ax = axes[1]
        http = result.get("http")
        if http:
            values = [s["approval_to_http_ms"] for s in http["samples"]]
            ax.scatter([0] * len(values), values, alpha=0.6)
            ax.axhline(http["approval_to_http_ms"]["median"], color="black", linewidth=1, label="median")
            ax.set_xticks([])
            ax.set_ylim(bottom=0)
            ax.set_ylabel("ms")
            ax.set_title("approval → HTTP 200")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = common.RESULTS_DIR / "panel-queue.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path.name)
        ph = queue.get("inflight")
        if ph and ph["operations"]:
            fig, ax = plt.subplots(figsize=(10, 5))
            base = min(op["created"] for op in ph["operations"] if op["created"])
            colors = {"provision": "tab:green", "stop": "tab:orange", "delete": "tab:red"}
            ops = sorted(ph["operations"], key=lambda op: (op["started"] or 0))
            for y, op in enumerate(ops):
                if op["started"] is None or op["finished"] is None:
                    continue
                ax.plot([op["created"] - base, op["started"] - base], [y, y], color="lightgray", linewidth=1)
                ax.plot([op["started"] - base, op["finished"] - base], [y, y], color=colors[op["kind"]], linewidth=3)
            for kind, color in colors.items():
                ax.plot([], [], color=color, linewidth=3, label=f"{kind} running")
            ax.plot([], [], color="lightgray", label="queued")
            ax.set_xlabel("s since the first request")
            ax.set_ylabel("operation (by start)")
            ax.set_title(f"{ph['cycles']} cycles in flight, one worker: {ph['cycles_per_s']:.2f} cycles/s")
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = common.RESULTS_DIR / "panel-inflight.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            made.append(path.name)
    return made


# --- main ---------------------------------------------------------------------------------


def run(ctx, mode: dict) -> None:
    from vservers.engine import templates

    result = ctx.result
    t0 = time.monotonic()
    templates.build(ctx.engine.config, TEMPLATE)
    ctx.engine.config.servers_dir.mkdir(parents=True, exist_ok=True)  # the reconciler expects it
    result["setup"]["template_build_s"] = round(time.monotonic() - t0, 3)
    start_redis(ctx)
    setup_django(ctx)
    make_world(ctx)
    log(f"database migrated in {result['setup']['migrate_s']:.1f} s")

    pages: dict = {"scales": mode["scales"], "by_scale": {}}
    result["pages"] = pages
    for scale in mode["scales"]:
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
    log(f"approval → HTTP, {mode['http_runs']} runs")
    result["http"] = approval_to_http(ctx, mode["http_runs"])
    log(f"{mode['inflight']} cycles in flight at once, {mode['workers']} workers")
    result["queue"]["inflight_workers"] = run_with_more_workers(ctx, mode["workers"], mode["inflight"])
    log(f"  {result['queue']['inflight_workers']['cycles_per_s']} cycles/s")
    result["reconcile"] = reconcile_runs()
    log("stopping the worker process")
    common_stop(ctx, "worker_proc", "worker", 60)
    timings = read_worker_timings(ctx.worker_timings)
    for key in ("warmup", "sequential", "inflight"):
        analyse_phase(result["queue"][key], timings)
    analyse_http(result["http"], timings)
    log(f"profiling {mode['profile_cycles']} cycle(s) in this process")
    result["worker_profile"] = profile_worker(ctx, mode["profile_cycles"])


def reconcile_runs() -> dict:
    """The worker's periodic reconcile jobs that ran beside ours (RQ keeps finished jobs for
    500 s): how many, and how long each took."""
    from django_rq import get_connection
    from rq.job import Job
    from rq.registry import FinishedJobRegistry
    from rq.serializers import JSONSerializer

    from vservers.queues import get_queue

    connection = get_connection("default")
    registry = FinishedJobRegistry(queue=get_queue("default"))
    durations = []
    for job_id in registry.get_job_ids():
        if job_id.startswith("reconcile-"):
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            if job.started_at and job.ended_at:
                durations.append((epoch(job.ended_at) - epoch(job.started_at)) * 1000)
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
    problems += common.cleanup_installation(ctx.engine, log)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup_installation restored the defaults
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001 - Django may not be set up yet
        pass
    common_stop(ctx, "redis_proc", "redis-server", 15)
    # Each child had a session of its own: whatever is still in one (a gunicorn worker or RQ's
    # scheduler whose parent had to be killed) is ours to end. The guests' inits were in the
    # worker's session too; the engine has stopped them above.
    for attr in ("worker_proc", "web_proc", "redis_proc"):
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
    for attr in ("worker_proc", "web_proc", "redis_proc"):
        proc = getattr(ctx, attr, None)
        if proc is not None and proc.poll() is None:
            problems.append(f"{attr[:-5]} pid {proc.pid} still running")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return problems


def strip_samples(result: dict) -> None:
    """Keep the JSON readable: no per-request samples beyond 100 per page."""
    for scale in result.get("pages", {}).get("by_scale", {}).values():
        for page in scale["pages"].values():
            if len(page.get("samples_ms", [])) > 100:
                page.pop("samples_ms")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker-child"]:
        return worker_child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="every step once or twice (about a minute)")
    group.add_argument("--quick", action="store_true", help="the default: 20 cycles, 20 requests per page")
    group.add_argument("--full", action="store_true", help="100 cycles, 50 requests per page, also 3,000 servers")
    parser.add_argument("--name", default="panel", help="results file name (default: panel)")
    args = parser.parse_args(argv)
    mode_name = "smoke" if args.smoke else "full" if args.full else "quick"
    mode = MODES[mode_name]
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

    # Guests' inits and RQ's scheduler come to us, not to PID 1, if the worker dies first.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    engine = Engine(EngineConfig.from_env(env))
    result: dict = {"host": common.host_info(), "argv": argv, "mode": mode_name, "settings": mode, "setup": {},
                    "installation": {"root": ENV["VSERVER_ROOT"], "bridge": BRIDGE, "network": str(NETWORK),
                                     "uid_base": ENV["VSERVER_UID_BASE"], "pool_first": str(FIRST_GUEST),
                                     "crowd_network_rows_only": str(CROWD_NETWORK)}}
    result["setup_notes"] = [
        "panel/settings.py reads no variable for the SQLite file, so a settings module in the temporary "
        "directory imports panel.settings and sets DATABASES' NAME."]
    if ENV["VSERVER_UID_BASE"] != common.PANEL_ENV["VSERVER_UID_BASE"]:
        result["setup_notes"].append(
            f"common.PANEL_ENV's VSERVER_UID_BASE {common.PANEL_ENV['VSERVER_UID_BASE']} is above the engine's limit "
            f"(2^31); used {ENV['VSERVER_UID_BASE']}.")
    result["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    # What the run measured beyond HEAD: others change the tree while it runs.
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "vservers", "accounts", "panel",
                             "templates"], capture_output=True, text=True).stdout
    result["host"]["uncommitted"] = sorted(line[3:] for line in status.splitlines() if line[3:])
    ctx = SimpleNamespace(engine=engine, result=result, tmp=None, notes=[], redis_url=None)
    common.install_signal_handlers()
    ok = False
    started = time.monotonic()
    try:
        if engine.config.root.exists():
            log(f"{engine.config.root} exists from an earlier run: cleaning it first")
            left = common.cleanup_installation(engine, log)
            if left:
                raise RuntimeError(f"could not clean the earlier run: {left}")
            common.install_signal_handlers()
        ctx.tmp = Path(tempfile.mkdtemp(prefix="vservers-bench-panel-"))
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
    result["findings"] = findings(result)
    result["plots"] = plots(result)
    strip_samples(result)
    md = markdown(result)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    print()
    print(md)
    path = common.write_results(args.name, result, md)
    log(f"wrote {path}, {', '.join(result['plots'])} and {path.parent / 'SUMMARY.md'} in {result['run_s']:.0f} s")
    return 0 if not result["leftovers"] else 2


if __name__ == "__main__":
    sys.exit(main())
