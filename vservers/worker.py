"""The node's RQ worker: runs the panel's jobs as root, in its own process.

    manage.py rqworker default --worker-class vservers.worker.PanelWorker \\
        --serializer rq.serializers.JSONSerializer --with-scheduler

Why a SimpleWorker (no fork per job): the engine, pyroute2 and Django are imported once, and
the worker stays the parent that guests' inits are handed to. On top of RQ's worker it

 1. runs only the functions in ALLOWED_FUNCTIONS: whoever can write to Redis must not be
    able to run anything else as root. Any other job (or one with callbacks, which RQ would
    import and call too) is failed without importing or running anything of it;
 2. reads jobs as JSON, whatever serializer it is given (pickle would run code on load);
 3. is a child subreaper: a guest's init is reparented to it when the engine's setup child
    exits, so it reaps its exited children between jobs and while idle, or dead inits would
    stay zombies (this machine's PID 1 does not reap);
 4. makes sure each of its nodes has the periodic reconcile job scheduled (at start-up, then
    now and then, in case the chain was broken, e.g. by a Redis restart).
"""

from __future__ import annotations

import os
import time

from django.conf import settings
from django.db import close_old_connections
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

ALLOWED_FUNCTIONS = frozenset({"vservers.jobs.run_operation", "vservers.reconcile.reconcile_node"})
# Between jobs, and at least this often while idle (seconds).
TICK_SECONDS = 10
REAP_EVERY = 1.0


class JobRefused(Exception):
    """The job names something the worker does not run."""


class PanelWorker(SimpleWorker):
    # Off in tests that drain queues by hand and want no reconcile job of their own.
    schedule_reconcile = True

    def __init__(self, *args, serializer=None, **kwargs) -> None:
        super().__init__(*args, serializer=JSONSerializer, **kwargs)
        self._last_reap = 0.0
        self._last_schedule_check = 0.0

    # -- 1. the allow-list ---------------------------------------------------------------------

    @staticmethod
    def refusal(job) -> str | None:
        """Why JOB must not run, or None. Reads only the job's data, imports nothing."""
        try:
            func_name, instance = job.func_name, job.instance
        except Exception as exc:  # noqa: BLE001 - unreadable data is a refusal, not a crash
            return f"unreadable job data ({type(exc).__name__})"
        if func_name not in ALLOWED_FUNCTIONS or instance is not None:
            return f"function {func_name!r} is not one the panel's worker runs"
        callbacks = [job._success_callback_name, job._failure_callback_name, job._stopped_callback_name]
        if any(callbacks):
            return "jobs with callbacks are not run"
        return None

    def perform_job(self, job, queue, execution) -> bool:
        reason = self.refusal(job)
        if reason is not None:
            self.log.error("Worker %s: refusing job %s: %s", self.name, job.id, reason)
            _disarm(job, reason)
        # RQ's own path records the failure (failed registry, job status, exception info).
        return super().perform_job(job, queue, execution)

    # -- 3./4. housekeeping between jobs -----------------------------------------------------

    def bootstrap(self, *args, **kwargs) -> None:
        from vservers.engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

        prctl(PR_SET_CHILD_SUBREAPER, 1)
        super().bootstrap(*args, **kwargs)
        self.reap_children()
        self.ensure_reconcile_scheduled()

    @property
    def dequeue_timeout(self) -> int:
        # Wake up now and then while idle, for the housekeeping in heartbeat().
        return max(1, min(super().dequeue_timeout, TICK_SECONDS))

    def heartbeat(self, timeout=None, pipeline=None) -> None:
        super().heartbeat(timeout, pipeline)
        # Without a pipeline, RQ calls this only outside jobs: after one, and each time the
        # wait for the next one times out.
        if pipeline is None:
            if time.monotonic() - self._last_reap >= REAP_EVERY:
                self.reap_children()
            if time.monotonic() - self._last_schedule_check >= 6 * settings.PANEL_RECONCILE_SECONDS:
                self.ensure_reconcile_scheduled()

    def execute_job(self, job, queue) -> None:
        close_old_connections()  # a long-lived process: drop a database connection gone stale
        try:
            super().execute_job(job, queue)
        finally:
            close_old_connections()

    def reap_children(self) -> list[int]:
        """Collect every exited child except RQ's scheduler process, whose exit status its
        multiprocessing handle waits for itself."""
        self._last_reap = time.monotonic()
        keep = set()
        scheduler = getattr(self, "scheduler", None)
        process = getattr(scheduler, "_process", None) if scheduler else None
        if process is not None and process.pid:
            keep.add(process.pid)
        return reap_zombie_children(keep)

    def ensure_reconcile_scheduled(self) -> None:
        self._last_schedule_check = time.monotonic()
        if not self.schedule_reconcile:
            return
        from vservers.models import Node
        from vservers.reconcile import ensure_scheduled

        try:
            for node in Node.objects.filter(is_active=True, queue_name__in=self.queue_names()):
                ensure_scheduled(node)
        except Exception:  # noqa: BLE001 - e.g. the database is not migrated yet; try again later
            self.log.exception("Worker %s: could not schedule the reconcile job", self.name)
        finally:
            close_old_connections()


def _disarm(job, reason: str) -> None:
    """Make JOB fail with JobRefused instead of importing and calling anything it names."""

    def refuse():
        raise JobRefused(reason)

    job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
    job._success_callback = job._failure_callback = job._stopped_callback = None
    job.perform = refuse


def reap_zombie_children(keep: set[int] = frozenset()) -> list[int]:
    """waitpid() every zombie whose parent is this process, except the pids in KEEP. The
    kernel lists a process's parent in /proc/PID/stat; scanning it touches no child that is
    still running, so no one else's waitpid() loses its child."""
    me = os.getpid()
    reaped = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in keep:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" or int(fields[1]) != me:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(pid)
    return reaped
