"""Making and revoking API tokens (the token page, api.pages), audited like every change."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEntry
from vservers import access

from . import tokens
from .models import ApiToken

# Live (unrevoked, unexpired) tokens one user may have at once.
MAX_LIVE_TOKENS = 20


class TokenRefused(Exception):
    """The token cannot be made; the message is for the user."""


def live_tokens(user):
    return ApiToken.objects.filter(user=user, revoked__isnull=True, expires__gt=timezone.now())


def create(user, *, name: str, scope: str, days: int, request=None) -> tuple[ApiToken, str]:
    """A new token of USER, bound to USER's tenant (none for an operator), valid for DAYS;
    returns it and its text, which is shown this once and stored nowhere."""
    with transaction.atomic():
        if live_tokens(user).count() >= MAX_LIVE_TOKENS:
            raise TokenRefused(f"you have {MAX_LIVE_TOKENS} tokens already; revoke one first")
        member = access.membership(user)
        new = tokens.make()
        token = ApiToken.objects.create(
            user=user, tenant=member.tenant if member else None, name=name, scope=scope, prefix=new.prefix,
            digest=new.digest, expires=timezone.now() + timedelta(days=days),
        )
        AuditEntry.record(request, "api.token_create", token, tenant=token.tenant, actor=user, name=name,
                          scope=scope, expires=token.expires.isoformat())
    return token, new.text


def revoke(token: ApiToken, request=None) -> bool:
    """Revoke TOKEN (compare-and-swap: a second revocation changes nothing); True if this call
    revoked it."""
    changed = ApiToken.objects.filter(pk=token.pk, revoked__isnull=True).update(revoked=timezone.now())
    if changed:
        token.refresh_from_db()
        AuditEntry.record(request, "api.token_revoke", token, tenant=token.tenant, name=token.name)
    return changed == 1
