"""A node's database credentials, made when it joins (vservers.nodes.join.accept).

PostgreSQL: a role of the node's own (Node.db_role, "vsnode_<name>") with a password of its
own, granted only what the node's worker and console broker use:

 - the tables of the apps whose rows a node's jobs keep (vservers: servers, operations,
   addresses, templates, snapshots, backups, usage, migrations; alerts; notifications' outbox;
   consoles' tickets and sessions), each with only the commands its jobs run, and limited by
   row to the node's own servers and its own node by row-level security
   (vservers.nodes.rowsecurity: its TABLES name the commands and the rows, table by table);
 - read only: tenants and memberships (a server's tenant, who gets a notification);
 - the audit log: INSERT, and SELECT of its id column only (Django's INSERT ... RETURNING id);
   a node writes "server.autostart_paused" and the console's entries, and reads none;
 - auth_user: SELECT of every column but `password` (a job records who asked for a snapshot
   or a backup; the broker names the console's user; the outbox their e-mail address);
 - nothing of sessions, API tokens, two-factor devices, login failures, password resets.

What a stolen node credential reaches is in docs/cluster.md. Joining again with a new token
gives the role a new password (the old one stops working).

SQLite (one host): the node is the panel's own machine and uses the panel's own database file
(its settings' default); there is nothing to limit and no DATABASE_URL to hand over.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction

from ..models import Node
from . import rowsecurity

ROLE_PREFIX = "vsnode_"
# Apps whose every table a node's worker reads and writes.
WORKER_APPS = ("vservers", "alerts", "notifications", "consoles")
# (app label, model name): read only.
READ_ONLY = (("accounts", "Tenant"), ("accounts", "Membership"), ("contenttypes", "ContentType"))
# Column-level grants: (app label, model name, privilege, columns or None for all but EXCLUDED).
AUDIT = ("accounts", "AuditEntry")
USER_EXCLUDED_COLUMNS = {"password"}


def role_name(node: Node) -> str:
    return (ROLE_PREFIX + node.name.replace("-", "_").lower())[:63]


def grant(node: Node) -> str:
    """NODE's credentials, made or renewed; the DATABASE_URL the node is to use. Sets
    node.db_role (the caller saves the node)."""
    if connection.vendor != "postgresql":
        # One host: the node is the panel's machine and checkout, whose settings name the
        # panel's own database file already; no DATABASE_URL to hand over.
        node.db_role = ""
        return ""
    role = role_name(node)
    password = secrets.token_urlsafe(24)
    _make_role(role, password)
    node.db_role = role
    db = settings.DATABASES["default"]
    host = getattr(settings, "PANEL_NODE_DATABASE_HOST", "") or db.get("HOST") or "localhost"
    port = db.get("PORT") or 5432
    if host.startswith("/"):
        netloc = f"{quote(role)}:{quote(password)}@{quote(host, safe='')}"
        return f"postgresql://{netloc}/{quote(db['NAME'])}"
    return f"postgresql://{quote(role)}:{quote(password)}@{host}:{port}/{quote(db['NAME'])}"


def worker_tables() -> list[str]:
    return sorted(model._meta.db_table for label in WORKER_APPS for model in apps.get_app_config(label).get_models())


def regrant_all() -> list[str]:
    """Every node role's privileges made again from today's rules (rowsecurity.TABLES): after
    each `manage.py migrate` (vservers.apps), so a role made by an older version (before row
    security, or before a rule narrowed) loses what the rules no longer give, without a new
    join. Returns the roles. SQLite: none."""
    if connection.vendor != "postgresql":
        return []
    roles = sorted(set(Node.objects.exclude(db_role="").values_list("db_role", flat=True)))
    done = []
    with transaction.atomic(), connection.cursor() as cursor:
        for role in roles:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            if cursor.fetchone() is not None:
                _grant(cursor, role)
                done.append(role)
    return done


def _make_role(role: str, password: str) -> None:
    from psycopg import sql

    ident = sql.Identifier(role)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        verb = "ALTER" if cursor.fetchone() else "CREATE"
        cursor.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            ident, sql.Literal(password)).as_string(connection.connection))
        _grant(cursor, role)


def _grant(cursor, role: str) -> None:
    """ROLE's privileges, exactly those of today's rules."""
    from psycopg import sql

    ident = sql.Identifier(role)
    statements = [
        # Everything an older version granted goes first (worker tables or not): the rules below
        # are the whole of it. One transaction, so a node's worker never sees the gap.
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(connection.settings_dict["NAME"]),
                                                              ident),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident),
    ]
    # Each worker table with the commands its row rule allows (rowsecurity.TABLES), and none
    # beyond.
    tables = sorted(rowsecurity.TABLES)
    for table in tables:
        statements.append(sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(", ").join(map(sql.SQL, rowsecurity.TABLES[table].privileges)), sql.Identifier(table),
            ident))
    read_only = [apps.get_model(app, name)._meta.db_table for app, name in READ_ONLY]
    statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(
        sql.SQL(", ").join(map(sql.Identifier, read_only)), ident))
    audit = apps.get_model(*AUDIT)._meta.db_table
    statements.append(sql.SQL("GRANT INSERT, SELECT (id) ON {} TO {}").format(sql.Identifier(audit), ident))
    user_model = apps.get_model(settings.AUTH_USER_MODEL)
    columns = [f.column for f in user_model._meta.concrete_fields if f.column not in USER_EXCLUDED_COLUMNS]
    statements.append(sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(user_model._meta.db_table), ident))
    # The id sequences of the tables it inserts into (identity columns need none; serial ones do).
    statements.append(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))
    for statement in statements:
        cursor.execute(statement.as_string(connection.connection))


def revoke(node: Node) -> None:
    """NODE's role gone (a node removed for good): its privileges revoked and the role dropped;
    it owns nothing (the panel's migrations own every table)."""
    if connection.vendor != "postgresql" or not node.db_role:
        return
    from psycopg import sql

    ident = sql.Identifier(node.db_role)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [node.db_role])
        if cursor.fetchone() is None:
            return
        for statement in (
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident),
            sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(ident),
            sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(ident),
            sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(connection.settings_dict["NAME"]),
                                                                ident),
            sql.SQL("DROP ROLE {}").format(ident),
        ):
            cursor.execute(statement.as_string(connection.connection))
