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
    stay zombies (this machine's PID 1 does not reap). An init it reaps there died on its
    own (the engine reaps the ones it stops): then it runs the node's reconcile at once, so
    a crashed guest shows stopped, and autostart brings it back, within seconds instead of
    at the next periodic run (and the crash-loop bound can see ten deaths in a minute);
 4. makes sure each of its nodes has the periodic reconcile job scheduled (at start-up, then
    now and then, in case the chain was broken, e.g. by a Redis restart);
 5. survives faults around it: at start-up, before it takes a job, it fails the operations a
    dead worker left "running" and settles their servers from the kernel (vservers.reconcile.
    recover), and has RQ treat that worker's jobs as abandoned; now and then, and at once
    after Redis was unreachable, it hands over the outbox (queued operations that never
    reached Redis) and restarts its scheduler if Redis took it down; its scheduler process
    dies with it (a SIGKILLed worker leaves no scheduler behind). Its name says which process
    it is ("panel:" + vservers.jobs.runner_id()), so others can tell whether it still lives.
 6. waits for Redis instead of exiting: RQ's own loop gives up (and the process exits) when
    Redis goes away anywhere but in the wait for the next job, e.g. while it records a job's
    end. Here every Redis call of the loop outside that wait treats "unreachable" as "wait
    for it", so the wait's own back-off takes over; at start-up it tries again until Redis
    answers (the database's recovery has run by then). The database keeps every operation's
    outcome, so nothing that Redis forgets is lost.
"""

from __future__ import annotations

import os
import signal
import time

import redis
from django.conf import settings
from django.db import close_old_connections
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

ALLOWED_FUNCTIONS = frozenset({"vservers.jobs.run_operation", "vservers.reconcile.reconcile_node"})
# Between jobs, and at least this often while idle (seconds): how soon a guest's death is seen.
TICK_SECONDS = 2
REAP_EVERY = 1.0
# How often the outbox is handed over (between jobs and while idle).
OUTBOX_EVERY = 10.0
# Redis unreachable (or not answering in time).
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
# The longest wait between two attempts to reach Redis at start-up (seconds).
MAX_REDIS_WAIT = 30.0


class JobRefused(Exception):
    """The job names something the worker does not run."""


class PanelWorker(SimpleWorker):
    # Off in tests that drain queues by hand and want no reconcile job of their own.
    schedule_reconcile = True

    def __init__(self, *args, serializer=None, name=None, **kwargs) -> None:
        from vservers.jobs import runner_id
        from vservers.reconcile import WORKER_NAME_PREFIX

        super().__init__(*args, serializer=JSONSerializer, name=name or WORKER_NAME_PREFIX + runner_id(), **kwargs)
        self._last_reap = 0.0
        self._last_schedule_check = 0.0
        self._last_outbox = 0.0
        self._redis_lost = False
        self._scheduler_wanted = False
        self._guests_exited = False

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
        # The database and the kernel first: this works while Redis is still down.
        self.recover(with_redis=False)
        delay = 1.0
        while True:
            try:
                super().bootstrap(*args, **kwargs)
                break
            except REDIS_DOWN as exc:
                self.log.error("Worker %s: Redis is unreachable (%s); trying again in %d s", self.name, exc, delay)
            except ValueError:  # our own registration, from an attempt that failed half-way
                self.connection.delete(self.key)
                continue
            self.reap_children()
            time.sleep(delay)
            delay = min(delay * 2, MAX_REDIS_WAIT)
        self.reap_children()
        self.recover(with_redis=True)
        self.ensure_reconcile_scheduled()

    @property
    def dequeue_timeout(self) -> int:
        # Wake up now and then while idle, for the housekeeping in heartbeat().
        return max(1, min(super().dequeue_timeout, TICK_SECONDS))

    def heartbeat(self, timeout=None, pipeline=None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except REDIS_DOWN:
            # The wait for the next job meets the outage too, and waits with a back-off; the
            # guests' exits are still collected meanwhile.
            self._redis_lost = True
            if time.monotonic() - self._last_reap >= REAP_EVERY and self.reap_children():
                self._guests_exited = True  # seen to once Redis is back
            return
        # Without a pipeline, RQ calls this only outside jobs: after one, and each time the
        # wait for the next one times out.
        if pipeline is None:
            if time.monotonic() - self._last_reap >= REAP_EVERY and self.reap_children():
                self._guests_exited = True
            if self._redis_lost or not self.registered():
                self._redis_lost = False
                self.after_redis_outage()
            if self._guests_exited:
                self._guests_exited = False
                self.reconcile_now()
            if time.monotonic() - self._last_outbox >= OUTBOX_EVERY:
                self.flush_outbox()
                self.ensure_scheduler()
            if time.monotonic() - self._last_schedule_check >= 6 * settings.PANEL_RECONCILE_SECONDS:
                self.ensure_reconcile_scheduled()

    def execute_job(self, job, queue) -> None:
        close_old_connections()  # a long-lived process: drop a database connection gone stale
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            # RQ could not record the job's start or end. An operation that ran has its
            # outcome on its row; one that did not is still queued there, and is sent again.
            self._redis_lost = True
            self.log.error("Worker %s: Redis went away during job %s: %s", self.name, job.id, exc)
        finally:
            close_old_connections()

    # 6. Redis calls of RQ's loop outside the wait for a job: unreachable means "wait".

    def set_state(self, state, pipeline=None) -> None:
        try:
            super().set_state(state, pipeline)
        except REDIS_DOWN:
            if pipeline is not None:
                raise
            self._redis_lost = True

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except REDIS_DOWN:
            self._redis_lost = True

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except REDIS_DOWN:
            self._redis_lost = True

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
        from vservers.reconcile import ensure_scheduled

        try:
            for node in self.nodes():
                ensure_scheduled(node)
        except Exception:  # noqa: BLE001 - e.g. the database is not migrated yet; try again later
            self.log.exception("Worker %s: could not schedule the reconcile job", self.name)
        finally:
            close_old_connections()

    # -- 5. faults -----------------------------------------------------------------------------

    def nodes(self):
        from vservers.models import Node

        return list(Node.objects.filter(is_active=True, queue_name__in=self.queue_names()))

    def recover(self, with_redis: bool) -> None:
        """After a crash: no operation of our nodes stays "running" for a dead worker."""
        from vservers.reconcile import recover

        try:
            for node in self.nodes():
                counts = recover(node, redis=with_redis)
                if counts["orphans"] or counts["resent"]:
                    self.log.warning("Worker %s: node %s: %s operations of a dead worker failed, %s re-sent",
                                     self.name, node.name, counts["orphans"], counts["resent"])
        except Exception:  # noqa: BLE001 - the reconcile job does the same later
            self.log.exception("Worker %s: could not recover the operations of a dead worker", self.name)
        finally:
            close_old_connections()

    def flush_outbox(self) -> None:
        """Queued operations that never reached Redis go there now."""
        from vservers.reconcile import flush_outbox

        self._last_outbox = time.monotonic()
        try:
            for node in self.nodes():
                sent = flush_outbox(node)
                if sent:
                    self.log.info("Worker %s: node %s: %s waiting operations sent to the queue",
                                  self.name, node.name, sent)
        except Exception:  # noqa: BLE001 - Redis or the database is away; the next tick tries again
            self.log.exception("Worker %s: could not hand over the outbox", self.name)
        finally:
            close_old_connections()

    def reconcile_now(self) -> None:
        """A guest's init died on its own: compare the database with the kernel now (the
        reconcile job's own work, outside the chain)."""
        from vservers.reconcile import Reconciler

        try:
            for node in self.nodes():
                summary = Reconciler(node).run()
                self.log.info("Worker %s: a guest's init exited; node %s: %s", self.name, node.name, summary)
        except Exception:  # noqa: BLE001 - the periodic run does it later
            self.log.exception("Worker %s: could not reconcile after a guest's exit", self.name)
        finally:
            close_old_connections()

    def registered(self) -> bool:
        """Whether Redis still knows this worker (a restarted Redis has forgotten it: the
        heartbeat just made a bare key)."""
        try:
            return bool(self.connection.hexists(self.key, "birth"))
        except REDIS_DOWN:
            self._redis_lost = True
            return True  # the next heartbeat finds out

    def after_redis_outage(self) -> None:
        """Redis is back (maybe empty, after a restart): our registration, the scheduler (it
        exits when Redis goes away), the reconcile chain and the outbox."""
        self.log.warning("Worker %s: Redis is reachable again", self.name)
        try:
            if not self.connection.hexists(self.key, "birth"):
                self.connection.delete(self.key)
                self.register_birth()
                self.set_state(self.get_state())
        except Exception:  # noqa: BLE001 - only the dashboards miss us; the next heartbeat tries again
            self.log.exception("Worker %s: could not register again", self.name)
        self.ensure_scheduler()
        self.ensure_reconcile_scheduled()
        self.flush_outbox()

    def _start_scheduler(self, burst=False, logging_level="INFO", date_format=None, log_format=None) -> None:
        """RQ's own, with a scheduler process that dies with this worker."""
        from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT

        self.scheduler = PanelScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format or DEFAULT_LOGGING_DATE_FORMAT,
            log_format=log_format or DEFAULT_LOGGING_FORMAT,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if burst:
            if self.scheduler.acquired_locks:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            return
        self._scheduler_wanted = True
        if self.scheduler.acquired_locks:
            self.scheduler.start()

    def ensure_scheduler(self) -> None:
        """Start the scheduler again if it died (RQ itself checks only every ten minutes)."""
        scheduler = self.scheduler
        if not self._scheduler_wanted or scheduler is None:
            return
        process = scheduler._process
        if process is None or not process.is_alive():
            try:
                scheduler.acquire_locks(auto_start=True)
            except Exception:  # noqa: BLE001 - next time
                self.log.exception("Worker %s: could not start the scheduler again", self.name)


class PanelScheduler(RQScheduler):
    """RQ's scheduler process, which exits when its worker dies instead of living on as an
    orphan that holds the scheduler lock."""

    def start(self):
        self._parent_pid = os.getpid()
        return super().start()

    def work(self):
        from vservers.engine.syscalls import PR_SET_PDEATHSIG, prctl

        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != getattr(self, "_parent_pid", os.getppid()):
            return  # the worker died before the line above
        super().work()


def _disarm(job, reason: str) -> None:
    """Make JOB fail with JobRefused instead of importing and calling anything it names."""

    def refuse():
        raise JobRefused(reason)

    job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
    job._success_callback = job._failure_callback = job._stopped_callback = None
    job.perform = refuse


def reap_zombie_children(keep: set[int] = frozenset()) -> list[int]:
    """waitpid() every exited child of this process, except the pids in KEEP, whose exit
    status someone else waits for (RQ's scheduler process: its multiprocessing handle).

    A plain waitpid(-1) loop would take KEEP's status too. Instead waitid(WNOWAIT) names the
    next exited child without reaping it, and only that pid is reaped: one system call when
    nothing has exited, however many processes the host or this process has. Children that
    still run are never touched. Only when a kept child stands first in line (it is not
    reaped, so waitid keeps naming it) are the others found by the slower scan of /proc."""
    reaped = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped  # no children at all
        if info is None or not info.si_pid:
            return reaped  # none has exited
        pid = info.si_pid
        if pid in keep:
            return reaped + _reap_by_scan(keep)
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped meanwhile by whoever waits for it
        if done:
            reaped.append(pid)


def _reap_by_scan(keep: set[int]) -> list[int]:
    """The zombies whose parent is this process, found in /proc (the kernel lists a process's
    parent in /proc/PID/stat), reaped except the pids in KEEP."""
    from vservers.engine.procfs import read_stat

    me = os.getpid()
    reaped = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in keep:
            continue
        try:
            stat = read_stat(pid)
        except OSError:
            continue
        if stat is None or stat.state != "Z" or stat.ppid != me:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(pid)
    return reaped
