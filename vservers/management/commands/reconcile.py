"""Compare the database with the kernel now, or (re)start the periodic reconcile job.

    manage.py reconcile [--node NAME]             run it here, now (as root, with the
                                                   node's VSERVER_* environment)
    manage.py reconcile --schedule [--node NAME]  have the node's worker run it soon; the job
                                                   then schedules itself every
                                                   PANEL_RECONCILE_SECONDS

The worker schedules it by itself at start-up; --schedule is for after a Redis flush.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from vservers.models import Node


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
                job = reconcile.ensure_scheduled(each)
                said = f"queued as {job.id}" if job else "already queued or scheduled"
                self.stdout.write(f"{each.name}: {said}")
            else:
                summary = reconcile.Reconciler(each).run()
                self.stdout.write(f"{each.name}: {summary}")
