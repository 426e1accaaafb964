"""Sending the outbox: each row is sent once, by one sender, and survives a crash.

`send_due()` is run by the node's periodic job (vservers.reconcile.reconcile_node, after the
node is reconciled) and by `manage.py send_mail_outbox`. Any number of them may run at once,
on any host:

 1. rows claimed by a sender that is gone (its process ended, or its claim is older than
    LEASE) go back to pending: a worker killed mid-way loses nothing;
 2. it reads the ids of due pending rows, oldest first, and claims each with a
    compare-and-swap (pending -> sending, attempts + 1, its own claim token): of two senders
    only the one whose UPDATE changed the row sends it;
 3. it sends the row with Django's mail and marks it sent, under the same claim;
 4. on an error the row waits BACKOFF * 2^(attempts - 1) (at most MAX_BACKOFF) and the error
    is kept for operators; after PANEL_MAIL_ATTEMPTS attempts it is failed, for good. The
    batch stops at the first error: an SMTP server that is down costs one timeout per run,
    not one per row.

Once-only holds up to the SMTP server: a sender killed after the server accepted a mail but
before its "sent" was committed leaves the row claimed, and the next sender sends it again.
No outbox can close that window (the SMTP server and our database share no transaction); it
is a few milliseconds wide.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .models import MailStatus, OutboxMail

log = logging.getLogger(__name__)

BATCH = 50
BACKOFF = timedelta(minutes=1)
MAX_BACKOFF = timedelta(hours=1)
# A claim older than this is dead whoever holds it (SMTP's timeout is EMAIL_TIMEOUT, 10 s).
LEASE = timedelta(minutes=10)


def max_attempts() -> int:
    return int(getattr(settings, "PANEL_MAIL_ATTEMPTS", 5))


def backoff(attempts: int) -> timedelta:
    return min(BACKOFF * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


def _claimer_gone(claim: str) -> bool:
    from vservers.jobs import runner_alive

    return runner_alive(claim.partition("/")[0]) is False


def release_dead_claims(now=None) -> int:
    """1. of the module's docstring. Returns how many rows went back to pending (or were
    failed: a row whose sender died on its last attempt)."""
    now = now or timezone.now()
    released = 0
    claimed = OutboxMail.objects.filter(status=MailStatus.SENDING).values_list("pk", "claimed_by", "claimed_at",
                                                                                "attempts")
    for pk, claim, claimed_at, attempts in claimed:
        if not (claimed_at is None or claimed_at < now - LEASE or _claimer_gone(claim)):
            continue
        error = "the sender stopped while sending (a worker restart?)"
        if attempts >= max_attempts():
            fields = {"status": MailStatus.FAILED, "last_error": error}
        else:
            fields = {"status": MailStatus.PENDING, "next_attempt": now, "last_error": error}
        # Only the claim we looked at: a row reclaimed and sent meanwhile is left alone.
        released += OutboxMail.objects.filter(pk=pk, status=MailStatus.SENDING, claimed_by=claim).update(**fields)
    if released:
        log.warning("mail outbox: %s rows of senders that stopped go out again", released)
    return released


def claim(pk: int, token: str, now) -> bool:
    """Pending -> sending for TOKEN; True only for the one sender whose UPDATE changed the
    row (SQLite's write lock, PostgreSQL's row lock and its re-check of the WHERE). Every
    node's worker sends the outbox: on PostgreSQL a row another sender is claiming right now
    is skipped (SKIP LOCKED) rather than waited for, since that sender takes it."""
    pending = OutboxMail.objects.filter(pk=pk, status=MailStatus.PENDING, next_attempt__lte=now)
    with transaction.atomic():
        if pending.select_for_update(skip_locked=True).values_list("pk", flat=True).first() is None:
            return False
        return pending.update(
            status=MailStatus.SENDING, claimed_by=token, claimed_at=now, attempts=F("attempts") + 1
        ) == 1


def send_due(limit: int = BATCH) -> dict[str, int]:
    """Send up to LIMIT due rows (see the module's docstring); the counts of what happened."""
    from vservers.jobs import runner_id

    counts = {"sent": 0, "retry": 0, "failed": 0, "released": release_dead_claims()}
    now = timezone.now()
    due = list(
        OutboxMail.objects.filter(status=MailStatus.PENDING, next_attempt__lte=now)
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    if not due:
        return counts
    token = f"{runner_id()}/{uuid.uuid4().hex[:12]}"
    connection = get_connection(fail_silently=False)
    try:
        for pk in due:
            now = timezone.now()
            if not claim(pk, token, now):
                continue  # another sender has it
            mail = OutboxMail.objects.get(pk=pk)
            mine = OutboxMail.objects.filter(pk=pk, status=MailStatus.SENDING, claimed_by=token)
            try:
                message = EmailMessage(mail.subject, mail.body, settings.DEFAULT_FROM_EMAIL, [mail.to],
                                       connection=connection)
                message.send()
            except Exception as exc:  # noqa: BLE001 - SMTP's and Django's errors alike are kept on the row
                error = f"{type(exc).__name__}: {exc}"[:500]
                if mail.attempts >= max_attempts():
                    mine.update(status=MailStatus.FAILED, last_error=error)
                    counts["failed"] += 1
                    log.error("mail %s to %s given up after %s attempts: %s", pk, mail.to, mail.attempts, error)
                else:
                    mine.update(status=MailStatus.PENDING, next_attempt=now + backoff(mail.attempts),
                                last_error=error)
                    counts["retry"] += 1
                    log.warning("mail %s to %s failed (attempt %s), tried again later: %s",
                                pk, mail.to, mail.attempts, error)
                break
            mine.update(status=MailStatus.SENT, sent_at=timezone.now(), last_error="")
            counts["sent"] += 1
    finally:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - closing a broken SMTP connection
            log.debug("closing the mail connection failed", exc_info=True)
    return counts


def send_all() -> dict[str, int]:
    """send_due until nothing due is left or a batch stops at an error (the command)."""
    total = {"sent": 0, "retry": 0, "failed": 0, "released": 0}
    while True:
        counts = send_due()
        for key, value in counts.items():
            total[key] += value
        if counts["retry"] or counts["failed"] or counts["sent"] < BATCH:
            return total

