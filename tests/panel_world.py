"""The panel's fixtures, for every test directory (registered once by tests/conftest.py): a
private Redis, the tests' own engine installation (PANEL_ENV: its own root, bridge vspanel0 and
198.19.128.0/18), a small world of rows, and a real PanelWorker that drains the queues in this
process (no fork, like NetBox's tests).

For the view tests, which need neither: `queued` records what would have been queued, and
`offline_world` is a world of database rows only.

Nothing here is autouse: tests that need neither Redis nor the engine pay for neither.
"""

from __future__ import annotations

import os
import signal
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone

from tests.leaks import PANEL_ENV
from tests.panel_fixtures import remove_all as _remove_all

BRIDGE = PANEL_ENV["VSERVER_BRIDGE"]
POOL_NETWORK = "198.19.128.0/18"
POOL_GATEWAY = "198.19.128.1"


# --- Redis ---------------------------------------------------------------------------------
# The private redis-server (panel_redis) and the engine installation (panel_engine) are
# session fixtures of tests/conftest.py (tests/panel_fixtures.py): tests/api uses them too, and
# a session must make each once.


@pytest.fixture
def rq_redis(settings, panel_redis):
    """The panel's queues on the private Redis, emptied before and after the test; the
    connection."""
    import django_rq

    from vservers.nodes.queues import node_queues

    settings.REDIS_URL = panel_redis
    settings.RQ_QUEUES = node_queues(panel_redis, timeout=600)
    connection = django_rq.get_connection("default")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def drain(rq_redis):
    """drain() runs every queued job with a real PanelWorker (RQ's SimpleWorker with PanelJob
    and JSON) in this process, in burst mode. Nothing else of the node's worker process runs
    (no watch): tests that need a reconcile run call reconcile_node themselves."""
    from vservers.queues import get_queue
    from vservers.worker import PanelWorker

    def run(*queue_names: str):
        queues = [get_queue(name) for name in queue_names or ("default",)]
        # RQ installs its own SIGINT/SIGTERM handlers; pytest's must come back.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        worker = PanelWorker(queues, connection=rq_redis)
        try:
            worker.work(burst=True)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return worker

    return run


# --- the engine ------------------------------------------------------------------------------


@pytest.fixture
def engine(panel_engine):
    """The engine, with no server left over from this test for the next one (the database is
    emptied between tests, so the next one hands out the same addresses again)."""
    yield panel_engine
    _remove_all(panel_engine)


# --- rows ------------------------------------------------------------------------------------


@pytest.fixture
def world(transactional_db, django_user_model, rq_redis, engine):
    """Node "local" (queue "default") with pool 198.19.128.0/18, plans small and medium, the
    busybox template, tenants acme (admin alice) and globex (admin bob), operator."""
    from accounts.models import Membership, Tenant
    from vservers.models import IPPool, Node, Plan, Template

    w = SimpleNamespace()
    w.engine = engine
    w.node = Node.objects.create(name="local", queue_name="default", last_seen=timezone.now())
    w.pool = IPPool.objects.create(name="test", node=w.node, network=POOL_NETWORK, gateway=POOL_GATEWAY)
    w.small = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    w.medium = Plan.objects.create(name="medium", cpus="1", memory_mb=256, disk_mb=512, pids=512)
    w.busybox = Template.objects.create(name="busybox", display_name="BusyBox")
    # What the node's worker records at its first reconcile: the session's busybox build, which
    # placement needs before it puts a server on the node.
    from vservers.jobs import record_templates

    record_templates(w.node)
    w.operator = django_user_model.objects.create_user("operator", is_staff=True)
    for slug, admin in (("acme", "alice"), ("globex", "bob")):
        tenant = Tenant.objects.create(name=slug.title(), slug=slug)
        user = django_user_model.objects.create_user(admin, f"{admin}@{slug}.example")
        Membership.objects.create(user=user, tenant=tenant, role=Membership.ADMIN)
        setattr(w, slug, tenant)
        setattr(w, admin, user)
    return w


@pytest.fixture
def make_server(world):
    """make_server(name) records a server awaiting approval."""
    from vservers.models import VirtualServer

    def make(name="web", tenant=None, template=None, plan=None, autostart=True, **fields):
        tenant = tenant or world.acme
        return VirtualServer.objects.create(
            tenant=tenant,
            name=name,
            hostname=f"{name}.{tenant.slug}.example",
            plan=plan or world.small,
            template=template or world.busybox,
            autostart=autostart,
            **fields,
        )

    return make


@pytest.fixture
def provision(world, make_server, drain):
    """provision(name, ...) approves and provisions servers through the worker and waits until
    each answers HTTP; returns them, refreshed."""
    from vservers.actions import approve
    from vservers.models import OperationStatus, State

    def run(*names: str, **fields):
        servers = [make_server(name, **fields) for name in names or ("web",)]
        # The servers these tests need, whatever the tenant's quota (quotas: test_actions) and
        # the node's ratios (pinned on it: placement is test_placement's).
        operations = [approve(server, world.operator, node=world.node, check_quota=False) for server in servers]
        drain()
        for server, operation in zip(servers, operations, strict=True):
            operation.refresh_from_db()
            server.refresh_from_db()
            assert operation.status == OperationStatus.SUCCEEDED, operation.error + "\n" + operation.output
            assert server.state == State.RUNNING
            wait_for_http(server.ip_list()[0])
        return servers if len(servers) > 1 else servers[0]

    return run


# --- rows without Redis or the engine ----------------------------------------------------------


# A tenant with small quotas and plans around them (tests of forms and of vservers.actions).


@pytest.fixture
def acme(db):
    from accounts.models import Tenant

    return Tenant.objects.create(
        name="Acme", slug="acme", max_servers=3, max_cpus=Decimal("2"), max_memory_mb=2048, max_disk_mb=8192
    )


@pytest.fixture
def small(db):
    from vservers.models import Plan

    return Plan.objects.create(name="small", cpus=Decimal("0.5"), memory_mb=512, disk_mb=2048)


@pytest.fixture
def large(db):
    from vservers.models import Plan

    return Plan.objects.create(name="large", cpus=Decimal("2"), memory_mb=2048, disk_mb=8192)


@pytest.fixture
def busybox(db):
    from vservers.models import Template

    return Template.objects.create(name="busybox", display_name="BusyBox")



FAST_HASHER = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def queued(monkeypatch):
    """The operations that would have been sent to a node's queue, in order:
    vservers.actions.enqueue is replaced by a recorder, so no Redis is needed."""
    from vservers import actions

    calls: list = []
    monkeypatch.setattr(actions, "enqueue", calls.append)
    return calls


@pytest.fixture
def offline_pool():
    """The fields of offline_world's address pool; a test module may override this fixture."""
    return {"name": "test", "network": "198.19.128.0/24", "gateway": "198.19.128.1"}


@pytest.fixture
def offline_plans():
    """The plans offline_world creates, name -> fields (each becomes an attribute of the world
    by its name); a test module may override this fixture."""
    return {
        "small": {"cpus": "0.5", "memory_mb": 256, "disk_mb": 1024},
        "medium": {"cpus": "1", "memory_mb": 512, "disk_mb": 4096},
    }


@pytest.fixture
def offline_world(db, django_user_model, settings, queued, offline_pool, offline_plans):
    """A world of database rows only (no Redis, no engine; queueing goes to `queued`), unlike
    `world` above: node "local" (queue "default") with pool "test" 198.19.128.0/24, gateway
    198.19.128.1 (see offline_pool), plans small and medium (see offline_plans), the busybox
    template (recorded as built on the node), tenants Acme (admin alice) and Globex (admin bob),
    and operator, a staff user.

    Passwords, hashed with the fast MD5 hasher: "alice password 1", "bob password 1" and
    "operator pw 1". Attributes: node, pool, one per plan, busybox, acme, globex, alice, bob,
    operator and queued."""
    from django.utils import timezone

    from accounts.models import Membership, Tenant
    from vservers.models import BuiltTemplate, IPPool, Node, Plan, Template

    settings.PASSWORD_HASHERS = FAST_HASHER
    w = SimpleNamespace(queued=queued)
    w.node = Node.objects.create(name="local", queue_name="default", last_seen=timezone.now())
    w.pool = IPPool.objects.create(node=w.node, **offline_pool)
    for name, fields in offline_plans.items():
        setattr(w, name, Plan.objects.create(name=name, **fields))
    w.busybox = Template.objects.create(name="busybox", display_name="BusyBox")
    # Built on the node, as its worker would record it: placement puts servers only there.
    BuiltTemplate.objects.create(template=w.busybox, node=w.node, version="20261206-000000-000000",
                                 checked=timezone.now())
    w.acme = Tenant.objects.create(name="Acme", slug="acme")
    w.globex = Tenant.objects.create(name="Globex", slug="globex")
    w.alice = django_user_model.objects.create_user("alice", "alice@acme.test", "alice password 1")
    Membership.objects.create(user=w.alice, tenant=w.acme, role=Membership.ADMIN)
    w.bob = django_user_model.objects.create_user("bob", "bob@globex.test", "bob password 1")
    Membership.objects.create(user=w.bob, tenant=w.globex, role=Membership.ADMIN)
    w.operator = django_user_model.objects.create_user("operator", "ops@example.test", "operator pw 1", is_staff=True)
    return w


# --- talking to the servers --------------------------------------------------------------------


def http_get(address: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET / from a server, only after `ip route get` names our own bridge."""
    from tests.engine.helpers import http_get as get

    return get(address, timeout=timeout, bridge=BRIDGE)


def wait_for_http(address: str, timeout: float = 15.0) -> None:
    from tests.engine.helpers import wait_for_http as wait

    wait(address, timeout=timeout, bridge=BRIDGE)


@pytest.fixture
def http():
    return SimpleNamespace(get=http_get, wait=wait_for_http)


# --- a real browser ----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    """Debian's chromium driven by Playwright (no browser is downloaded)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make install)")
    playwright = pytest.importorskip("playwright.sync_api")
    # Django refuses ORM calls from a thread that runs an event loop; Playwright's sync API runs one.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
