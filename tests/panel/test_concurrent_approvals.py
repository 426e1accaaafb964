"""Fifty operators approve fifty servers at once against a pool of 29 addresses: no address is
ever given twice, exactly as many servers as there are addresses are approved, and every other
approval is refused as a whole (the server stays requested, with no address and no operation).

Each thread has its own database connection, so the approvals really race: on SQLite the
IMMEDIATE transactions serialize the writers, on PostgreSQL the pool row lock does; the unique
constraint on IPAddress.address is the backstop either way.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection, connections, transaction

from accounts.models import Membership, Tenant
from tests.panel import faults
from vservers import actions
from vservers.models import IPAddress, IPPool, Node, Operation, OperationKind, Plan, State, Template, VirtualServer

# Run on SQLite and again on PostgreSQL (make test, scripts/with-postgres).
pytestmark = pytest.mark.both_databases

REQUESTS = 50


file_database = faults.file_database


@pytest.fixture
def queued(monkeypatch):
    """Queueing is the outside world: record the operations that would be sent to Redis, at
    the moment they would be (when the approving transaction commits)."""
    calls: list[int] = []
    lock = threading.Lock()

    def record(operation: Operation) -> None:
        def push() -> None:
            with lock:
                calls.append(operation.pk)

        transaction.on_commit(push)

    monkeypatch.setattr(actions, "enqueue", record)
    return calls


@pytest.fixture
def crowd(file_database, django_user_model, settings):
    """A node with a single /27 pool (29 addresses besides the gateway) and fifty requests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    node = Node.objects.create(name="local", queue_name="default")
    pool = IPPool.objects.create(name="tiny", node=node, network="198.19.129.0/27", gateway="198.19.129.1")
    plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=256, disk_mb=1024)
    template = Template.objects.create(name="busybox", display_name="BusyBox")
    # Quotas with room for every request: what is raced for here is the pool's addresses.
    tenant = Tenant.objects.create(name="Acme", slug="acme", max_servers=REQUESTS, max_cpus=REQUESTS,
                                   max_memory_mb=REQUESTS * 256, max_disk_mb=REQUESTS * 1024)
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    Membership.objects.create(user=alice, tenant=tenant, role=Membership.ADMIN)
    operator = django_user_model.objects.create_user("op", "op@example.com", "pw", is_staff=True)
    servers = [
        VirtualServer.objects.create(
            tenant=tenant,
            name=f"web{i}",
            hostname=f"web{i}.example.test",
            plan=plan,
            template=template,
            requested_by=alice,
        )
        for i in range(REQUESTS)
    ]
    return node, pool, operator, servers


def approve_all_at_once(node, operator, server_ids) -> dict[int, str]:
    """Run actions.approve for every server id from its own thread, all released together.
    Returns server id -> "ok" or the refusal message."""
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(server_ids))

    def approve(server_id: int) -> None:
        try:
            server = VirtualServer.objects.get(pk=server_id)
            barrier.wait(timeout=30)
            actions.approve(server, operator, node=node)
            results[server_id] = "ok"
        except actions.ActionRefused as exc:
            results[server_id] = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - the test reports every unexpected error
            results[server_id] = f"error: {type(exc).__name__}: {exc}"
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=approve, args=(pk,)) for pk in server_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "an approval hung"
    return results


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_approvals_never_give_an_address_twice(crowd, queued):
    node, pool, operator, servers = crowd
    assert pool.size == 29 < REQUESTS  # fewer addresses than requests

    results = approve_all_at_once(node, operator, [s.pk for s in servers])
    connection.close()  # see the threads' commits with a fresh connection

    errors = {pk: r for pk, r in results.items() if r.startswith("error")}
    assert not errors, errors
    approved = [pk for pk, r in results.items() if r == "ok"]
    refused = {pk: r for pk, r in results.items() if r.startswith("refused")}
    assert len(approved) == pool.size
    assert len(refused) == REQUESTS - pool.size
    assert all("no free address" in message for message in refused.values()), set(refused.values())

    # Every address is unique, inside the pool, and held by one approved server.
    addresses = list(IPAddress.objects.values_list("address", "server_id"))
    assert len(addresses) == pool.size
    assert len({a for a, _ in addresses}) == len(addresses)
    assert {a for a, _ in addresses} == {str(h) for h in pool.iter_hosts()}
    per_server = Counter(server_id for _, server_id in addresses)
    assert set(per_server) == set(approved)
    assert max(per_server.values()) == 1  # no server has two addresses

    # The approved ones moved on, with one provision operation each, queued after commit.
    assert set(VirtualServer.objects.filter(state=State.APPROVED).values_list("pk", flat=True)) == set(approved)
    assert set(VirtualServer.objects.filter(node=node).values_list("pk", flat=True)) == set(approved)
    provisions = Operation.objects.filter(kind=OperationKind.PROVISION)
    assert sorted(provisions.values_list("server_id", flat=True)) == sorted(approved)
    assert sorted(queued) == sorted(provisions.values_list("pk", flat=True))

    # A refused approval rolled back entirely: still requested, no node, no address, no operation.
    for server in VirtualServer.objects.filter(pk__in=refused):
        assert server.state == State.REQUESTED
        assert server.node_id is None
        assert not server.addresses.exists()
        assert not server.operations.exists()
