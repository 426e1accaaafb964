"""The sender: every row is sent once, by one sender, whatever runs at the same time, fails or
dies; SMTP errors are retried with a growing wait and then given up, the error kept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, connections

from notifications import sender
from notifications.models import Event, MailStatus, OutboxMail
from tests.locks import needs_row_locks, row_locked_elsewhere
from tests.notifications import backends
from tests.panel import faults

pytestmark = pytest.mark.django_db(transaction=True)

file_database = faults.file_database
REPO = faults.REPO


def outbox_rows(count: int, event: str = Event.READY) -> list[int]:
    rows = [
        OutboxMail(event=event, to=f"user{i}@example.test", subject=f"Mail {i}", body=f"Body {i}.")
        for i in range(count)
    ]
    return [row.pk for row in OutboxMail.objects.bulk_create(rows)] or list(
        OutboxMail.objects.order_by("pk").values_list("pk", flat=True)
    )


def statuses() -> Counter:
    return Counter(OutboxMail.objects.values_list("status", flat=True))


def test_it_sends_each_row_once_and_marks_it_sent(mailoutbox, settings):
    settings.DEFAULT_FROM_EMAIL = "panel@example.test"
    outbox_rows(3)

    assert sender.send_due() == {"sent": 3, "retry": 0, "failed": 0, "released": 0}
    assert sender.send_due() == {"sent": 0, "retry": 0, "failed": 0, "released": 0}

    assert [(m.to, m.subject, m.body, m.from_email) for m in mailoutbox] == [
        ([f"user{i}@example.test"], f"Mail {i}", f"Body {i}.", "panel@example.test") for i in range(3)
    ]
    assert statuses() == {MailStatus.SENT: 3}
    assert all(m.sent_at and m.attempts == 1 and m.last_error == "" for m in OutboxMail.objects.all())


def test_the_command_sends_what_is_due(mailoutbox, capsys):
    outbox_rows(sender.BATCH + 2)  # more than a batch

    call_command("send_mail_outbox")

    assert len(mailoutbox) == sender.BATCH + 2
    out = capsys.readouterr().out
    assert out == f"sent {sender.BATCH + 2}, to be tried again 0, given up 0; 0 waiting, 0 given up in all\n"


def closed_port() -> socket.socket:
    """A loopback TCP port that is bound but not listening: an SMTP server that is down
    (connections are refused). The caller closes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_failing_smtp_server_is_retried_with_growing_waits_then_given_up(mailoutbox, settings):
    settings.PANEL_MAIL_ATTEMPTS = 4
    down = closed_port()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", down.getsockname()[1], 5
    first, second = outbox_rows(2)
    waits = []
    try:
        # The batch stops at the first error: one refused connection per run, not one per row.
        assert sender.send_due() == {"sent": 0, "retry": 1, "failed": 0, "released": 0}
        assert OutboxMail.objects.get(pk=second).attempts == 0
        OutboxMail.objects.filter(pk=second).delete()
        for attempt in range(1, 5):
            mail = OutboxMail.objects.get(pk=first)
            assert mail.attempts == attempt
            assert "ConnectionRefusedError" in mail.last_error
            if attempt == 4:
                assert mail.status == MailStatus.FAILED
                break
            assert mail.status == MailStatus.PENDING
            waits.append(mail.next_attempt - mail.claimed_at)
            # Not due before its wait is over...
            assert sender.send_due() == {"sent": 0, "retry": 0, "failed": 0, "released": 0}
            # ... and due once it is (as if the clock had moved on).
            OutboxMail.objects.filter(pk=first).update(next_attempt=mail.claimed_at)
            expected = {"sent": 0, "retry": 1 if attempt < 3 else 0, "failed": 0 if attempt < 3 else 1, "released": 0}
            assert sender.send_due() == expected
    finally:
        down.close()
    assert waits == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]

    # The mail server is back: new mail goes out, the given-up mail stays given up (an
    # operator sends it again from the admin).
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    outbox_rows(1)
    assert sender.send_due()["sent"] == 1
    assert [m.to for m in mailoutbox] == [["user0@example.test"]]
    assert OutboxMail.objects.get(pk=first).status == MailStatus.FAILED


def send_from_threads(count: int) -> list[dict]:
    """Run sender.send_due in COUNT threads that have all read the same due rows before any
    claims one (a barrier at the first claim of each), so they race for every row."""
    barrier = threading.Barrier(count)
    real_claim = sender.claim
    waited = threading.local()

    def claim(pk, token, now):
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait(timeout=30)
        return real_claim(pk, token, now)

    results: list[dict] = []

    def run() -> None:
        try:
            results.append(sender.send_due())
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results.append({"error": repr(exc)})
        finally:
            connections.close_all()

    sender.claim = claim
    try:
        threads = [threading.Thread(target=run) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sender.claim = real_claim
    assert not any(thread.is_alive() for thread in threads), "a sender hung"
    connection.close()  # see the threads' commits with a fresh connection
    return results


@pytest.mark.both_databases
def test_two_concurrent_senders_never_send_a_row_twice(file_database, mailoutbox, monkeypatch):
    outbox_rows(20)

    results = send_from_threads(2)

    assert all("error" not in r for r in results), results
    assert sum(r["sent"] for r in results) == 20
    assert sorted(m.to[0] for m in mailoutbox) == sorted(f"user{i}@example.test" for i in range(20))
    assert statuses() == {MailStatus.SENT: 20}

    # Positive control: without the compare-and-swap claim, the same race sends rows twice.
    mailoutbox.clear()
    OutboxMail.objects.update(status=MailStatus.PENDING, attempts=0)
    monkeypatch.setattr(sender, "claim", lambda pk, token, now: True)
    results = send_from_threads(2)
    assert all("error" not in r for r in results), results
    assert len(mailoutbox) > 20


@pytest.mark.both_databases
def test_a_sender_killed_midway_loses_nothing_and_the_next_sends_the_rest_once(file_database, mailoutbox, tmp_path):
    outbox_rows(5)
    log = tmp_path / "delivered"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.notifications.die_settings",
        "PANEL_TEST_DATABASE": file_database,
        "PYTHONPATH": str(REPO),
        backends.LOG: str(log),
        backends.KILL_AT: "3",
    }
    proc = subprocess.run([sys.executable, "manage.py", "send_mail_outbox"], cwd=REPO, env=env,
                          capture_output=True, timeout=120)

    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    delivered = log.read_text().splitlines()
    assert delivered == ["user0@example.test", "user1@example.test"]
    connection.close()
    assert statuses() == {MailStatus.SENT: 2, MailStatus.SENDING: 1, MailStatus.PENDING: 2}

    # The next sender (after a worker restart) finds the claim of a dead process.
    counts = sender.send_due()

    assert counts == {"sent": 3, "retry": 0, "failed": 0, "released": 1}
    again = [m.to[0] for m in mailoutbox]
    assert again == ["user2@example.test", "user3@example.test", "user4@example.test"]
    assert sorted(delivered + again) == sorted(f"user{i}@example.test" for i in range(5))  # each once
    assert statuses() == {MailStatus.SENT: 5}
    assert OutboxMail.objects.get(to="user2@example.test").attempts == 2


@pytest.mark.both_databases
def test_a_row_another_sender_is_claiming_is_skipped_not_waited_for(mailoutbox):
    needs_row_locks()
    held, free = outbox_rows(2)
    with row_locked_elsewhere(OutboxMail, held):
        # Waiting for the lock would end with both rows sent by this sender.
        assert sender.send_due()["sent"] == 1
        assert OutboxMail.objects.get(pk=held).status == MailStatus.PENDING
    assert OutboxMail.objects.get(pk=free).status == MailStatus.SENT
    assert sender.send_due()["sent"] == 1  # the skipped one, once the other let go of it
    assert statuses() == {MailStatus.SENT: 2}
    assert sorted(to for m in mailoutbox for to in m.to) == ["user0@example.test", "user1@example.test"]
