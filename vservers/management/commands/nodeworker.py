"""The node's worker process (vservers.worker), as root:

    manage.py nodeworker [--processes N] [QUEUE...]
        QUEUE: the queues of the nodes it serves (default: default); N worker processes on
        them (default: PANEL_NODE_WORKERS, twice the CPUs, at most 8). With N above one this
        process starts and watches N processes of `nodeworker --processes 1`
        (vservers.worker.WorkerGroup); with one, it is the worker itself.

A node made in the panel has the queue "node-<its name>" (vservers.nodes.queues); a name that
is no node's queue is refused, as are names RQ_QUEUES does not know.

SIGTERM or SIGINT stop it after the job at hand (a second one: at once).
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError

from vservers.nodes.queues import is_node_queue
from vservers.queues import serve_only


class Command(BaseCommand):
    help = "Run the node's jobs as root, watch its guests' inits and reconcile it periodically."
    # The models' checks, not the URLs' and the templates': those import every view (the REST
    # framework and drf-spectacular among them), which a worker never runs: 0.5 s of each of
    # its starts. `manage.py check` (make test's, an operator's) runs them all.
    requires_system_checks = [Tags.models]

    def add_arguments(self, parser) -> None:
        parser.add_argument("queues", nargs="*", default=["default"], help="queue names (RQ_QUEUES)")
        parser.add_argument("--processes", type=int, default=None,
                            help="worker processes to run (default: PANEL_NODE_WORKERS)")

    def handle(self, *args, queues: list[str], processes: int | None = None, **options) -> None:
        from vservers.models import Node
        from vservers.worker import NodeWorker, WorkerGroup

        processes = settings.PANEL_NODE_WORKERS if processes is None else processes
        if not 1 <= processes <= 64:
            raise CommandError(f"--processes must be between 1 and 64, not {processes}")

        unknown = [name for name in queues if name not in settings.RQ_QUEUES]
        if unknown:
            raise CommandError(f"no such queue in RQ_QUEUES: {', '.join(unknown)}")
        # "default" stands without a node (the one-host install's worker may start before
        # its node "local" is made); a node's queue must be one.
        wanted = [name for name in queues if is_node_queue(name)]
        known = set(Node.objects.filter(queue_name__in=wanted).values_list("queue_name", flat=True))
        missing = [name for name in wanted if name not in known]
        if missing:
            raise CommandError(f"no node has the queue {', '.join(missing)}: join the node first "
                               "(manage.py node join URL TOKEN)")
        if processes > 1:
            WorkerGroup(queues, processes).run()
            return
        if wanted and len(wanted) == len(queues):
            # A node's worker: its Redis user may write its own queues only (vservers.queues).
            serve_only(queues)
        NodeWorker(queues).run()
