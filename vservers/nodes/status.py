"""What the panel shows of a node whose worker went silent, and of the servers on it.

Node.is_online (the heartbeat within PANEL_NODE_TIMEOUT_SECONDS) is the one test. A node that
fails it is "unreachable", and the state of every server it holds that the kernel would
have a say about (ON_NODE) is shown as "unknown": the database only remembers what the
worker last saw, and a server shown "stopped" or "running" on a node nobody hears from
would be a guess. Nothing is written: when the heartbeat comes back, the pages show the
stored state again by themselves.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import CharField, Count, Q, Subquery, Sum, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from ..models import ON_NODE, State

UNKNOWN = "unknown"
UNKNOWN_LABEL = "Unknown (node unreachable)"
STATE_LABELS = dict(State.choices)
# The API's choices of a server's shown state: the stored ones and "unknown".
SHOWN_STATE_CHOICES = [*State.choices, (UNKNOWN, UNKNOWN_LABEL)]


def cutoff(now: datetime | None = None) -> datetime:
    """A heartbeat older than this is no heartbeat (Node.is_online, as a query bound)."""
    return (now or timezone.now()) - timedelta(seconds=settings.PANEL_NODE_TIMEOUT_SECONDS)


def silent(prefix: str = "") -> Q:
    """Rows whose node (PREFIX: the path to it, e.g. "node__") is not online, as a filter."""
    return Q(**{f"{prefix}last_seen__lt": cutoff()}) | Q(**{f"{prefix}last_seen__isnull": True})


def unknown_servers() -> Q:
    """Servers whose state is unknown now: on a node, and that node silent."""
    return Q(state__in=list(ON_NODE), node__isnull=False) & silent("node__")


def silent_nodes() -> Subquery:
    """Which nodes are silent, as one scalar subquery: their count and their ids, as text
    (for fingerprints: a node going silent or coming back changes it)."""
    from ..models import Node

    rows = (Node.objects.filter(silent()).order_by().annotate(one=Value(1)).values("one")
            .annotate(n=Count("pk"), ids=Sum("pk")).annotate(key=Concat(Cast("n", CharField()), Value(":"),
                                                                            Cast("ids", CharField())))
            .values("key"))
    return Subquery(rows[:1], output_field=CharField())


def is_online(last_seen: datetime | None) -> bool:
    """Node.is_online for a value fetched without the model."""
    return last_seen is not None and last_seen >= cutoff()


def shown_state(state: str, node_online: bool) -> str:
    """The state a page or the API shows: UNKNOWN for a server on a node that is not online."""
    return UNKNOWN if state in ON_NODE and not node_online else state


def shown_label(state: str, node_online: bool) -> str:
    shown = shown_state(state, node_online)
    return UNKNOWN_LABEL if shown == UNKNOWN else STATE_LABELS.get(shown, shown)


def server_online(server) -> bool:
    """Whether SERVER's node is online; a server without a node has nothing unknown. Reads
    server.node (select_related by the lists; one query on a detail page)."""
    return server.node_id is None or server.node.is_online
