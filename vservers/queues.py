"""What travels through Redis, and which of it the root worker runs.

 - JSON only (RQ's JSONSerializer): RQ's default pickle would let anyone who can write to
   Redis run code as root in the worker while it merely reads a job.
 - PanelJob, RQ's documented way to customise jobs (`job_class=`): the worker runs only the
   functions in ALLOWED_FUNCTIONS, on plain arguments, and never a callback. Whoever can write
   to Redis can name any importable function, and RQ would import and call it, or the
   callbacks a job names; a refused job fails (RQ records why) without importing anything.
"""

from __future__ import annotations

import os

import django_rq
from django.conf import settings
from rq.job import Job
from rq.serializers import JSONSerializer

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
    return django_rq.get_queue(name, connection=connection, serializer=JSONSerializer, job_class=PanelJob)
