"""Send the mail outbox now: `manage.py send_mail_outbox`.

The node's worker sends it at every reconcile run anyway (notifications.sender); this is for a
host without a running worker, a cron job, or an operator who fixed the mail server and does
not want to wait. Safe to run beside the worker: each row is claimed by one sender only."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from notifications.models import MailStatus, OutboxMail
from notifications.sender import send_all


class Command(BaseCommand):
    help = "Send the mail that is due in the outbox (new requests, approvals, servers ready or stopped)."

    def handle(self, *args, **options) -> None:
        counts = send_all()
        left = OutboxMail.objects.filter(status=MailStatus.PENDING).count()
        failed = OutboxMail.objects.filter(status=MailStatus.FAILED).count()
        self.stdout.write(
            f"sent {counts['sent']}, to be tried again {counts['retry']}, given up {counts['failed']}; "
            f"{left} waiting, {failed} given up in all"
        )
