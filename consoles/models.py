from __future__ import annotations

import hashlib
import uuid

from django.conf import settings
from django.db import models


def ticket_hash(ticket: str) -> str:
    """What the database keeps of a ticket: a stolen database opens no console."""
    return hashlib.sha256(ticket.encode()).hexdigest()


class ConsoleSession(models.Model):
    """One browser terminal into a server: the ticket that opens it (once), and the record of
    who had a shell in which server as whom, from when to when."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="console_sessions")
    # The guest account the shell runs as ("root", or an account of the server).
    account = models.CharField(max_length=32, default="root")
    ticket_hash = models.CharField(max_length=64, unique=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    issued = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()
    # Set by the broker when it redeems the ticket; a ticket with a start is spent.
    started = models.DateTimeField(null=True, blank=True)
    ended = models.DateTimeField(null=True, blank=True)
    # A plain sentence for the user ("The server stopped.", "Idle for 15 minutes.").
    end_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-issued"]
        indexes = [models.Index(fields=["server", "-issued"])]

    def __str__(self) -> str:
        return f"console of {self.server} as {self.account} by {self.user}"
