"""Fill an empty database with a small demo world.

    manage.py demo [--password PW] [--provision] [--if-empty]

Users: `operator` (staff, superuser), `alice` (admin of tenant acme) and `bob` (admin of
tenant globex), all with the same password (generated and printed when not given). Plans
"small" and "medium", the busybox template, node "local" (queue "default") with the address
pool "demo" 198.18.0.0/16. Each tenant gets a server recorded as running (an address, no
server on the node yet) and a request awaiting approval.

--provision makes it real: the requests are approved through vservers.actions.approve and the
"running" records get a provision operation, so the node's worker creates and starts all of
them (if Redis is not up yet, the worker's reconcile job sends them when it starts).

A database with any user, tenant, plan, template, node, pool or server is refused, so running
the command twice changes nothing; --if-empty turns that refusal into a note (exit status 0).
"""

from __future__ import annotations

import logging
import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Model

from accounts.models import Membership, Tenant
from vservers.actions import approve, request_operation
from vservers.models import IPPool, Node, Operation, OperationKind, Plan, State, Template, VirtualServer

PLANS = [
    # name, cpus, memory MB, disk MB, pids
    ("small", "0.5", 64, 256, 128),
    ("medium", "1", 256, 1024, 512),
]
TENANTS = [
    # slug, name, admin, servers: (name, plan, state)
    ("acme", "Acme Corporation", "alice", [("www", "small", State.RUNNING), ("shop", "medium", State.REQUESTED)]),
    ("globex", "Globex Inc.", "bob", [("web", "small", State.RUNNING), ("mail", "small", State.REQUESTED)]),
]
POOL = ("demo", "198.18.0.0/16", "198.18.0.1")


class Command(BaseCommand):
    help = "Fill an empty database with demo users, tenants, plans, a node, an address pool and servers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--password", help="password of every demo user (default: generated and printed)")
        parser.add_argument(
            "--provision", action="store_true", help="approve the requests and have the worker create every server"
        )
        parser.add_argument(
            "--if-empty", action="store_true", help="on a database with data, say so and exit successfully"
        )

    def handle(self, *args, password: str | None = None, provision: bool = False, if_empty: bool = False,
               **options) -> None:
        if password is not None and not password:
            raise CommandError("--password must not be empty")
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        with transaction.atomic():
            found = existing_data()
            if found:
                message = f"the database is not empty ({found}); demo only fills an empty database"
                if if_empty:
                    self.stdout.write(f"No demo data added: {message}.")
                    return
                raise CommandError(message)
            world = build_world(password)
        self.stdout.write(self.style.SUCCESS("Demo data created."))
        self.stdout.write("  users: operator (staff), alice (acme), bob (globex)")
        if generated:
            self.stdout.write(f"  password of all three (shown only now): {password}")
        if provision:
            operations = self.provision(world)
            delayed = Operation.objects.filter(pk__in=[o.pk for o in operations], error__startswith="queueing delayed")
            self.stdout.write(f"  queued {len(operations)} provision operations for the worker")
            if delayed.exists():
                self.stdout.write(
                    f"  {delayed.count()} of them wait for Redis; the worker sends them when it starts"
                )

    def provision(self, world: dict) -> list[Operation]:
        operator, node = world["operator"], world["node"]
        operations = []
        # `make run` fills the demo before it starts Redis, so queueing fails for every server,
        # and vservers.actions would warn once per operation; handle() says it once instead.
        actions_log = logging.getLogger("vservers.actions")
        level = actions_log.level
        actions_log.setLevel(logging.ERROR)
        try:
            for server in world["servers"]:
                if server.state == State.REQUESTED:
                    operations.append(approve(server, operator, node=node))
                else:
                    operations.append(request_operation(server, OperationKind.PROVISION, operator))
        finally:
            actions_log.setLevel(level)
        return operations


def existing_data() -> str:
    """What the database already holds, e.g. "2 users, 1 node"; empty if nothing."""
    models: list[tuple[str, type[Model]]] = [
        ("users", get_user_model()),
        ("tenants", Tenant),
        ("plans", Plan),
        ("templates", Template),
        ("nodes", Node),
        ("address pools", IPPool),
        ("servers", VirtualServer),
    ]
    counts = [(label, model._default_manager.count()) for label, model in models]
    return ", ".join(f"{n} {label}" for label, n in counts if n)


def build_world(password: str) -> dict:
    User = get_user_model()
    operator = User.objects.create_superuser("operator", "operator@example.com", password)
    plans = {
        name: Plan.objects.create(name=name, cpus=cpus, memory_mb=memory, disk_mb=disk, pids=pids,
                                  description=f"{cpus} CPU, {memory} MB memory, {disk} MB disk")
        for name, cpus, memory, disk, pids in PLANS
    }
    template = Template.objects.create(
        name="busybox", display_name="BusyBox", description="a minimal system with a web server (httpd)"
    )
    node = Node.objects.create(
        name="local",
        queue_name="default",
        cpus=os.cpu_count() or 2,
        memory_mb=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20,
    )
    pool_name, network, gateway = POOL
    pool = IPPool.objects.create(name=pool_name, node=node, network=network, gateway=gateway)
    servers = []
    for slug, name, admin, wanted in TENANTS:
        tenant = Tenant.objects.create(name=name, slug=slug, contact_email=f"{admin}@{slug}.example")
        user = User.objects.create_user(admin, f"{admin}@{slug}.example", password)
        Membership.objects.create(user=user, tenant=tenant, role=Membership.ADMIN)
        for server_name, plan, state in wanted:
            server = VirtualServer.objects.create(
                tenant=tenant,
                name=server_name,
                hostname=f"{server_name}.{slug}.example",
                plan=plans[plan],
                template=template,
                state=state,
                requested_by=user,
                node=node if state != State.REQUESTED else None,
            )
            if state != State.REQUESTED:
                pool.allocate(server)
            servers.append(server)
    return {"operator": operator, "node": node, "servers": servers}
