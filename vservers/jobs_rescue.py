"""The worker's handlers for reinstall, rescue mode and root's password (issue 15, 3.-5.),
registered in vservers.jobs.HANDLERS.

vservers.jobs imports this module at its end, and this module imports from it only inside
the handlers, so either may be imported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from .engine import Conflict, InvalidInput, NotFound, templates
from .models import Operation, OperationKind, OperationStatus, Template, VirtualServer

if TYPE_CHECKING:
    from .jobs import Run

FAILED_SENTENCES: dict[str, str] = {
    OperationKind.REINSTALL: "The server could not be reinstalled",
    OperationKind.RESCUE_ENTER: "The server could not be started in rescue",
    OperationKind.RESCUE_LEAVE: "The server could not leave rescue",
    OperationKind.ROOT_PASSWORD: "Root's password could not be set",
}
# What a reinstall asked with "take a snapshot first" says when that snapshot did not succeed.
NO_SNAPSHOT = "the snapshot to be taken first did not succeed, so nothing was reinstalled; reinstall again"


def reinstall(run: Run) -> None:
    """Rebuild the server from the template named in params (its own template if none): the
    engine wipes its files and keeps its addresses and limits; then the row's template."""
    from .jobs import Refused, _begin, _refresh_best_effort

    server = run.server
    _check_snapshot_first(run)
    name = run.optional("template") or server.template.name
    template = Template.objects.filter(name=name).first()
    if template is None:
        raise Refused(f"there is no template {name!r}")
    try:  # before anything moves: a template this node has not built changes nothing
        templates.get(run.engine.config, template.name)
    except NotFound as exc:
        raise Refused(f"the system {template} is not available on this server's node") from exc
    _begin(run)
    run.checkpoint("before-engine")
    status = run.engine.reinstall(run.name, template.name)
    run.watch_init(status)
    run.checkpoint("after-engine")
    with transaction.atomic():
        VirtualServer.objects.filter(pk=server.pk).update(template=template, updated=timezone.now())
        server.template = template
        server.complete(run.operation.kind)
    run.note(f"Reinstalled {run.name} from {status.template}: its files are new; its addresses and plan are kept "
             f"(init pid {status.init_pid}).")
    _refresh_best_effort(run)


def _check_snapshot_first(run: Run) -> None:
    """With params "after": the uuid of the snapshot operation asked for with this reinstall,
    which ran before it (same server, queued first): it must have succeeded."""
    from .jobs import Refused

    after = run.optional("after")
    if after is None:
        return
    status = Operation.objects.filter(uuid=after, server_id=run.server.pk).values_list("status", flat=True).first()
    if status != OperationStatus.SUCCEEDED:
        raise Refused(NO_SNAPSHOT)


def rescue_enter(run: Run) -> None:
    from .jobs import _begin

    server = run.server
    _begin(run)
    run.checkpoint("before-engine")
    status = run.engine.rescue_start(run.name)
    run.watch_init(status)
    run.checkpoint("after-engine")
    with transaction.atomic():
        # Its own services do not run in rescue (the rescue system's do).
        server.services.update(state="stopped", pid=None, seconds=0, since=timezone.now())
        server.complete(run.operation.kind)
    run.note(f"{run.name} runs the rescue system (init pid {status.init_pid}); its own files are at /mnt.")


def rescue_leave(run: Run) -> None:
    from .jobs import _begin, _refresh_best_effort

    server = run.server
    _begin(run)
    run.checkpoint("before-engine")
    status = run.engine.rescue_leave(run.name)
    run.watch_init(status)
    run.checkpoint("after-engine")
    server.complete(run.operation.kind)
    run.note(f"{run.name} left rescue and runs its own system (init pid {status.init_pid}).")
    _refresh_best_effort(run)


def root_password(run: Run) -> None:
    """Root's password of the server's own system, in normal or rescue mode (the engine's
    set_root_password says how each is done)."""
    from .jobs import Refused, _begin

    _begin(run)
    password = run.param("password")
    try:
        run.engine.set_root_password(run.name, password)
    except (InvalidInput, Conflict) as exc:  # about the guest's own files or state: theirs to read
        raise Refused(str(exc).replace(repr(run.name), repr(run.server.name))) from exc
    run.note("Set a new password for root" + (" of the system at /mnt." if run.server.state == "rescue" else "."))


HANDLERS = {
    OperationKind.REINSTALL: reinstall,
    OperationKind.RESCUE_ENTER: rescue_enter,
    OperationKind.RESCUE_LEAVE: rescue_leave,
    OperationKind.ROOT_PASSWORD: root_password,
}
