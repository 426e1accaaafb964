"""The usage history's own periodic job: roll up what the sampler missed and the days that are
over, then delete what is past retention (raw 24 h, 5 minutes 30 days, daily a year), in
batches of store.BATCH rows, each its own short transaction, so it never holds the database's
write lock for long and never blocks a page. One job per node (job id "usage-prune-<node
id>": on PostgreSQL a node's database role reaches only the rows of its own servers and its own
totals, vservers.nodes.rowsecurity), queued by the node's worker's watch every PRUNE_SECONDS;
a second ask while it is queued or running adds nothing."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from django.db import close_old_connections
from rq.job import JobStatus

from ..reconcile import will_run
from . import store

log = logging.getLogger(__name__)

PRUNE_FUNCTION = "vservers.usage.jobs.prune"
PRUNE_JOB_ID = "usage-prune-{node_id}"
PRUNE_SECONDS = 300


def prune() -> str:
    close_old_connections()
    try:
        now = int(time.time())
        counts = {**store.roll_up_closed(now), **{f"{k} deleted": v for k, v in store.prune(now).items()}}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        log.info("usage history: %s", summary)
        return summary
    finally:
        close_old_connections()


def queue_prune(queue, node_id: int) -> str:
    job_id = PRUNE_JOB_ID.format(node_id=node_id)
    job = queue.fetch_job(job_id)
    if job is not None and will_run(job):
        return "waiting" if job.get_status(refresh=False) == JobStatus.QUEUED else "running"
    if job is not None and job.ended_at and (datetime.now(UTC) - job.ended_at).total_seconds() < PRUNE_SECONDS / 2:
        return "recent"
    queue.enqueue(PRUNE_FUNCTION, job_id=job_id, result_ttl=PRUNE_SECONDS * 2, failure_ttl=86400)
    return "queued"
