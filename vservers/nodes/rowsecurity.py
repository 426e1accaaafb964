"""A node's database role limited by row (PostgreSQL's row-level security, issue 16): what
each table a node's worker uses lets that role see and change. The panel's own role owns the
tables and so is not limited (RLS is enabled, not forced); the nodes' roles get the table
privileges from vservers.nodes.credentials.grant (TABLES below) and the rows from the
policies made here (the migration vservers 0017_node_row_security). SQLite: nothing.

Which node a role is: `vservers_node.db_role = session_user` (a node connects as its own role).
The row sets are SQL functions, SECURITY DEFINER and owned by the panel's role (so they read
the tables unlimited, and a policy never runs into another table's policy), STABLE (computed
once per statement), with a fixed search_path:

 - vservers_my_node(): the node's id;
 - vservers_arriving(): (server, source) of the moves to this node not yet done or failed;
 - vservers_my_servers(): the servers placed on the node, and those arriving (the target
   writes the server it adopts, and moves server.node to itself, in one transaction before
   the move ends: vservers.migration.jobs);
 - vservers_unplaced_servers(): the servers on no node (requests);
 - vservers_watched_servers(): the servers of ANOTHER node silent for 30 s that have an
   enabled "unreachable" alert: every node judges those (alerts.evaluate.silent_nodes), since
   the silent node cannot;
 - vservers_seen_servers(): those of mine, and every server of a move from or to the node (a
   source's cleanup and recovery, and a target's after a failed move, read where the database
   places a server that left or never came; they write nothing of it).

Each table of credentials.worker_tables(), what the role SELECTs / what it may write:

 - by server: operation, snapshot, migration, backupschedule, backuprestorerequest,
   guestaccount, service, unlistedentries, alerts' rules, consoles' sessions (tickets):
   SELECT seen / INSERT, UPDATE, DELETE mine. Also watched: SELECT of the operations (the
   last one says whether the server should run) and SELECT and UPDATE of the "unreachable"
   rules (pending_since). Alert episodes: those of the rules it sees / of the rules of mine
   and the watched "unreachable" ones.
 - virtualserver: seen and watched / UPDATE of mine, and the new row stays on the node, or (arriving)
   on its source or the node: no INSERT, no DELETE (the panel makes servers; a deleted one
   keeps its row), and no pushing a server onto a third node.
 - notifications' outbox: every node's reconcile sends it (notifications.sender), so
   SELECT and UPDATE of the mails about seen and watched servers, about servers no node holds
   (requests not yet placed) and about none (a rejected request's row is gone) / INSERT about
   mine and watched (an "unreachable" alert's mail).
   The mails about another node's servers wait for that node (or `manage.py
   send_mail_outbox`, on the panel's role).
 - backup: its node's, or of seen servers / its node's. backupdownload: of the backups it
   sees / UPDATE of those (redeeming a ticket; a deleted backup's tickets lose it).
 - usageraw, usagefivemin, usagedaily: the series of seen servers and its node's total /
   those of mine and its node's total (a server's series follows it to its new node;
   vservers.usage.jobs prunes each node's own).
 - templatebuild: its node's / UPDATE of its node's (the panel asks for builds).
   builttemplate: every node's (a source ships the template when the target lacks it) /
   its node's.
 - node: every node (a move needs the target's sshd address and host key; keys.py the
   others' public keys) / UPDATE of its own row only.
 - ipaddress: every address (allocation must see every taken address of a shared pool) /
   INSERT, UPDATE, DELETE of mine (allocation on a move's target, release).
 - ippool: every pool / UPDATE only as the FOR UPDATE row lock of the pools it allocates
   from (its own, those shared with it): WITH CHECK false, so no row changes.
 - global, read only: ippool_shared_with, plan, template (a change of plan or template,
   rescue), notifications' opt-outs (who gets a mail).

A node's role reads none of the other nodes' servers, operations, snapshots, backups,
consoles' tickets or usage, and changes only its own servers' rows and its own node row.
"""

from __future__ import annotations

from dataclasses import dataclass

# The phases of a move before it is done or failed (vservers.models.moves.ACTIVE_PHASES).
ACTIVE = "('shipping', 'shipped', 'receiving')"

SEEN = "server_id IN (SELECT vservers_seen_servers())"
MINE = "server_id IN (SELECT vservers_my_servers())"
NODE = "node_id = (SELECT vservers_my_node())"


@dataclass(frozen=True)
class Rule:
    """A table's grant and policies. An absent expression: that command is not granted."""

    select: str = "true"
    insert: str | None = None
    update: str | None = None  # USING
    update_check: str | None = None  # WITH CHECK (None: the USING expression)
    delete: str | None = None

    @property
    def privileges(self) -> list[str]:
        return ["SELECT"] + [verb for verb, expr in (("INSERT", self.insert), ("UPDATE", self.update),
                                                     ("DELETE", self.delete)) if expr is not None]


WATCHED = "server_id IN (SELECT vservers_watched_servers())"
# The "unreachable" alert rules of a silent node's servers, which the other nodes judge
# (alerts.evaluate.silent_nodes).
WATCHED_RULE = f"(kind = 'unreachable' AND {WATCHED})"
# The mails every node's reconcile sends (notifications.sender): about its servers, those no
# node holds (a request not yet placed, a rejected one whose row is gone), and the alerts it
# raised about a silent node's servers.
OUTBOX = f"server_id IS NULL OR {SEEN} OR {WATCHED} OR server_id IN (SELECT vservers_unplaced_servers())"
MY_RULES = f"rule_id IN (SELECT id FROM alerts_alertrule WHERE {MINE} OR {WATCHED_RULE})"

BY_SERVER = Rule(select=SEEN, insert=MINE, update=MINE, delete=MINE)
# Usage: a server's series follows it from node to node (vservers.usage.store.latest), and a
# node's total series (no server) is its own.
USAGE_WRITE = f"{MINE} OR (server_id IS NULL AND {NODE})"
BY_SERIES = Rule(select=f"{SEEN} OR (server_id IS NULL AND {NODE})", insert=USAGE_WRITE, update=USAGE_WRITE,
                 delete=USAGE_WRITE)
READ_ONLY = Rule()

TABLES: dict[str, Rule] = {
    "vservers_virtualserver": Rule(
        select="id IN (SELECT vservers_seen_servers()) OR id IN (SELECT vservers_watched_servers())",
        update="id IN (SELECT vservers_my_servers())",
        update_check="node_id = (SELECT vservers_my_node())"
                     " OR (id, node_id) IN (SELECT server, source FROM vservers_arriving())",
    ),
    "vservers_operation": Rule(select=f"{SEEN} OR {WATCHED}", insert=MINE, update=MINE, delete=MINE),
    "vservers_snapshot": BY_SERVER,
    "vservers_migration": BY_SERVER,
    "vservers_backupschedule": BY_SERVER,
    "vservers_backuprestorerequest": BY_SERVER,
    "vservers_guestaccount": BY_SERVER,
    "vservers_service": BY_SERVER,
    "vservers_unlistedentries": BY_SERVER,
    "alerts_alertrule": Rule(select=f"{SEEN} OR {WATCHED_RULE}", insert=MINE, update=f"{MINE} OR {WATCHED_RULE}",
                             delete=MINE),
    "consoles_consolesession": BY_SERVER,
    "alerts_alertepisode": Rule(
        select="rule_id IN (SELECT id FROM alerts_alertrule)", insert=MY_RULES, update=MY_RULES, delete=MY_RULES),
    "notifications_outboxmail": Rule(select=OUTBOX, insert=f"{MINE} OR {WATCHED}", update=OUTBOX),
    "vservers_backup": Rule(select=f"{NODE} OR {SEEN}", insert=NODE, update=NODE, delete=NODE),
    "vservers_backupdownload": Rule(
        select="backup_id IN (SELECT id FROM vservers_backup)",
        update="backup_id IN (SELECT id FROM vservers_backup)",
        update_check="backup_id IS NULL OR backup_id IN (SELECT id FROM vservers_backup)",
    ),
    "vservers_usageraw": BY_SERIES,
    "vservers_usagefivemin": BY_SERIES,
    "vservers_usagedaily": BY_SERIES,
    "vservers_templatebuild": Rule(select=NODE, update=NODE),
    "vservers_builttemplate": Rule(insert=NODE, update=NODE, delete=NODE),
    "vservers_node": Rule(update="id = (SELECT vservers_my_node())"),
    "vservers_ippool": Rule(
        update="node_id = (SELECT vservers_my_node()) OR id IN (SELECT ippool_id FROM vservers_ippool_shared_with"
               " WHERE node_id = (SELECT vservers_my_node()))",
        update_check="false",
    ),
    "vservers_ippool_shared_with": READ_ONLY,
    "vservers_ipaddress": Rule(insert=MINE, update=MINE, delete=MINE),
    "vservers_plan": READ_ONLY,
    "vservers_template": READ_ONLY,
    "notifications_optout": READ_ONLY,
}

FUNCTIONS = {
    "vservers_my_node()": (
        "bigint",
        "SELECT id FROM vservers_node WHERE db_role <> '' AND db_role = session_user::text",
    ),
    "vservers_arriving()": (
        "TABLE(server bigint, source bigint)",
        f"SELECT server_id, source_id FROM vservers_migration WHERE target_id = (SELECT vservers_my_node()) "
        f"AND phase IN {ACTIVE}",
    ),
    "vservers_my_servers()": (
        "SETOF bigint",
        "SELECT id FROM vservers_virtualserver WHERE node_id = (SELECT vservers_my_node()) "
        "UNION ALL SELECT server FROM vservers_arriving()",
    ),
    "vservers_unplaced_servers()": (
        "SETOF bigint",
        "SELECT id FROM vservers_virtualserver WHERE node_id IS NULL",
    ),
    # Servers with an enabled "unreachable" alert on another node that is silent: no heartbeat
    # for 30 s, never longer than alerts.evaluate's own bound (STALE_PERIODS x at least 10 s),
    # so a node sees every server it judges there.
    "vservers_watched_servers()": (
        "SETOF bigint",
        "SELECT r.server_id FROM alerts_alertrule r JOIN vservers_virtualserver s ON s.id = r.server_id "
        "JOIN vservers_node n ON n.id = s.node_id WHERE r.kind = 'unreachable' AND r.enabled AND n.is_active "
        "AND n.id <> (SELECT vservers_my_node()) AND (n.last_seen IS NULL OR n.last_seen < now() - interval '30 s')",
    ),
    # Arriving servers are among the moves to the node: no need to ask vservers_my_servers().
    "vservers_seen_servers()": (
        "SETOF bigint",
        "SELECT id FROM vservers_virtualserver WHERE node_id = (SELECT vservers_my_node()) "
        "UNION ALL SELECT server_id FROM vservers_migration "
        "WHERE (SELECT vservers_my_node()) IN (source_id, target_id)",
    ),
}

POLICY = "vsnode_"


def enable(cursor, schema: str) -> None:
    """Make the functions and the policies (again: idempotent), in SCHEMA (the tables')."""
    from psycopg import sql

    path = sql.SQL("{}, pg_temp").format(sql.Identifier(schema)).as_string(cursor.connection)
    for signature, (returns, body) in FUNCTIONS.items():
        # A body in sql.Literal form would be quoted; the bodies are this module's constants.
        cursor.execute(f"CREATE OR REPLACE FUNCTION {signature} RETURNS {returns} LANGUAGE sql STABLE "
                       f"SECURITY DEFINER SET search_path = {path} AS $vs${body}$vs$")
    for table, rule in TABLES.items():
        ident = sql.Identifier(table).as_string(cursor.connection)
        cursor.execute(f"ALTER TABLE {ident} ENABLE ROW LEVEL SECURITY")
        for statement in _policies(ident, rule):
            cursor.execute(statement)


def _policies(table: str, rule: Rule) -> list[str]:
    statements = [f"DROP POLICY IF EXISTS {POLICY}{verb} ON {table}"
                  for verb in ("select", "insert", "update", "delete")]
    statements.append(f"CREATE POLICY {POLICY}select ON {table} FOR SELECT USING ({rule.select})")
    if rule.insert is not None:
        statements.append(f"CREATE POLICY {POLICY}insert ON {table} FOR INSERT WITH CHECK ({rule.insert})")
    if rule.update is not None:
        check = rule.update_check or rule.update
        statements.append(f"CREATE POLICY {POLICY}update ON {table} FOR UPDATE USING ({rule.update}) "
                          f"WITH CHECK ({check})")
    if rule.delete is not None:
        statements.append(f"CREATE POLICY {POLICY}delete ON {table} FOR DELETE USING ({rule.delete})")
    return statements


def disable(cursor) -> None:
    from psycopg import sql

    for table in TABLES:
        ident = sql.Identifier(table).as_string(cursor.connection)
        for verb in ("select", "insert", "update", "delete"):
            cursor.execute(f"DROP POLICY IF EXISTS {POLICY}{verb} ON {ident}")
        cursor.execute(f"ALTER TABLE {ident} DISABLE ROW LEVEL SECURITY")
    for signature in reversed(list(FUNCTIONS)):
        cursor.execute(f"DROP FUNCTION IF EXISTS {signature}")
