"""Evaluating every alert rule of a node after a usage sample of it.

`evaluate(node, now)` runs at the end of each sampler pass of NODE (the receiver of
vservers.usage.signals.node_sampled), and takes NOW as an argument so that tests drive time
without sleeping. It judges NODE's rules, and the unreachable rules of the servers of any
other active node that has gone silent (silent_nodes: not seen for STALE_PERIODS periods and
no worker on its queue): a node whose worker is down evaluates nothing itself, so the others
notice for it. (With one node, nobody does: see docs/usage.md, "Alerts".) It reads the
latest sample each server keeps in its own fields (VirtualServer.memory_bytes,
disk_used_bytes, sampled_at), not the history: what "for N minutes" needs is kept on the
rule (AlertRule.pending_since), so a pass costs the same few queries whatever the number of
servers, rules or samples:

 0. one SELECT of the other nodes not seen lately (almost always none; for each, Redis is
    asked whether a worker serves its queue);
 1. one UPDATE ends the open episodes of rules switched off or of servers deleted;
 2. one SELECT reads the node's enabled rules (and silent nodes' unreachable rules) with their
    servers, plans, open episode and the server's last start/stop operation (correlated
    subqueries);
 3. only rules whose verdict changed are written: a pending start, an episode begun (with its
    mail, in one transaction), an episode ended.

The conditions (docs/usage.md, "Alerts", says the same to users):
 - disk (judged while the server runs): the last sample's disk used is at or above
   THRESHOLD % of the plan's disk;
 - memory (likewise): every sample for MINUTES minutes is at or above THRESHOLD % of the plan's memory
   (a sample older than STALE_PERIODS sampling periods is a gap, and a gap starts the count
   again);
 - unreachable: the server is expected to run, and for MINUTES minutes of passes it was not
   running or its last sample was older than STALE_PERIODS sampling periods. Expected to run:
   it is on its node (not being created or deleted), no operation of it is queued or running,
   and its last start/stop operation is a start, a restart or a provisioning that succeeded,
   not a stop. So a server its tenant (or an operator) stopped is not unreachable; one whose
   init died is, and so is one whose start failed after it had run.
An episode ends when a sample shows the value HYSTERESIS points below the threshold (disk,
memory), or when the server is seen running again or is no longer expected to run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, Subquery

from notifications import notify
from notifications.models import Event
from vservers.models import Node, Operation, OperationKind, OperationStatus, State, VirtualServer

from .models import AlertEpisode, AlertRule, Kind

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# A sample older than this many sampling periods means the sampler did not see the server.
STALE_PERIODS = 3
# Operations that say whether the server should run: the last of them decides.
LIFECYCLE = [OperationKind.PROVISION, OperationKind.START, OperationKind.RESTART, OperationKind.STOP]
# States in which a server is not expected to answer whatever its operations say: not built
# yet, on its way out, or running the rescue system on purpose (its own services do not run).
# Restoring and reinstalling are an operation's: `busy` leaves them to its outcome.
NOT_ON_NODE = [State.REQUESTED, State.APPROVED, State.REJECTED, State.PROVISIONING, State.DELETING, State.DELETED,
               State.RESCUE]
GONE = [State.DELETING, State.DELETED, State.REJECTED]


def sample_seconds() -> int:
    return int(getattr(settings, "PANEL_SAMPLE_SECONDS", 30))


def stale_after() -> timedelta:
    return timedelta(seconds=STALE_PERIODS * sample_seconds())


@dataclass(frozen=True)
class Verdict:
    """What the last sample says of a rule: HOLDS (the condition holds now), CLEARS (an open
    episode may end), SINCE (when the current stretch began, if it holds), AT (the time the
    duration is measured up to) and VALUE (for the mail)."""

    holds: bool
    clears: bool
    since: datetime | None = None
    at: datetime | None = None
    value: float | None = None


def percent(used: float, limit_mb: int) -> float | None:
    return 100.0 * used / (limit_mb * MIB) if limit_mb else None


def expected_to_run(server: VirtualServer, last_kind: str | None, last_status: str | None) -> bool:
    if server.state in NOT_ON_NODE or last_kind is None:
        return False
    if last_kind == OperationKind.STOP:
        return False  # stopped on purpose
    if last_kind == OperationKind.PROVISION:
        return last_status == OperationStatus.SUCCEEDED  # a server that never ran is not "down"
    return True


def judge(rule: AlertRule, now: datetime) -> Verdict | None:
    """The verdict on RULE (annotated by `rules`), or None: nothing to go by, leave it."""
    server: VirtualServer = rule.server
    sampled = server.sampled_at
    fresh = sampled is not None and now - sampled <= stale_after()
    if rule.kind in (Kind.DISK, Kind.MEMORY) and server.state != State.RUNNING:
        # No sample of a server that does not run (a stop records zeros): nothing changes while
        # it is stopped; a disk episode stays open, a memory count starts again.
        return None if rule.kind == Kind.DISK else Verdict(False, False)
    if rule.kind == Kind.DISK:
        value = percent(server.disk_used_bytes, server.plan.disk_mb) if sampled is not None else None
        if value is None:
            return None
        return Verdict(value >= (rule.threshold or 0), value < rule.clears_below(), sampled, sampled, value)
    if rule.kind == Kind.MEMORY:
        value = percent(server.memory_bytes, server.plan.memory_mb) if fresh else None
        if value is None:
            return Verdict(False, False)  # a gap: the count starts again; an episode stays
        return Verdict(value >= (rule.threshold or 0), value < rule.clears_below(), sampled, sampled, value)
    if rule.busy:  # type: ignore[attr-defined]
        return None  # an operation moves it; its outcome decides
    if not expected_to_run(server, rule.last_kind, rule.last_status):  # type: ignore[attr-defined]
        return Verdict(False, True)
    down = server.state != State.RUNNING or not fresh
    since = rule.pending_since or now
    return Verdict(down, not down, now, now, (now - since).total_seconds() / 60)


def due(rule: AlertRule, verdict: Verdict) -> bool:
    """Whether RULE's condition has held long enough for an episode."""
    if rule.kind == Kind.DISK:
        return True
    if rule.pending_since is None or verdict.at is None:
        return False
    return verdict.at - rule.pending_since >= timedelta(minutes=rule.minutes or 0)


def silent_nodes(node, now: datetime) -> list[int]:
    """The other active nodes that are silent: not seen by their reconcile for STALE_PERIODS
    periods *and* with no worker registered on their queue in Redis. The date alone is not
    enough: a node's worker runs one job at a time, and while a long one runs (a template
    build, up to its timeout) neither its reconcile nor its sampler does; RQ keeps a worker
    registered with a heartbeat through its job, and drops one that died within its TTL. Redis
    out of reach: nobody is called silent (no guess)."""
    from redis.exceptions import RedisError
    from rq import Queue, Worker

    from vservers.queues import get_queue

    period = max(sample_seconds(), int(getattr(settings, "PANEL_RECONCILE_SECONDS", 30)))
    cutoff = now - timedelta(seconds=STALE_PERIODS * period)
    candidates = list(
        Node.objects.filter(is_active=True).exclude(pk=node.pk)
        .filter(Q(last_seen__lt=cutoff) | Q(last_seen__isnull=True)).values_list("pk", "queue_name")
    )
    if not candidates:
        return []
    try:
        # Every node's queue lives in the one Redis of the panel (DESIGN.md, several hosts).
        mine = node.queue_name if node.queue_name in settings.RQ_QUEUES else "default"
        connection = get_queue(mine).connection
        return [pk for pk, name in candidates if not Worker.all(queue=Queue(name, connection=connection))]
    except RedisError:
        log.warning("Redis is out of reach: no other node is judged silent in this pass")
        return []


def rules(node, silent: list[int]) -> list[AlertRule]:
    """NODE's enabled rules of live servers, and the unreachable rules of the servers of the
    SILENT nodes, with what judging them needs, in one query."""
    mine = Q(server__node=node) | Q(kind=Kind.UNREACHABLE, server__node__in=silent)
    episode = AlertEpisode.objects.filter(rule=OuterRef("pk"), ended__isnull=True)
    last = Operation.objects.filter(server_id=OuterRef("server_id"), kind__in=LIFECYCLE).order_by("-pk")
    return list(
        AlertRule.objects.filter(mine, enabled=True)
        .exclude(server__state__in=GONE)
        .select_related("server__plan", "server__tenant")
        .annotate(
            open_episode=Subquery(episode.values("pk")[:1]),
            last_kind=Subquery(last.values("kind")[:1]),
            last_status=Subquery(last.values("status")[:1]),
            busy=Exists(
                Operation.objects.filter(
                    server_id=OuterRef("server_id"), status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING]
                )
            ),
        )
        .order_by("pk")
    )


def begin(rule: AlertRule, verdict: Verdict, now: datetime) -> bool:
    """Start RULE's episode and write its mail, in one transaction: the mail exists exactly
    when the episode does. False if another evaluation started it first (the constraint)."""
    server = rule.server
    try:
        with transaction.atomic():
            episode = AlertEpisode.objects.create(rule=rule, started=now, value=verdict.value)
            context = {
                "alert": rule.kind,
                "threshold": rule.threshold,
                "minutes": rule.minutes,
                "clears_below": rule.clears_below(),
                "value": verdict.value,
                "since": rule.pending_since,
                "last_sample": server.sampled_at,
            }
            mails = notify(Event.ALERT, server, **context)
            AlertEpisode.objects.filter(pk=episode.pk).update(mails=mails)
    except IntegrityError:
        return False
    log.info("alert episode of %s started (%s, value %s): %d mails", server, rule.describe(), verdict.value, mails)
    return True


def evaluate(node, now: datetime) -> dict[str, int]:
    """Judge every enabled rule of NODE's servers at NOW (see the module's docstring);
    returns counts of what happened."""
    counts = {"rules": 0, "started": 0, "ended": 0}
    counts["ended"] += AlertEpisode.objects.filter(ended__isnull=True, rule__server__node=node).exclude(
        rule__enabled=True, rule__server__state__in=[s for s in State if s not in GONE]
    ).update(ended=now)
    for rule in rules(node, silent_nodes(node, now)):
        counts["rules"] += 1
        verdict = judge(rule, now)
        if verdict is None:
            continue
        if rule.open_episode is not None:  # type: ignore[attr-defined]
            if verdict.clears:
                AlertEpisode.objects.filter(pk=rule.open_episode, ended__isnull=True).update(ended=now)  # type: ignore[attr-defined]
                AlertRule.objects.filter(pk=rule.pk).update(pending_since=None)
                counts["ended"] += 1
            continue
        if not verdict.holds:
            if rule.pending_since is not None:
                AlertRule.objects.filter(pk=rule.pk).update(pending_since=None)
            continue
        if rule.pending_since is None:
            rule.pending_since = verdict.since
            AlertRule.objects.filter(pk=rule.pk).update(pending_since=rule.pending_since)
        if due(rule, verdict) and begin(rule, verdict, now):
            counts["started"] += 1
    return counts
