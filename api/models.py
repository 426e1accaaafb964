"""API tokens: made by a user in the panel (api.pages), shown once, stored as a lookup prefix
and the SHA-256 of the secret (api.tokens).

A token acts as its user, with at most its scope: read-only tokens never write. It is bound to
the tenant its user belonged to when it was made: if the user moves to another tenant (or
becomes an operator), the token stops working rather than follow them. It ends at its expiry,
or when revoked; `last_used` is its newest request. The rate limit's counter (api.throttling)
lives on the row too, so every gunicorn worker counts in the same place.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    READ = "read"
    WRITE = "write"
    SCOPES = [(READ, "Read-only"), (WRITE, "Read and write")]

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    # The user's tenant when it was made; None for an operator's token.
    tenant = models.ForeignKey("accounts.Tenant", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="+")
    name = models.CharField(max_length=60)
    scope = models.CharField(max_length=5, choices=SCOPES, default=READ)
    # The public part of the token, to find its row; the secret is known only by its digest.
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)
    # The rate limit's fixed window: when the current one began and how many requests it saw.
    window_start = models.DateTimeField(null=True, blank=True)
    window_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created", "-pk"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def uuid(self) -> str:
        """What the audit log names it by (AuditEntry.record takes an object's uuid or pk):
        its public prefix, never the secret."""
        return self.prefix

    @property
    def can_write(self) -> bool:
        return self.scope == self.WRITE

    @property
    def is_active(self) -> bool:
        return self.revoked is None and self.expires > timezone.now()

    @property
    def status(self) -> str:
        if self.revoked is not None:
            return "revoked"
        return "active" if self.expires > timezone.now() else "expired"
