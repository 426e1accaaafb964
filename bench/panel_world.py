"""The panel's own world for bench/panel.py: its installation and the figures it aims at, a
Django settings module and database of its own, the crowd of servers that exist only as rows,
and the steps of a cycle asked as the views ask them."""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

from bench import common

# The engine accepts uid bases below 2^31 only; if common.PANEL_ENV's were above, this one would
# be used (and noted in the results): clear of the other installations (tests 5M-600M+, bench
# 700M+, overhead 1.5G+), with room for 4,000 servers of 65,536 ids below 2^31.
UID_BASE_FALLBACK = 1_900_000_000
ENV, UID_NOTE = common.below_uid_limit(common.PANEL_ENV, "PANEL_ENV", UID_BASE_FALLBACK)
NETWORK = common.network_of(ENV)  # 198.19.216.0/21
BRIDGE = ENV["VSERVER_BRIDGE"]
GATEWAY = str(ipaddress.ip_interface(ENV["VSERVER_GATEWAY"]).ip)
# The pool's first address handed out: 198.19.217.0 (the rest of 198.19.216.0/24 is reserved).
FIRST_GUEST = NETWORK.network_address + 256
# Addresses of the crowd (1,000 servers that exist only as rows, on an inactive node of their
# own): never configured anywhere, never contacted.
CROWD_NETWORK = ipaddress.ip_network("198.18.64.0/20")
TEMPLATE = "busybox"
TARGET_SCALE = 1000  # servers; the operations are 10 per server
OPS_PER_SERVER = 10
PAGE_TARGET_MS = 100.0
CYCLE_TARGET_PER_S = 10.0
OP_TIMEOUT = 120.0
HTTP_TIMEOUT = 30.0
REUSE_TIMEOUT = 10.0  # for a server on a just-freed address to answer
POLL = 0.002  # seconds between looks at the operations' rows, and between HTTP attempts
# Between looks at the rows while many cycles are in flight: the workers have a backlog then,
# so a later look costs them no work, and each look is about a millisecond of the bench's CPU
# on the same 2 cores (at 10 ms the bench's process took a quarter of the machine per cycle).
POLL_MANY = 0.025
STEPS = ["provision", "stop", "delete"]  # one cycle; provision = create + start

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- the database ---------------------------------------------------------------------------


def setup_django(ctx) -> None:
    """Our own settings module (the panel's, with the database in our temporary directory:
    panel/settings.py reads no variable for the SQLite path), then migrate."""
    db = ctx.tmp / "db.sqlite3"
    # On PostgreSQL (DATABASE_URL from scripts/with-postgres: a database made for the run) the
    # settings' database is used as it is.
    on_postgres = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    (ctx.tmp / "benchpanel_settings.py").write_text(
        "from panel.settings import *  # noqa: F401,F403\n"
        "from panel.settings import ALLOWED_HOSTS, DATABASES\n\n"
        + ("" if on_postgres else f"DATABASES['default']['NAME'] = {str(db)!r}\n"
           # --write-gate-ab: the worker processes of the arm without the gate (panel/sqlite).
           "import os\n"
           "if os.environ.get('BENCH_WRITE_GATE') == '0':\n"
           "    DATABASES['default']['OPTIONS']['write_gate'] = False\n")
        + "ALLOWED_HOSTS = [*ALLOWED_HOSTS, 'testserver']\n"
    )
    ctx.child_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchpanel_settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "0",
        "REDIS_URL": ctx.redis_url,
        "PYTHONPATH": f"{ctx.tmp}{os.pathsep}{common.REPO}",
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
    ctx.plan = Plan.objects.create(name="small", cpus=Decimal("0.5"), memory_mb=64, disk_mb=256, pids=128)
    ctx.template = Template.objects.create(name=TEMPLATE, display_name="BusyBox")
    # Quotas with room for every cycle in flight: what is measured is the queue, not a refusal.
    ctx.tenant = Tenant.objects.create(name="Bench", slug="bench", max_servers=100_000, max_cpus=9999,
                                       max_memory_mb=100_000_000, max_disk_mb=100_000_000)
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


# --- a cycle's steps, asked as the views ask them ------------------------------------------


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


def submit(ctx, server, kind: str, node=None):
    """Step KIND of a cycle, as the views do it: the operator's approval on NODE (ctx.node by
    default; it queues the provisioning: create + start), then the tenant's stop and delete."""
    from vservers import actions

    if kind == "provision":
        return actions.approve(server, ctx.operator, node=node or ctx.node, request=ctx.operator_request)
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
