"""A node's own PostgreSQL role (vservers.nodes.credentials), measured: a real worker process
connected as that role provisions, stops and starts a server; the role cannot read users'
password hashes, sessions, API tokens, two-factor devices or the audit log, which the panel's
own role can (the control). PostgreSQL only (the `cluster` pass of make test)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.panel import faults
from tests.panel.faults import wait_until
from tests.roles import require_role_creation
from vservers.actions import approve, request_operation
from vservers.models import Node, Operation, OperationKind, OperationStatus, State, VirtualServer
from vservers.nodes import credentials

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers

SECRETS = {
    "auth_user.password": "SELECT password FROM auth_user",
    "django_session": "SELECT session_key FROM django_session",
    "api_apitoken": "SELECT * FROM api_apitoken",
    "accounts_auditentry": "SELECT action FROM accounts_auditentry",
}


@pytest.fixture
def postgres():
    require_role_creation("a node's own role is PostgreSQL's (on SQLite a node uses the panel's file)")


def refused(url: str, statement: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_a_worker_under_the_nodes_role_runs_its_jobs_and_reads_no_secrets(postgres, fault_world, workers):
    from django.conf import settings as django_settings

    world = fault_world
    node = Node.objects.get(pk=world.node.pk)
    url = credentials.grant(node)
    node.save()
    try:
        assert node.db_role == credentials.role_name(node) and node.db_role in url
        # The control: the panel's own role reads every one of them.
        with connection.cursor() as cursor:
            for statement in SECRETS.values():
                cursor.execute(statement)
        # Where the node's role runs into a wall.
        test_db = django_settings.DATABASES["default"]["NAME"]
        node_url = url.rsplit("/", 1)[0] + "/" + test_db
        for what, statement in SECRETS.items():
            assert refused(node_url, statement), f"the node's role reads {what}"
        assert not refused(node_url, "SELECT username, email FROM auth_user")

        # The worker, connected as the node's role, runs a provision, a stop and a start.
        worker = workers(env={"DATABASE_URL": node_url, "PANEL_HEARTBEAT_SECONDS": "1"})
        server = VirtualServer.objects.create(tenant=world.acme, name="web", hostname="web.acme.example",
                                              plan=world.small, template=world.busybox)
        operations = [approve(server, world.operator, check_quota=False)]

        def finished(op):
            op.refresh_from_db()
            return op.status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED)

        wait_until(lambda: finished(operations[-1]), lambda: "the provision; log:\n" + worker.log_tail())
        for kind in (OperationKind.STOP, OperationKind.START):
            server.refresh_from_db()
            operations.append(request_operation(server, kind, world.operator))
            wait_until(lambda: finished(operations[-1]), lambda kind=kind: f"the {kind}; log:\n" + worker.log_tail())
        for op in operations:
            assert op.status == OperationStatus.SUCCEEDED, (op.kind, op.error, op.detail[-3000:])
        server.refresh_from_db()
        assert server.state == State.RUNNING
        assert Node.objects.get(pk=node.pk).is_online  # its heartbeat, under the role too
        assert "permission denied" not in worker.log_tail(400).lower(), worker.log_tail(400)
        worker.stop()
        assert Operation.objects.filter(server=server).count() >= 3
    finally:
        credentials.revoke(node)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [node.db_role])
        assert cursor.fetchone()[0] == 0
