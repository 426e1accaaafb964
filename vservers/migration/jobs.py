"""The worker's side of a migration (issue 16), across two nodes' workers.

 1. Source, `migrate` (the MIGRATE operation's handler, vservers.jobs.HANDLERS): records
    itself as the runner, stops the server if it runs, ships its image and configuration (and
    its template version when the target lacks it) into the target's incoming/ with the
    engine's rsync over SSH, with progress on the operation; then phase "shipped", the
    `receive` job on the TARGET's queue, and the job ends leaving the operation running
    (Run.handed_over).
 2. Target, `receive`: claims the migration (shipped -> receiving, compare-and-swap), takes
    new addresses from its pools when the server cannot keep its own, has the engine adopt
    the server and starts it if it ran; then ONE transaction moves the server (server.node),
    releases the old addresses, ends the migration and the operation. That commit is the point
    of no return; the source's stopped copy is removed by `cleanup` on the source's queue (queued by the
    source itself once woken: push).
 3. Any failure before that commit leaves the server on the source: the target removes its
    copy (stop, delete, discard incoming/), new address rows are released, the migration and
    the operation fail, and a start is queued on the source if the server ran.

A worker killed in the middle is settled by the recovery of its own node (recovery.py).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from django.db import close_old_connections, transaction
from django.utils import timezone

from ..engine import EngineError, NotFound
from ..models import (
    ACTIVE_PHASES,
    BuiltTemplate,
    IPAddress,
    IPPool,
    Migration,
    MigrationPhase,
    Node,
    Operation,
    OperationKind,
    OperationStatus,
    PoolExhausted,
    State,
    VirtualServer,
)

if TYPE_CHECKING:
    from ..engine import Engine
    from ..engine.migrate import MigrationTarget
    from ..jobs import Run

log = logging.getLogger(__name__)

RECEIVE_FUNCTION = "vservers.migration.jobs.receive"
CLEANUP_FUNCTION = "vservers.migration.jobs.cleanup"
# The most often the shipping progress is written to the rows (seconds between two writes).
PROGRESS_EVERY = 1.0
# What the tenant reads when a move failed (the engine's message goes to the detail).
FAILED_SENTENCES: dict[str, str] = {
    OperationKind.MIGRATE: "The server could not be moved to another node; it stays where it was",
}
STAYS = "the move to another node failed; the server stays on its node"


def receive_job_id(migration_id: int) -> str:
    return f"migrate-receive-{migration_id}"


def cleanup_job_id(migration_id: int, node_id: int) -> str:
    return f"migrate-cleanup-{migration_id}-{node_id}"


# How long a cleanup job's record is kept: while the migration is recent (recovery.send_due
# looks at those that ended within CLEANUP_WINDOW), its record says it was queued already.
CLEANUP_RESULT_TTL = 3 * 3600


def push(node: Node, function: str, *args, job_id: str) -> bool:
    """Queue FUNCTION(*ARGS) on NODE's queue; False if Redis cannot be reached now (each
    node's reconcile sends it again: recovery.py). A node's worker never writes another
    node's queue: the rows committed before say what that node is to do, and a wake-up has
    it queue the job on its own queue now (recovery.send_due, from its heartbeat thread)."""
    from ..queues import get_queue, may_push, wake

    if not may_push(node.queue_name):
        return wake(node.queue_name)
    try:
        get_queue(node.queue_name).enqueue(function, *args, job_id=job_id, failure_ttl=86400,
                                           result_ttl=CLEANUP_RESULT_TTL)
    except Exception as exc:  # noqa: BLE001 - the rows say what is due; the reconcile resends it
        log.warning("could not queue %s on node %s (%s); its reconcile does it", function, node.name, exc)
        return False
    return True


def migration_target(node: Node, engine: Engine) -> MigrationTarget:
    """Where the source ships to: NODE's sshd, host key and state root, with this (the
    source's) node key."""
    from ..engine import migrate

    host, port = split_address(node.ssh_address)
    if not host or not node.ssh_host_key:
        raise EngineError(f"node {node.name} has no SSH address or host key; has it joined?")
    key_path, _public = migrate.ensure_node_key(engine.config)
    return migrate.MigrationTarget(host=host, port=port, root=Path(node.vserver_root), identity_file=key_path,
                                   known_host_key=node.ssh_host_key.strip())


def split_address(address: str) -> tuple[str, int]:
    """"host", "host:port" or "[v6]:port" -> (host, port); port 22 when none is given."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 22
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        if port.isdigit():
            return host, int(port)
    return address, 22


def target_lacks_template(server: VirtualServer, target: Node, version: str) -> bool:
    """Whether the template version SERVER runs on is unknown to TARGET (not its current build):
    then it is shipped along (the engine installs it only when its store lacks it)."""
    built = BuiltTemplate.objects.filter(template_id=server.template_id, node=target).values_list(
        "version", flat=True).first()
    return built != version


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


class ShipProgress:
    """The engine's progress(done, total) while shipping: the migration's bytes and the
    operation's output line, at most every PROGRESS_EVERY seconds and once at the end."""

    def __init__(self, run: Run, migration: Migration) -> None:
        self.run = run
        self.migration_pk = migration.pk
        self.target = migration.target.name
        self.last = 0.0
        self.started = False

    def __call__(self, done: int, total: int) -> None:
        if not self.started:
            self.started = True
            self.run.checkpoint("shipping")  # a test's worker stops here, mid-copy, to be killed
        now = time.monotonic()
        finished = total > 0 and done >= total
        if now - self.last < PROGRESS_EVERY and not finished:
            return
        self.last = now
        percent = min(100, done * 100 // total) if total > 0 else 0
        Migration.objects.filter(pk=self.migration_pk, phase=MigrationPhase.SHIPPING).update(
            bytes_done=done, bytes_total=total)
        text = f"Copying to node {self.target}: {percent} % ({_megabytes(done)} of {_megabytes(total)})"
        Operation.objects.filter(pk=self.run.operation.pk, status=OperationStatus.RUNNING).update(output=text)
        VirtualServer.objects.filter(pk=self.run.server.pk).update(updated=timezone.now())


# --- 1. the source ----------------------------------------------------------------------------


def migrate(run: Run) -> None:
    """The MIGRATE operation's handler, on the source's worker (see the module's docstring)."""
    from .. import jobs as core

    server = run.server
    migration = Migration.objects.select_related("source", "target").filter(operation=run.operation).first()
    if migration is None:
        raise core.Refused("the move has no migration record")
    try:
        if migration.phase != MigrationPhase.SHIPPING:
            raise core.Refused(f"the move is {migration.get_phase_display().lower()} already")
        if server.node_id != migration.source_id:
            raise core.Refused(f"the server is no longer on node {migration.source.name}")
        status = run.engine.status(run.name, with_addresses=False, with_usage=False)
        was_running = status.state == "running"
        if not server.begin(OperationKind.MIGRATE):
            raise core._refuse_state(run)
    except Exception:
        _end_migration(migration, MigrationPhase.SHIPPING)
        raise
    runner = run.operation.runner
    Migration.objects.filter(pk=migration.pk, phase=MigrationPhase.SHIPPING).update(
        runner=runner, was_running=was_running, old_addresses=server.ip_list())
    migration.was_running = was_running
    target = migration.target
    try:
        if was_running:
            if core.init_watch is not None:
                core.init_watch.discard(run.name)  # this stop is ours, not a crash of the guest
            run.engine.stop(run.name)
            run.note(f"Stopped {run.name} on node {migration.source.name}.")
        run.checkpoint("before-engine")
        spec = run.engine.spec(run.name)
        ship_template = target_lacks_template(server, target, spec.template_version)
        result = run.engine.migrate_send(run.name, migration_target(target, run.engine), ship_template=ship_template,
                                         progress=ShipProgress(run, migration))
        run.checkpoint("shipped")
        copied = (f"Copied {_megabytes(result.bytes_total)} to node {target.name} in {result.seconds:.1f} s"
                  + (f" with template {spec.template} version {spec.template_version}." if ship_template else "."))
        run.note(copied)
        with transaction.atomic():
            handed = Migration.objects.filter(pk=migration.pk, phase=MigrationPhase.SHIPPING, runner=runner).update(
                phase=MigrationPhase.SHIPPED, bytes_total=result.bytes_total, bytes_done=result.bytes_total)
            if not handed:
                raise core.Refused("the move was ended meanwhile")
            Operation.objects.filter(pk=run.operation.pk, status=OperationStatus.RUNNING).update(
                output="\n".join([*run.lines, f"Waiting for node {target.name} to take it over."]))
            transaction.on_commit(lambda: push(target, RECEIVE_FUNCTION, migration.pk,
                                               job_id=receive_job_id(migration.pk)))
    except Exception as exc:
        log.warning("move of %s to node %s failed on the source: %s", run.name, target.name, exc)
        source_failed(run, migration)
        raise
    run.handed_over = True


def _end_migration(migration: Migration, phase: str, runner: str | None = None) -> bool:
    """Compare-and-swap MIGRATION from PHASE (and RUNNER, if given) to failed."""
    rows = Migration.objects.filter(pk=migration.pk, phase=phase)
    if runner is not None:
        rows = rows.filter(runner=runner)
    return rows.update(phase=MigrationPhase.FAILED, finished=timezone.now()) == 1


def source_failed(run: Run, migration: Migration) -> None:
    """A failure on the source before the handover: the migration fails, the target is told to
    discard what arrived, the server settles from this node's kernel (stopped, as shipping
    left it), and a start is queued if it ran (after the failed move, in order)."""
    from .. import jobs as core

    if not _end_migration(migration, MigrationPhase.SHIPPING):
        return
    push(migration.target, CLEANUP_FUNCTION, migration.pk, migration.target_id,
         job_id=cleanup_job_id(migration.pk, migration.target_id))
    state = core.settle(run.server, run.engine, STAYS)
    if migration.was_running and state == State.STOPPED:
        start_again(run.server)


def start_again(server: VirtualServer) -> None:
    """Queue a start of SERVER on its node (after a failed move of a server that ran)."""
    from ..actions import ActionRefused, request_operation

    server.refresh_from_db(fields=["state", "state_reason", "node"])
    try:
        request_operation(server, OperationKind.START, None)
    except ActionRefused as exc:
        log.warning("could not queue a start of %s after its failed move: %s", server, exc)


# --- 2. the target ----------------------------------------------------------------------------


def receive(migration_id: int) -> str:
    """The target's job (see the module's docstring). Returns what became of it."""
    close_old_connections()
    try:
        return _receive(migration_id)
    finally:
        close_old_connections()


def _receive(migration_id: int) -> str:
    from .. import jobs as core

    me = core.runner_id()
    with transaction.atomic():
        claimed = Migration.objects.filter(pk=migration_id, phase=MigrationPhase.SHIPPED).update(
            phase=MigrationPhase.RECEIVING, runner=me)
        if not claimed:
            log.info("migration %s is not waiting for its target; nothing to do", migration_id)
            return "skipped"
        migration = Migration.objects.select_related("source", "target", "operation", "server").get(pk=migration_id)
        Operation.objects.filter(pk=migration.operation_id, status=OperationStatus.RUNNING).update(runner=me)
    server, target, operation = migration.server, migration.target, migration.operation
    engine = core.get_engine()
    name = server.engine_name
    try:
        addresses = None
        if migration.readdress:
            new = allocate_on_target(server, target, len(migration.old_addresses) or 1)
            Migration.objects.filter(pk=migration.pk).update(new_addresses=[a.address for a in new])
            migration.new_addresses = [a.address for a in new]
            addresses = [a.with_prefix for a in new]
        checkpoint("receiving")
        spec = engine.migrate_receive(name, addresses=addresses)
        checkpoint("received")
        if migration.was_running:
            status = engine.start(name)
            if core.init_watch is not None and status.init_pid:
                core.init_watch.add(name, status.init_pid)
        checkpoint("started")
        seconds = (timezone.now() - (operation.started or operation.created)).total_seconds()
        lines = [f"Moved from node {migration.source.name} to node {target.name} in {seconds:.1f} s; "
                 f"{_megabytes(migration.bytes_total)} copied."]
        if migration.readdress:
            lines.append(f"New address: {', '.join(migration.new_addresses)} "
                         f"(was {', '.join(migration.old_addresses) or 'none'}).")
        else:
            lines.append(f"It keeps its address: {', '.join(a.split('/')[0] for a in spec.addresses)}.")
        lines.append("Started on the target." if migration.was_running else "Left stopped, as it was.")
        with transaction.atomic():
            VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server.pk).first()
            # The point of no return: from here on the server is the target's. The server
            # moves before the migration ends: the target's database role may write the
            # server only while it is an active move's target or holds it
            # (vservers.nodes.rowsecurity); the compare-and-swap below rolls it back.
            VirtualServer.objects.filter(pk=server.pk).update(node=target)
            server.node = target
            done = Migration.objects.filter(pk=migration.pk, phase=MigrationPhase.RECEIVING, runner=me).update(
                phase=MigrationPhase.DONE, finished=timezone.now(), bytes_done=migration.bytes_total)
            if not done:
                raise core.Refused("the move was ended meanwhile")
            if migration.readdress:
                IPAddress.objects.filter(server=server, address__in=migration.old_addresses).delete()
            server.complete(OperationKind.MIGRATE, back_to=State.RUNNING if migration.was_running else State.STOPPED)
            Operation.objects.filter(pk=operation.pk, status=OperationStatus.RUNNING).update(
                status=OperationStatus.SUCCEEDED, finished=timezone.now(), output="\n".join(lines), error="")
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the rows, never lost
        log.warning("move of %s to node %s failed on the target: %s", name, target.name, exc)
        target_failed(migration, engine, me, exc, traceback.format_exc())
        return "failed"
    log.info("moved %s from node %s to node %s", name, migration.source.name, target.name)
    push(migration.source, CLEANUP_FUNCTION, migration.pk, migration.source_id,
         job_id=cleanup_job_id(migration.pk, migration.source_id))
    resend_queued(server)
    return "succeeded"


def checkpoint(phase: str) -> None:
    """The target's named points ("migrate:receiving", "migrate:received", "migrate:started"):
    a test's worker stops itself there to be killed (vservers.jobs.TEST_FAULT)."""
    import os
    import signal

    from .. import jobs as core

    if core.TEST_FAULT and core.TEST_FAULT == f"{OperationKind.MIGRATE}:{phase}":
        log.warning("test fault %s: stopping this worker (pid %s)", core.TEST_FAULT, os.getpid())
        os.kill(os.getpid(), signal.SIGSTOP)


def allocate_on_target(server: VirtualServer, target: Node, count: int) -> list[IPAddress]:
    """COUNT new addresses for SERVER from TARGET's pools (those of the node, then those shared
    with it), each under its pool's lock (IPPool.allocate); the server holds its old and new
    rows until the move commits."""
    pools = list(IPPool.objects.filter(node=target).order_by("pk")) + list(
        IPPool.objects.filter(shared_with=target).exclude(node=target).order_by("pk"))
    if not pools:
        raise PoolExhausted(f"node {target.name} has no address pool")
    taken: list[IPAddress] = []
    for _ in range(count):
        for pool in pools:
            try:
                taken.append(pool.allocate(server))
                break
            except PoolExhausted:
                continue
        else:
            raise PoolExhausted(f"no free address left in the pools of node {target.name}")
    return taken


def target_failed(migration: Migration, engine: Engine, runner: str, exc: BaseException | None = None,
                  detail: str = "") -> bool:
    """Before the commit, on the target: remove this node's copy, release the new addresses,
    fail the migration and the operation (if RUNNER still holds them), put the server back
    to stopped on the source and queue a start there if it ran. True if this call ended it."""
    from .. import jobs as core

    server = VirtualServer.objects.select_related("node").get(pk=migration.server_id)
    remove_copy(server, migration.target, engine)
    message = f"{core._message(exc) if isinstance(exc, Exception) else 'the worker of the target stopped'}"
    public = f"{FAILED_SENTENCES[OperationKind.MIGRATE]}; {core.OPERATOR_TOLD}"
    # Everything is written while the migration is still receiving, and it ends last in the
    # same transaction: the target's database role may write the server and its operations
    # only while it is an active move's target (vservers.nodes.rowsecurity). The migration's
    # row lock makes the check of its phase and runner and the final update one step.
    with transaction.atomic():
        VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server.pk).first()
        if Migration.objects.select_for_update().filter(pk=migration.pk, phase=MigrationPhase.RECEIVING,
                                                        runner=runner).values_list("pk", flat=True).first() is None:
            return False
        server.addresses.exclude(address__in=migration.old_addresses).delete()
        server.move([State.MIGRATING], State.STOPPED, STAYS)
        Operation.objects.filter(pk=migration.operation_id, status=OperationStatus.RUNNING).update(
            status=OperationStatus.FAILED, finished=timezone.now(), error=public,
            detail=f"on node {migration.target.name}: {message}\n{detail}"[-20000:])
        if migration.was_running:
            start_again(server)
        resend_queued(server)
        _end_migration(migration, MigrationPhase.RECEIVING, runner)  # it holds: the row is locked
    return True


def remove_copy(server: VirtualServer, node: Node, engine: Engine) -> bool:
    """Remove what NODE (this worker's) has of SERVER: its installed copy (stopped first) and
    its incoming/ directory. Never while the database says the server lives on NODE. True if
    anything was there."""
    server.refresh_from_db(fields=["node"])
    if server.node_id == node.pk:
        log.error("not removing %s from node %s: the database says it lives there", server.engine_name, node.name)
        return False
    name = server.engine_name
    found = False
    if name in engine.names():
        found = True
        try:
            engine.stop(name)
        except NotFound:
            pass
        engine.delete(name)
    if name in engine.incoming():
        found = True
    engine.migrate_discard(name)
    if found:
        log.warning("removed node %s's copy of %s (%s)", node.name, server, name)
    return found


def resend_queued(server: VirtualServer) -> None:
    """The operations asked for behind the move: pushed to the queue of the node the server
    is on now (the source's worker ended its loop at the handover)."""
    from ..actions import enqueue

    for operation in Operation.objects.filter(server_id=server.pk, status=OperationStatus.QUEUED).select_related(
            "server__node").order_by("pk"):
        enqueue(operation)


# --- 3. either side: the copy the database no longer explains -----------------------------------


def cleanup(migration_id: int, node_id: int) -> str:
    """On node NODE_ID's queue: remove its copy of the migration's server when the migration
    says it is left over (the source's after a done move, the target's after a failed one),
    unless another move of the server to this node is under way."""
    close_old_connections()
    try:
        migration = Migration.objects.select_related("server", "source", "target").filter(pk=migration_id).first()
        node = Node.objects.filter(pk=node_id).first()
        if migration is None or node is None:
            return "missing"
        leftover = (node.pk == migration.source_id and migration.phase == MigrationPhase.DONE) or (
            node.pk == migration.target_id and migration.phase == MigrationPhase.FAILED)
        if not leftover:
            return "kept"
        if Migration.objects.filter(server_id=migration.server_id, target=node, phase__in=ACTIVE_PHASES).exists():
            return "kept: another move to this node is under way"
        from .. import jobs as core

        removed = remove_copy(migration.server, node, core.get_engine())
        return "removed" if removed else "nothing there"
    finally:
        close_old_connections()
