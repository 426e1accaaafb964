"""Mail to operators and tenants' admins about their servers, through an outbox.

`notify(event, server, ...)` writes one OutboxMail row per recipient inside the caller's
transaction, so the mail exists exactly when the event does (a rolled-back approval sends
nothing). The sender (notifications.sender) claims rows one by one with a compare-and-swap
and sends them with Django's mail; the worker's periodic job runs it, and so does
`manage.py send_mail_outbox`."""

from __future__ import annotations


def notify(event: str, server, **context) -> int:
    """Write the mail of EVENT about SERVER for everyone who should have it; see
    notifications.outbox.notify. Imported lazily: this package is imported before the app
    registry is ready."""
    from .outbox import notify as write

    return write(event, server, **context)
