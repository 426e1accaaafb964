"""The node's console broker (consoles.broker), as root:

    manage.py consolebroker [--socket PATH] [--group GROUP] [--idle SECONDS] [--queue NAME ...]

--socket defaults to settings.PANEL_CONSOLE_SOCKET, --idle to PANEL_CONSOLE_IDLE_SECONDS; --group
is the web process's group (run-panel: vpanel), which may connect; --queue names the queues of
the nodes it serves, as `manage.py nodeworker` takes them (default: default).
SIGTERM or SIGINT end every console (EXIT "The console service stopped.") and stop it.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Serve the node's browser consoles as root: redeem tickets and attach terminals in servers."
    # The models' checks only, as nodeworker's: the URLs' would import every view for a broker
    # that serves none.
    requires_system_checks = [Tags.models]

    def add_arguments(self, parser) -> None:
        parser.add_argument("--socket", type=Path, default=None, help="the Unix socket (PANEL_CONSOLE_SOCKET)")
        parser.add_argument("--group", default=None, help="the group that may connect (the web process's)")
        parser.add_argument("--idle", type=int, default=None,
                            help="seconds without a keystroke before a console ends (PANEL_CONSOLE_IDLE_SECONDS)")
        parser.add_argument("--queue", action="append", dest="queues", default=None,
                            help="a queue of the nodes served (repeatable; default: default)")

    def handle(self, *args, socket: Path | None, group: str | None, idle: int | None, queues: list[str] | None,
               **options) -> None:
        from consoles import broker

        if os.geteuid() != 0:
            raise CommandError("the console broker must run as root (it enters the servers)")
        path = Path(socket or settings.PANEL_CONSOLE_SOCKET).absolute()
        idle = settings.PANEL_CONSOLE_IDLE_SECONDS if idle is None else idle
        if idle < 1:
            raise CommandError(f"--idle must be at least 1 second, not {idle}")
        if group is not None:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise CommandError(f"no such group: {group}") from None
        queues = queues or ["default"]
        unknown = [name for name in queues if name not in settings.RQ_QUEUES]
        if unknown:
            raise CommandError(f"no such queue in RQ_QUEUES: {', '.join(unknown)}")
        try:
            broker.run(path, group, idle, queues)
        except OSError as exc:
            raise CommandError(f"console broker: {exc}") from None
