"""The sampler: one job per node (job id "sample-<node pk>"), queued every PANEL_SAMPLE_SECONDS
by the node's worker (vservers.worker.Watch), never two at once for a node. Each pass

 1. reads the usage of all the node's running servers at once (Engine.sample: one netlink
    dump for every veth's counters, then each server's cgroup counters and disk);
 2. appends one raw sample per running server and one for the node's total, with rates
    against each series' previous sample (vservers.usage.archive.with_rates: a restart or a
    counter that went backwards gives no rate, never a spike); a stopped server gets none, so
    its plot shows a gap;
 3. rolls the bucket before this one up into the 5-minute archive, once it is closed;
 4. stores the latest sample on each sampled server (the usage card and the lists read
    VirtualServer.cpu_seconds, memory_bytes, pids, disk_used_bytes and sampled_at);
 5. sends vservers.usage.signals.node_sampled (robustly: a receiver's error is logged, the
    sampling stands).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from django.db import close_old_connections
from rq.job import JobStatus

from ..jobs import get_engine
from ..models import TERMINAL, Node, State, VirtualServer
from ..reconcile import will_run
from . import archive, store
from .archive import Point
from .signals import node_sampled

log = logging.getLogger(__name__)

SAMPLE_FUNCTION = "vservers.usage.sampler.sample_node"


def job_id(node_id: int) -> str:
    return f"sample-{node_id}"


def queue_run(queue, node_id: int, unless_ended_within: float = 0) -> str:
    """Queue NODE_ID's sampling job under its fixed id, unless it is queued or running
    ("waiting", "running") or ended less than UNLESS_ENDED_WITHIN seconds ago ("recent"):
    passes never overlap, and a worker busy for a while does not pile them up."""
    job = queue.fetch_job(job_id(node_id))
    if job is not None and will_run(job):
        return "waiting" if job.get_status(refresh=False) == JobStatus.QUEUED else "running"
    if job is not None and unless_ended_within and job.ended_at:
        if (datetime.now(UTC) - job.ended_at).total_seconds() < unless_ended_within:
            return "recent"
    queue.enqueue(SAMPLE_FUNCTION, node_id, job_id=job_id(node_id), result_ttl=max(60, int(unless_ended_within) * 2),
                  failure_ttl=86400)
    return "queued"


def sample_node(node_id: int) -> str:
    """The job (see the module's docstring). Returns a one-line summary."""
    close_old_connections()  # a long-lived worker: a database connection gone stale
    try:
        node = Node.objects.filter(pk=node_id).first()
        if node is None or not node.is_active:
            return "node gone or inactive"
        return sample(node)
    finally:
        close_old_connections()


def sample(node: Node, now: float | None = None) -> str:
    """One pass for NODE (1.-5. of the module's docstring) at NOW (epoch seconds)."""
    servers = list(
        VirtualServer.objects.filter(node=node).exclude(state__in=[*TERMINAL, State.REQUESTED]).only("pk", "uuid")
    )
    by_name = {server.engine_name: server for server in servers}
    usages = get_engine().sample(by_name)
    t = int(time.time() if now is None else now)
    bucket = archive.bucket_of(t)
    seen = store.latest(node.pk, bucket)
    node_key = ("n", node.pk)
    before = seen.previous(node_key, bucket)
    # A pass in the same second as the last one (or before it: a clock set back) adds nothing
    # to the history, where it would be a duplicate or out of order; the servers' latest
    # figures and the signal still follow it.
    in_order = before is None or before.t < t
    points = {}
    for name, usage in usages.items():
        key = ("s", by_name[name].pk)
        point = Point(
            t, started=usage.started, cpu_seconds=usage.cpu_seconds, in_bytes=usage.net_in_bytes,
            out_bytes=usage.net_out_bytes, in_packets=usage.net_in_packets, out_packets=usage.net_out_packets,
            memory_bytes=usage.memory_bytes, disk_used_bytes=usage.disk_used_bytes, pids=usage.pids,
        )
        points[key] = archive.with_rates(point, seen.previous(key, bucket))
    points[node_key] = archive.total(t, points.values())
    closed = [row for (_key, start), row in seen.rows.items() if start < bucket and not row.rolled]
    rolled = 0
    if in_order:
        store.append(node.pk, points, seen)
        rolled = store.roll_raw(closed)
    at = datetime.fromtimestamp(t, UTC)
    latest = []
    for name, usage in usages.items():
        server = by_name[name]
        server.cpu_seconds, server.memory_bytes, server.pids = usage.cpu_seconds, usage.memory_bytes, usage.pids
        server.disk_used_bytes, server.sampled_at = usage.disk_used_bytes, at
        latest.append(server)
    # Not over what a stop recorded meanwhile (jobs.guest_stopped: no memory, no processes) if
    # another worker process of the node ran it while this pass read the kernel.
    VirtualServer.objects.filter(state__in=[State.RUNNING, State.RESCUE, State.STARTING, State.STOPPING]).bulk_update(
        latest, ["cpu_seconds", "memory_bytes", "pids", "disk_used_bytes", "sampled_at"], batch_size=store.BATCH)
    for receiver, result in node_sampled.send_robust(sender=Node, node=node, at=at):
        if isinstance(result, Exception):
            log.error("a receiver of node_sampled (%r) failed for node %s", receiver, node.name,
                      exc_info=(type(result), result, result.__traceback__))
    return f"{len(usages)} of {len(servers)} servers sampled, {rolled} buckets rolled up"

