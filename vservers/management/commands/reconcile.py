"""Compare the database with the kernel now, or have the node's worker do it soon.

    manage.py reconcile [--node NAME]             run it here, now (as root, with the
                                                   node's VSERVER_* environment)
    manage.py reconcile --schedule [--node NAME]  queue the node's reconcile job (unless it
                                                   is queued or running already)

The node's worker queues it by itself every PANEL_RECONCILE_SECONDS (vservers.worker).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from vservers.models import Node
from vservers.queues import get_queue


class Command(BaseCommand):
    help = "Make the database agree with the kernel (vservers.reconcile), now or through the worker."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--node", help="only this node (default: every active node)")
        parser.add_argument("--schedule", action="store_true", help="queue the job instead of running it here")

    def handle(self, *args, node: str | None = None, schedule: bool = False, **options) -> None:
        from vservers import reconcile

        nodes = Node.objects.filter(is_active=True)
        if node:
            nodes = nodes.filter(name=node)
            if not nodes.exists():
                raise CommandError(f"no active node named {node!r}")
        for each in nodes:
            if schedule:
                said = reconcile.queue_run(get_queue(each.queue_name), each.pk)
                self.stdout.write(f"{each.name}: {reconcile.job_id(each.pk)} {said}")
            else:
                summary = reconcile.Reconciler(each).run()
                self.stdout.write(f"{each.name}: {summary}")
