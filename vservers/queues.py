"""What travels through Redis, and which of it the root worker runs.

 - JSON only (RQ's JSONSerializer): RQ's default pickle would let anyone who can write to
   Redis run code as root in the worker while it merely reads a job.
 - PanelJob, RQ's documented way to customise jobs (`job_class=`): the worker runs only the
   functions in ALLOWED_FUNCTIONS, on plain arguments, and never a callback. Whoever can write
   to Redis can name any importable function, and RQ would import and call it, or the
   callbacks a job names; a refused job fails (RQ records why) without importing anything.
 - PanelQueue: on a node's queue ("node-<name>") every job id begins with the queue's name
   and "_" ("node-b_op-<uuid>"), and so does the worker's name (vservers.worker), so that
   every key RQ keeps for a node's jobs and workers matches a pattern of that node alone:
   its Redis user (vservers.nodes.redis_acl) reaches those and no other node's. Callers
   name jobs as before ("op-<uuid>"); the queue adds the prefix when it makes or fetches one.
   "default" (the one-host install, the panel's own credential) keeps plain ids.
 - A node's worker process queues jobs on its own queue only (serve_only): its Redis user
   may not write another's. What another node is to do next is in the database (a migration
   handed over, an operation asked for); wake() tells that node to look now, and its
   heartbeat thread queues the jobs on its own queue (vservers.nodes.heartbeat,
   vservers.migration.recovery.send_due).
"""

from __future__ import annotations

import logging
import os
import uuid

import django_rq
from django.conf import settings
from django_rq.queues import DjangoRQ
from rq.job import Job
from rq.serializers import JSONSerializer

from .nodes.queues import is_node_queue, key_prefix

log = logging.getLogger(__name__)

ALLOWED_FUNCTIONS = frozenset({
    "vservers.backups.schedule.run_pass",
    "vservers.jobs.run_operation",
    "vservers.jobs.run_template_build",
    "vservers.migration.jobs.cleanup",
    "vservers.migration.jobs.receive",
    "vservers.reconcile.reconcile_node",
    "vservers.usage.jobs.prune",
    "vservers.usage.sampler.sample_node",
})


class JobRefused(Exception):
    """The job names something the panel's worker does not run."""


class PanelJob(Job):
    def perform(self):
        """Run the job only if it names an allowed function, as a plain function: the job's
        data is read (JSON) before anything is imported."""
        try:
            func_name, instance = self.func_name, self.instance
        except Exception as exc:  # noqa: BLE001 - unreadable data is a refusal, not a crash
            raise JobRefused(f"unreadable job data ({type(exc).__name__})") from None
        if func_name not in ALLOWED_FUNCTIONS or instance is not None:
            raise JobRefused(f"function {func_name!r} is not one the panel's worker runs")
        return super().perform()

    # The callbacks a job names in Redis are neither imported nor called: our jobs have none,
    # and the outcome that counts is on the operation's row.
    @property
    def success_callback(self):
        return None

    @property
    def failure_callback(self):
        return None

    @property
    def stopped_callback(self):
        return None


def job_key(queue_name: str, job_id: str | None) -> str | None:
    """JOB_ID as it is kept in Redis on queue QUEUE_NAME: with the node's prefix on a node's
    queue (unchanged if it has it already); None stays None (RQ picks one) elsewhere."""
    if not is_node_queue(queue_name):
        return job_id
    prefix = key_prefix(queue_name)
    if job_id is None:
        return prefix + uuid.uuid4().hex
    return job_id if job_id.startswith(prefix) else prefix + job_id


def worker_prefix(queue_names: list[str]) -> str:
    """What the name of a worker of QUEUE_NAMES begins with: its node's queue and "_" when
    it serves one node's queue (its Redis user may touch only keys named so), else nothing."""
    names = list(queue_names)
    return key_prefix(names[0]) if len(names) == 1 and is_node_queue(names[0]) else ""


class PanelQueue(DjangoRQ):
    """django-rq's queue, with the node's prefix on the ids of the jobs it makes and fetches."""

    def create_job(self, *args, **kwargs):
        kwargs["job_id"] = job_key(self.name, kwargs.get("job_id"))
        return super().create_job(*args, **kwargs)

    def fetch_job(self, job_id: str):
        return super().fetch_job(job_key(self.name, job_id) or job_id)


# The queues this process may push onto; None: any (the panel's processes, the one-host worker).
_serves: frozenset[str] | None = None


def serve_only(queue_names: list[str]) -> None:
    """This process is the worker of these node queues: it pushes onto no other (may_push)."""
    global _serves
    _serves = frozenset(queue_names)


def may_push(queue_name: str) -> bool:
    return _serves is None or queue_name in _serves


def restricted() -> bool:
    """Whether this process is a node's worker that pushes onto its own queues only."""
    return _serves is not None


def wake(queue_name: str) -> bool:
    """Tell the worker of QUEUE_NAME that the database has work for it (it then queues the
    jobs on its own queue). The message carries nothing; False if Redis cannot be reached
    now (the node's heartbeat looks every PANEL_HEARTBEAT_SECONDS anyway)."""
    from .nodes.redis_acl import wake_channel

    try:
        get_queue(queue_name).connection.publish(wake_channel(queue_name), "")
    except Exception as exc:  # noqa: BLE001 - a lost wake-up costs one heartbeat period
        log.warning("could not wake the worker of %s (%s); its heartbeat looks anyway", queue_name, exc)
        return False
    return True


# The queues made so far in this process, by name, process and configuration.
_queues: dict[tuple, object] = {}


def get_queue(name: str = "default"):
    """The queue NAME, kept for the process: a new queue object comes with a new Redis
    connection, whose first enqueue also asks the server for its version (about 5 ms of
    every operation queued). Redis-py's pool reconnects by itself after Redis restarted. A
    changed RQ_QUEUES entry (tests) or a forked process gets a queue of its own."""
    key = (name, os.getpid(), repr(settings.RQ_QUEUES.get(name)))
    queue = _queues.get(key)
    if queue is None:
        queue = _queues[key] = new_queue(name)
    return queue


def new_queue(name: str, connection=None):
    """A new queue object for NAME (JSON, PanelJob), on CONNECTION or a Redis client of its own."""
    return django_rq.get_queue(name, connection=connection, serializer=JSONSerializer, job_class=PanelJob,
                               queue_class=PanelQueue)
