"""The node's worker process, as root: `manage.py nodeworker [QUEUE...]` (default "default").

It runs the panel's jobs with RQ's SimpleWorker through RQ's public API only, and keeps no
state of its own in Redis: the operation rows are the truth, and a job only wakes the worker
up (vservers.jobs, vservers.reconcile). Why a SimpleWorker (no fork per job): the engine,
pyroute2 and Django are imported once, and this process stays the parent that the guests'
inits it starts are handed to. The process (NodeWorker.run)

 1. becomes a child subreaper: a guest's init is reparented to it when the engine's setup
    child exits (this machine's PID 1 does not reap, so someone must);
 2. recovers (vservers.reconcile.recover): fails the operations that a dead worker left
    "running" and settles their servers from the kernel, with the database and the engine
    only, so this works while Redis is still down;
 3. starts its two threads: the heartbeat (vservers.nodes.heartbeat: Node.last_seen every
    PANEL_HEARTBEAT_SECONDS, with its own database connection) and the Watch (below);
 4. runs PanelWorkers (a SimpleWorker of PanelJobs, read as JSON) one after the other: a new
    one once Redis answers again when the last one's work() returned or raised (RQ gives up
    when Redis fails anywhere but in its wait for the next job), and when the watch saw
    Redis come back from an outage (it may have restarted empty and forgotten the worker);
    until SIGTERM or SIGINT: a warm stop, the job at hand finishes first (a second signal is
    RQ's cold stop).

The watch thread never touches the database. Every second it

 - reaps the guests' inits that this process started: jobs register each one (and forget it
   before they stop it themselves), the watch holds a pidfd for it, and only an init whose
   pidfd says it exited is waited for, by its pid, so the watch never takes the exit status
   of a process that `subprocess` or the engine waits for. Such an init died on its own (a
   crash inside the guest, the OOM killer, a kill from the host), so the watch has the node
   reconciled now: the server shows stopped and autostart brings it back within seconds, and
   the crash-loop bound sees ten deaths in a minute;
 - queues the node's periodic reconcile job every PANEL_RECONCILE_SECONDS, from start-up on,
   its usage sampling job every PANEL_SAMPLE_SECONDS, and the usage history's prune job
   every few minutes (vservers.usage);
 - asks Redis who it is (its run id); when Redis is back from an outage or was restarted, it
   queues the reconcile at once (its resend_lost hands over the outbox: operations asked for
   while Redis was down) and has the main thread start a new PanelWorker, which registers
   with the Redis that forgot the old one.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import django_rq
import redis
from django.conf import settings
from django.db import close_old_connections
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from . import jobs, reconcile
from .nodes.heartbeat import Heartbeat
from .queues import PanelJob, new_queue, worker_prefix

log = logging.getLogger(__name__)

# How often the watch looks (seconds): how soon a guest's death is seen.
TICK_SECONDS = 1.0
# Redis unreachable (or not answering in time).
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
# The longest wait between two attempts to reach Redis (seconds).
MAX_REDIS_WAIT = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long the worker's pubsub thread (RQ's commands to a worker: stop, kill the job) waits per
# turn (PanelWorker.subscribe), and the longest a stop waits for it (PanelWorker.unsubscribe).
PUBSUB_WAKE_SECONDS = 1.0
# The watch to this process: end the PanelWorker at hand (warm) and start a new one.
RENEW_SIGNAL = signal.SIGUSR1


class PanelWorker(SimpleWorker):
    """RQ's SimpleWorker with the panel's settings: PanelJob (the allow-list), JSON whatever
    serializer it is given, and a name that says which process it is ("panel:" + the runner
    id, so a job it left "started" can be told dead: reconcile.worker_gone), after its node's
    queue and "_" on a node's queue ("node-b_panel:...": its Redis user's keys)."""

    # RQ's own setting: the longest pause between its attempts to reach Redis while it waits
    # for a job (RQ's 60 s would leave the operations asked for meanwhile waiting that long).
    max_connection_wait_time = MAX_REDIS_WAIT

    def __init__(self, queues, **kwargs) -> None:
        names = [queue.name for queue in queues]
        kwargs.setdefault("name", worker_prefix(names) + reconcile.WORKER_NAME_PREFIX + jobs.runner_id())
        super().__init__(queues, **{**kwargs, "job_class": PanelJob, "serializer": JSONSerializer})
        self.stopping = False

    def subscribe(self) -> None:
        """RQ's own subscribe, with its pubsub thread waking every PUBSUB_WAKE_SECONDS instead
        of every 60 s. redis-py 8 joins that thread when it is stopped
        (PubSubWorkerThread.stop), and a thread that had just seen the unsubscribe sleeps its
        whole turn waiting for a new subscription: with RQ's 60 s every worker's teardown
        (each stop of a node's worker, each burst in the tests) took up to a minute."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        # RQ declares the attribute as None (its own assignment is the same thread type).
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=PUBSUB_WAKE_SECONDS, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def unsubscribe(self) -> None:
        """RQ's own, in the other order: the thread is told to end before the UNSUBSCRIBE goes
        out, so the reply that wakes it ends it. In RQ's order (unsubscribe, then stop) a
        thread that read the reply first waits up to its whole turn for a new subscription
        (redis-py's get_message), and the stop joins it (strace, after: the thread ends within
        2 ms of the reply)."""
        thread = self.pubsub_thread
        if thread is None:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        thread.stop(timeout=0)  # no wait here: the reply to the unsubscribe is what wakes it
        self.pubsub.unsubscribe()
        thread.join(timeout=PUBSUB_WAKE_SECONDS)
        self.pubsub.close()

    def request_stop(self, signum, frame) -> None:
        """RQ's warm stop; SIGTERM and SIGINT (not the watch's RENEW_SIGNAL) also end the
        process once this worker has returned."""
        if signum in STOP_SIGNALS:
            self.stopping = True
        super().request_stop(signum, frame)


class NodeWorker:
    """The process (see the module's docstring)."""

    def __init__(self, queue_names: list[str]) -> None:
        self.queue_names = queue_names
        self.stopping = False
        self.worker: PanelWorker | None = None  # the one whose work() runs now
        self.last: PanelWorker | None = None  # the last one started
        self.started_at = 0.0  # when it started (time.monotonic)
        self.woken = False  # the watch found Redis back: a pause between attempts ends

    def run(self) -> None:
        """1.-4. of the module's docstring, until asked to stop."""
        from .engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.handle_signals()
        try:
            # Ready by the first job, not made when it comes (jobs.get_engine: ~80 ms).
            jobs.get_engine().start_fork_server()
        except Exception:  # noqa: BLE001 - the first start makes it, or says why it cannot
            log.exception("could not start the engine's fork server ahead of the first job")
        self.recover()
        # Its own thread and database connection: a long job must not make the node look gone.
        heartbeat = Heartbeat(self.queue_names)
        heartbeat.start()
        watch = Watch(self.queue_names, self.renew)
        jobs.init_watch = watch
        watch.start()
        delay = 0.0
        try:
            while not self.stopping:
                self.pause(delay)
                watch.nodes = self.nodes() or watch.nodes
                try:
                    self.work()
                    # RQ gave up (Redis went away in its bookkeeping), unless the watch renewed it.
                    delay = 0.0 if self.started_at < watch.renewed_at else 1.0
                except StopRequested:
                    delay = 0.0  # the signal came just outside RQ's loop, which catches it itself
                except REDIS_DOWN as exc:
                    delay = min(max(delay * 2, 1.0), MAX_REDIS_WAIT)
                    log.error("Redis is unreachable (%s); trying again in %.0f s", exc, delay)
                except Exception:  # noqa: BLE001 - RQ's loop ended unexpectedly: start anew
                    log.exception("the RQ worker ended; starting a new one")
                    delay = 1.0
                if self.last is not None and self.last.stopping:
                    self.stopping = True
        finally:
            watch.stop()
            heartbeat.stop()
            jobs.init_watch = None
            close_old_connections()

    def work(self) -> None:
        """One PanelWorker, until its work() returns (REDIS_DOWN while Redis does not answer)."""
        self.woken = False
        try:
            connection = django_rq.get_connection(self.queue_names[0])
            connection.ping()
            if self.last is not None:
                # Same name: RQ refuses to register a name whose record looks alive, and a
                # worker whose end Redis missed (or a signal cut short) left one.
                self.last.register_death()
            queues = [new_queue(name, connection) for name in self.queue_names]
            self.last = self.worker = PanelWorker(queues, connection=connection)
            self.started_at = time.monotonic()
            if jobs.TEST_FAULT == "worker:starting":  # the test stops it here (test_faults.py)
                os.kill(os.getpid(), signal.SIGSTOP)
            if self.stopping:  # asked before RQ's work() could hear it: its loop never would
                return
            self.worker.work()
        finally:
            self.worker = None
            self.handle_signals()

    def handle_signals(self) -> None:
        """Outside RQ's work() (which installs its own for SIGTERM and SIGINT, and so ends up
        in PanelWorker.request_stop): remember a stop; a renewal ends the worker at hand."""
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(RENEW_SIGNAL, self.on_renew)

    def on_stop(self, signum, frame) -> None:
        self.stopping = True
        worker = self.worker
        if worker is not None:
            # RQ's work() is starting and has not put in its own handlers yet, which would tell
            # the worker; without this its loop ran on until SIGKILL (a stop right after start).
            # Idle, this raises StopRequested, which run() takes for the end of the worker.
            worker.request_stop(signum, frame)

    def on_renew(self, signum, frame) -> None:
        worker = self.worker
        if worker is None:
            return
        try:
            worker.request_stop(signum, frame)  # idle: raises StopRequested, RQ's loop ends
        finally:
            # Busy: the job at hand finishes first. RQ has made the next SIGTERM or SIGINT a
            # cold stop (it takes this for the first one); it is not.
            signal.signal(signal.SIGTERM, worker.request_stop)
            signal.signal(signal.SIGINT, worker.request_stop)

    def renew(self, since: float) -> None:
        """Called by the watch: Redis is back from an outage that began at SINCE. A worker
        started before then is renewed: Redis may have restarted empty and forgotten it."""
        if self.worker is None:
            self.woken = True
        elif self.started_at < since:
            os.kill(os.getpid(), RENEW_SIGNAL)

    def pause(self, seconds: float) -> None:
        """Sleep, but not past a stop request (a signal handler only sets a flag) or the watch
        finding Redis back."""
        deadline = time.monotonic() + seconds
        while not (self.stopping or self.woken) and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def nodes(self) -> list[tuple[int, str]]:
        """The active nodes this process serves, as (pk, queue name); none if the database
        cannot say now (the watch keeps the ones it has)."""
        from .models import Node

        try:
            return list(Node.objects.filter(is_active=True, queue_name__in=self.queue_names)
                        .values_list("pk", "queue_name"))
        except Exception:  # noqa: BLE001 - e.g. the database is not migrated yet
            log.exception("could not read this worker's nodes")
            return []
        finally:
            close_old_connections()

    def recover(self) -> None:
        """After a crash: no operation of our nodes stays "running" for a dead worker. And
        the other nodes' migration keys into authorized_keys (vservers.nodes.keys)."""
        from .models import Node
        from .nodes import keys

        try:
            mine = list(Node.objects.filter(is_active=True, queue_name__in=self.queue_names))
            keys.sync(reconcile.get_engine().config, [node.pk for node in mine])
        except Exception:  # noqa: BLE001 - every reconcile run does the same later
            log.exception("could not write authorized_keys")
        try:
            for node in Node.objects.filter(is_active=True, queue_name__in=self.queue_names):
                failed = reconcile.recover(node)
                if failed:
                    log.warning("node %s: %s operations of a dead worker failed", node.name, failed)
        except Exception:  # noqa: BLE001 - every reconcile run does the same later
            log.exception("could not recover the operations of a dead worker")
        finally:
            close_old_connections()


class Watch(threading.Thread):
    """The worker process's one thread (see the module's docstring). It never touches the
    database: the main thread hands it the nodes, and jobs hand it the inits they start."""

    def __init__(self, queue_names: list[str], renew: Callable[[float], None]) -> None:
        super().__init__(name="panel-watch", daemon=True)
        self.renew = renew
        self.nodes: list[tuple[int, str]] = []  # (node pk, queue name), set by the main thread
        self.period = float(settings.PANEL_RECONCILE_SECONDS)
        self.lock = threading.Lock()
        self.inits: dict[str, tuple[int, int]] = {}  # server engine name -> (init pid, pidfd)
        self.forgotten: list[int] = []  # pidfds to close: only this thread polls or closes them
        self.done = threading.Event()
        self.queues = {name: new_queue(name) for name in queue_names}  # a Redis client of its own
        self.connection = self.queues[queue_names[0]].connection
        # Not the worker's pause of up to a minute: a Redis that hangs holds up only a tick.
        self.connection.connection_pool.connection_kwargs.update(socket_timeout=5, socket_connect_timeout=5)
        self.due = 0.0  # the periodic run (time.monotonic): at start-up
        self.sample_period = float(settings.PANEL_SAMPLE_SECONDS)
        self.sample_due = 0.0  # the next sampling and pruning (time.monotonic)
        self.prune_due = 0.0
        self.backup_due = 0.0  # the next pass over the backup schedules (time.monotonic)
        self.wanted = False  # a run now: a guest died, or Redis is back
        self.lost_at: float | None = None  # when Redis was found unreachable
        self.run_id = ""  # Redis's: a new one means it restarted, maybe between two looks
        self.renewed_at = 0.0

    # -- the jobs' side (the main thread) --------------------------------------------------

    def add(self, name: str, pid: int) -> None:
        """PID is the init of server NAME, just started by this process."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.wanted = True  # gone already
            return
        with self.lock:
            old = self.inits.pop(name, None)
            if old is not None:
                self.forgotten.append(old[1])
            self.inits[name] = (pid, fd)

    def discard(self, name: str) -> None:
        """This process is about to end server NAME's init itself (the engine reaps it)."""
        with self.lock:
            old = self.inits.pop(name, None)
            if old is not None:
                self.forgotten.append(old[1])

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
        with self.lock:
            fds = self.forgotten + [fd for _, fd in self.inits.values()]
            self.forgotten, self.inits = [], {}
        for fd in fds:
            os.close(fd)

    # -- the thread ------------------------------------------------------------------------

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.tick()
            except REDIS_DOWN as exc:
                if self.lost_at is None:
                    self.lost_at = time.monotonic()
                    log.error("Redis is unreachable: %s", exc)
            except Exception:  # noqa: BLE001 - the watch must outlive any one problem
                log.exception("the worker's watch could not queue the reconcile job")
            try:
                if self.reap(TICK_SECONDS):
                    self.wanted = True
            except Exception:  # noqa: BLE001 - as above
                log.exception("the worker's watch could not reap")
                self.done.wait(TICK_SECONDS)

    def reap(self, timeout: float) -> list[str]:
        """Wait up to TIMEOUT for a watched init to exit; reap the ones that did, exactly by
        their pids. Returns their servers' names."""
        with self.lock:
            closing, self.forgotten = self.forgotten, []
            watched = {fd: (name, pid) for name, (pid, fd) in self.inits.items()}
        for fd in closing:
            os.close(fd)
        if not watched:
            self.done.wait(timeout)
            return []
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        died = []
        for fd, _ in poller.poll(timeout * 1000):
            name, pid = watched[fd]
            with self.lock:
                if self.inits.get(name) != (pid, fd):
                    continue  # forgotten meanwhile: the engine ends it; its fd is closed next time
                del self.inits[name]
            os.close(fd)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass  # not our child (any more): whoever it belongs to collects it
            died.append(name)
        if died:
            log.warning("the init of %s exited: reconciling now", ", ".join(died))
        return died

    def tick(self) -> None:
        """Redis (is it there, is it back, did it restart?) and the reconcile runs that are due."""
        run_id = self.connection.info("server")["run_id"]
        now = time.monotonic()
        if self.lost_at is not None or self.run_id not in ("", run_id):
            log.warning("Redis is reachable again" if self.lost_at is not None else "Redis restarted")
            self.renewed_at = now
            self.renew(self.lost_at or now)
            self.lost_at, self.wanted = None, True
        self.run_id = run_id
        if self.wanted:
            # A run that is running now may have looked at a server before it died: again
            # once it has ended. One that is queued sees it.
            said = [reconcile.queue_run(self.queues[name], pk) for pk, name in self.nodes]
            self.wanted = "running" in said
        if now >= self.due:
            self.due = now + self.period
            for pk, name in self.nodes:
                reconcile.queue_run(self.queues[name], pk, unless_ended_within=self.period / 2)
        self.usage_jobs(now)
        self.backup_jobs(now)

    def usage_jobs(self, now: float) -> None:
        """The usage sampler of each node, and the history's pruning (the first node's, on
        its queue: a node's database role prunes the rows it reaches, its own)."""
        from .usage import jobs as usage_jobs
        from .usage import sampler

        if now >= self.sample_due:
            self.sample_due = now + self.sample_period
            for pk, name in self.nodes:
                sampler.queue_run(self.queues[name], pk, unless_ended_within=self.sample_period / 2)
        if now >= self.prune_due and self.nodes:
            self.prune_due = now + usage_jobs.PRUNE_SECONDS
            usage_jobs.queue_prune(self.queues[self.nodes[0][1]], self.nodes[0][0])

    def backup_jobs(self, now: float) -> None:
        """Each node's pass over its backup schedules (vservers.backups.schedule), every minute."""
        from .backups import schedule

        if now >= self.backup_due:
            self.backup_due = now + schedule.PASS_SECONDS
            for pk, name in self.nodes:
                schedule.queue_pass(self.queues[name], pk)


class WorkerGroup:
    """`manage.py nodeworker` with PANEL_NODE_WORKERS (or --processes) above one: this process
    runs that many worker processes (`nodeworker --processes 1`, each the NodeWorker above) on
    the same queues and looks after them; it runs no job itself.

    - Each child is a subreaper of the guests' inits it starts, and this process is one too:
      the inits of a child that ended come here, and are reaped here (this machine's PID 1
      does not reap).
    - SIGTERM or SIGINT is passed on to every child (a warm stop: each finishes its job at
      hand; a second signal is their cold stop), and this process ends once they all have.
    - A child that ends on its own (it crashed, or was killed) is started again after
      RESTART_SECONDS; its running operation is failed by the new one's recovery
      (reconcile.recover), as after a crash of a lone worker.
    - Each child asks the kernel for SIGTERM when this process dies (PR_SET_PDEATHSIG), so a
      group whose head was killed does not live on beside the next one systemd starts.
    """

    RESTART_SECONDS = 1.0
    TICK_SECONDS = 0.5

    def __init__(self, queue_names: list[str], processes: int) -> None:
        self.queue_names = queue_names
        self.processes = processes
        # pid -> its Popen, kept referenced: subprocess then never waits for it itself (only a
        # Popen dropped while its process runs is), so reap() sees every end.
        self.children: dict[int, subprocess.Popen] = {}
        self.due: list[float] = []  # when to start a child again (time.monotonic)
        self.stops = 0  # stop signals received

    def run(self) -> None:
        from .engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

        prctl(PR_SET_CHILD_SUBREAPER, 1)
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        log.info("running %d worker processes on %s", self.processes, ", ".join(self.queue_names))
        for _ in range(self.processes):
            self.spawn()
        while self.children or (self.due and not self.stops):
            self.reap()
            now = time.monotonic()
            while self.due and self.due[0] <= now and not self.stops:
                self.due.pop(0)
                self.spawn()
            time.sleep(self.TICK_SECONDS)

    def spawn(self) -> None:
        from .engine.syscalls import PR_SET_PDEATHSIG, prctl

        def die_with_parent() -> None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

        argv = [sys.executable, str(settings.BASE_DIR / "manage.py"), "nodeworker", "--processes", "1",
                *self.queue_names]
        # Not waited for by subprocess: reap() collects every child of this process by pid.
        child = subprocess.Popen(argv, cwd=settings.BASE_DIR, preexec_fn=die_with_parent)  # noqa: PLW1509
        self.children[child.pid] = child

    def reap(self) -> None:
        """Collect every child that ended: a worker (started again unless we stop) or a
        guest's init that a worker which ended left to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue  # an adopted init
            child.returncode = os.waitstatus_to_exitcode(status)
            if not self.stops:
                log.error("worker process %d ended (exit code %s); starting another in %.0f s", pid,
                          child.returncode, self.RESTART_SECONDS)
                self.due.append(time.monotonic() + self.RESTART_SECONDS)

    def on_stop(self, signum, frame) -> None:
        self.stops += 1
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
