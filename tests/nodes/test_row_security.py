"""A node's database role limited by row (vservers.nodes.rowsecurity), measured on a real
PostgreSQL: two nodes' roles made by credentials.grant, and a connection as node a's role
that runs into node b's rows and not into its own (the positive control, in the same test).
PostgreSQL only (make test's second pass); every table has a rule on both databases."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.utils import timezone

from alerts.models import AlertRule, Kind
from tests.roles import require_role_creation
from vservers.models import (
    IPAddress,
    IPPool,
    Migration,
    MigrationPhase,
    Node,
    Operation,
    OperationKind,
    Plan,
    Snapshot,
    Template,
    VirtualServer,
)
from vservers.nodes import credentials, rowsecurity

pytestmark = [pytest.mark.both_databases]


def test_every_worker_table_has_a_rule():
    """A table added to an app whose rows the worker keeps gets a decision, or this fails."""
    through = IPPool.shared_with.through._meta.db_table
    assert set(rowsecurity.TABLES) == {*credentials.worker_tables(), through}


@pytest.fixture
def two_nodes(transactional_db, django_user_model):
    """Nodes a and b, each with its role (credentials.grant), a pool, a server with an address,
    an operation and a snapshot; yields the rows and a's DATABASE_URL. The roles are dropped
    after."""
    from accounts.models import Tenant

    require_role_creation("row-level security is PostgreSQL's")
    tenant = Tenant.objects.create(name="Acme", slug="acme")
    plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    template = Template.objects.create(name="busybox", display_name="BusyBox")
    rows = {}
    urls = {}
    try:
        for index, name in enumerate("ab"):
            node = Node.objects.create(name=name, queue_name=f"node-{name}", last_seen=timezone.now())
            urls[name] = credentials.grant(node)
            node.save()
            pool = IPPool.objects.create(name=f"{name}-net", node=node, network=f"198.19.{250 + index}.0/24",
                                         gateway=f"198.19.{250 + index}.1")
            server = VirtualServer.objects.create(tenant=tenant, name=f"web-{name}", hostname=f"{name}.acme.example",
                                                  plan=plan, template=template, node=node)
            rows[name] = {
                "node": node, "pool": pool, "server": server,
                "address": pool.allocate(server),
                "operation": Operation.objects.create(server=server, kind=OperationKind.START),
                "snapshot": Snapshot.objects.create(server=server, name="before"),
            }
        yield rows, urls["a"]
    finally:
        for row in rows.values():
            credentials.revoke(row["node"])


def count(conn, statement: str, *params) -> int:
    """Rows STATEMENT reached (a SELECT's count(*), or an UPDATE's or DELETE's row count)."""
    cursor = conn.execute(statement, params)
    if statement.lstrip().upper().startswith("SELECT"):
        return cursor.fetchone()[0]
    return cursor.rowcount


def refused(conn, statement: str, *params) -> bool:
    """Whether STATEMENT raises "permission denied" or "violates row-level security policy"
    (both SQLSTATE 42501); its transaction is rolled back either way."""
    try:
        with conn.transaction():
            conn.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def copy_operation(conn, operation_pk: int, server_pk: int) -> None:
    """INSERT a copy of operation OPERATION_PK (one the role sees) for server SERVER_PK."""
    columns = [f.column for f in Operation._meta.concrete_fields if not f.primary_key]
    chosen = ["gen_random_uuid()" if c == "uuid" else "%s" if c == "server_id" else c for c in columns]
    conn.execute(f"INSERT INTO vservers_operation ({', '.join(columns)}) "  # noqa: S608 - the model's columns
                 f"SELECT {', '.join(chosen)} FROM vservers_operation WHERE id = %s", (server_pk, operation_pk))


def test_a_nodes_role_reaches_its_own_servers_rows_and_not_another_nodes(two_nodes):
    rows, url = two_nodes
    a, b = rows["a"], rows["b"]
    with psycopg.connect(url, autocommit=True) as conn:
        mine, theirs = a["server"].pk, b["server"].pk
        # Servers: seen and changed only on its node; deleted by none (the worker never does).
        for server, reached in ((mine, 1), (theirs, 0)):
            assert count(conn, "SELECT count(*) FROM vservers_virtualserver WHERE id = %s", server) == reached
            assert count(conn, "UPDATE vservers_virtualserver SET state_reason = 'x' WHERE id = %s",
                         server) == reached
            assert refused(conn, "DELETE FROM vservers_virtualserver WHERE id = %s", server)
        # Nor may it push its own server onto another node.
        assert refused(conn, "UPDATE vservers_virtualserver SET node_id = %s WHERE id = %s", b["node"].pk, mine)
        # A server's operations and snapshots.
        for key, table in (("operation", "vservers_operation"), ("snapshot", "vservers_snapshot")):
            for row, reached in ((a[key], 1), (b[key], 0)):
                where = f"FROM {table} WHERE id = %s"  # noqa: S608 - table names of this test
                assert count(conn, f"SELECT count(*) {where}", row.pk) == reached, (table, row)
                assert count(conn, f"UPDATE {table} SET created = now() WHERE id = %s", row.pk) == reached
        for row, reached in ((a["snapshot"], 1), (b["snapshot"], 0)):
            assert count(conn, "DELETE FROM vservers_snapshot WHERE id = %s", row.pk) == reached
        # An operation for its own server, and none for another's.
        copy_operation(conn, a["operation"].pk, mine)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            copy_operation(conn, a["operation"].pk, theirs)
        for row, reached in ((a["operation"], 1), (b["operation"], 0)):
            assert count(conn, "DELETE FROM vservers_operation WHERE id = %s", row.pk) == reached
        # Addresses: every one seen (allocation in a shared pool), only its servers' changed.
        for row, reached in ((a["address"], 1), (b["address"], 0)):
            assert count(conn, "SELECT count(*) FROM vservers_ipaddress WHERE id = %s", row.pk) == 1
            assert count(conn, "UPDATE vservers_ipaddress SET allocated = now() WHERE id = %s", row.pk) == reached
            assert count(conn, "DELETE FROM vservers_ipaddress WHERE id = %s", row.pk) == reached
        assert refused(conn, "INSERT INTO vservers_ipaddress (pool_id, address, server_id, allocated) "
                             "VALUES (%s, '198.19.251.9', %s, now())", b["pool"].pk, theirs)
        assert not refused(conn, "INSERT INTO vservers_ipaddress (pool_id, address, server_id, allocated) "
                                 "VALUES (%s, '198.19.250.9', %s, now())", a["pool"].pk, mine)
        # Nodes: every one seen (a move needs the target's sshd), only its own row changed.
        assert count(conn, "SELECT count(*) FROM vservers_node") == 2
        for node, reached in ((a["node"], 1), (b["node"], 0)):
            assert count(conn, "UPDATE vservers_node SET last_seen = now() WHERE id = %s", node.pk) == reached
        # Plans and pools: read only.
        assert refused(conn, "UPDATE vservers_plan SET pids = 1")
        assert refused(conn, "DELETE FROM vservers_ippool WHERE id = %s", a["pool"].pk)

        # A move of b's server to a: while it arrives, a sees and writes it and may take it
        # over (server.node), and keep it on b, but not put it anywhere else.
        move = Migration.objects.create(
            operation=Operation.objects.create(server=b["server"], kind=OperationKind.MIGRATE),
            server=b["server"], source=b["node"], target=a["node"], phase=MigrationPhase.RECEIVING)
        assert count(conn, "SELECT count(*) FROM vservers_virtualserver WHERE id = %s", theirs) == 1
        with conn.transaction():
            assert count(conn, "UPDATE vservers_virtualserver SET node_id = %s WHERE id = %s",
                         a["node"].pk, theirs) == 1
            assert count(conn, "UPDATE vservers_virtualserver SET node_id = %s WHERE id = %s",
                         b["node"].pk, theirs) == 1
            raise psycopg.Rollback()  # undone: b keeps it
        other = Node.objects.create(name="c", queue_name="node-c")
        assert refused(conn, "UPDATE vservers_virtualserver SET node_id = %s WHERE id = %s", other.pk, theirs)
        # Failed: a still reads where the server is (its cleanup), and writes none of it.
        Migration.objects.filter(pk=move.pk).update(phase=MigrationPhase.FAILED)
        assert count(conn, "SELECT count(*) FROM vservers_virtualserver WHERE id = %s", theirs) == 1
        assert count(conn, "UPDATE vservers_virtualserver SET state_reason = 'x' WHERE id = %s", theirs) == 0
        assert count(conn, "UPDATE vservers_migration SET runner = 'x' WHERE id = %s", move.pk) == 0
        # Node b silent for a minute, its server with an "unreachable" alert: a (which judges
        # it, as b cannot) reads the server, its operations and that rule, and no more.
        AlertRule.objects.create(server=b["server"], kind=Kind.UNREACHABLE, enabled=True)
        snapshots = "SELECT count(*) FROM vservers_snapshot WHERE server_id = %s"
        Migration.objects.filter(pk=move.pk).delete()
        assert count(conn, "SELECT count(*) FROM vservers_virtualserver WHERE id = %s", theirs) == 0
        Node.objects.filter(pk=b["node"].pk).update(last_seen=timezone.now() - timedelta(minutes=1))
        assert count(conn, "SELECT count(*) FROM vservers_virtualserver WHERE id = %s", theirs) == 1
        assert count(conn, "SELECT count(*) FROM vservers_operation WHERE server_id = %s",
                     theirs) == Operation.objects.filter(server=b["server"]).count() == 2
        assert count(conn, "SELECT count(*) FROM alerts_alertrule WHERE server_id = %s", theirs) == 1
        assert count(conn, snapshots, theirs) == 0
        assert count(conn, "UPDATE vservers_virtualserver SET state_reason = 'x' WHERE id = %s", theirs) == 0
    # The panel's own role is not limited: b's rows are all there.
    assert VirtualServer.objects.filter(pk=theirs, state_reason="").exists()
    assert Operation.objects.filter(pk=b["operation"].pk).exists()
    assert IPAddress.objects.filter(pk=b["address"].pk).exists()
    assert Snapshot.objects.filter(pk=b["snapshot"].pk).exists()


def test_a_role_an_older_version_granted_more_gets_todays_rules_at_the_next_migrate(two_nodes):
    """Roles made before row security (0017), or before a rule narrowed, kept their broader
    privileges until the node joined again; every `manage.py migrate` now narrows them."""
    from django.core.management import call_command
    from django.db import connection

    rows, _ = two_nodes
    role = rows["a"]["node"].db_role

    def may(privilege: str, table: str) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT has_table_privilege(%s, %s, %s)", [role, table, privilege])
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:  # what an older version could have granted
        cursor.execute(f'GRANT ALL ON vservers_virtualserver, accounts_auditentry, django_session TO "{role}"')
    assert may("DELETE", "vservers_virtualserver") and may("SELECT", "django_session")  # the control

    call_command("migrate", verbosity=0)

    assert not may("DELETE", "vservers_virtualserver")
    assert may("UPDATE", "vservers_virtualserver")  # what the rules give stays
    assert not may("SELECT", "accounts_auditentry") and may("INSERT", "accounts_auditentry")
    assert not may("SELECT", "django_session")
