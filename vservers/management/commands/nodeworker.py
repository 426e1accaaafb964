"""The node's worker process (vservers.worker), as root:

    manage.py nodeworker [QUEUE...]    the queues of the nodes it serves (default: default)

SIGTERM or SIGINT stop it after the job at hand (a second one: at once).
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the node's jobs as root, watch its guests' inits and reconcile it periodically."

    def add_arguments(self, parser) -> None:
        parser.add_argument("queues", nargs="*", default=["default"], help="queue names (RQ_QUEUES)")

    def handle(self, *args, queues: list[str], **options) -> None:
        from vservers.worker import NodeWorker

        unknown = [name for name in queues if name not in settings.RQ_QUEUES]
        if unknown:
            raise CommandError(f"no such queue in RQ_QUEUES: {', '.join(unknown)}")
        NodeWorker(queues).run()
