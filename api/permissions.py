"""The API's permissions. Which objects a user sees and whether a member may act are decided
by vservers.access, the same functions the pages call; these add what only the API has: a
token's scope."""

from __future__ import annotations

from django.conf import settings
from rest_framework import permissions

from vservers import access

from .models import ApiToken


def token_may_write(token: ApiToken) -> bool:
    """A read-write token writes, unless it is an operator's and operators' tokens are
    limited to reading (PANEL_API_OPERATOR_WRITE)."""
    if not token.can_write:
        return False
    return not token.user.is_staff or settings.PANEL_API_OPERATOR_WRITE


class SignedIn(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated)


class TokenScope(permissions.BasePermission):
    """Writes (any method but GET, HEAD, OPTIONS) need a token that may write; a session
    writes as its user may."""

    message = "this token is read-only"

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        token = request.auth
        return not isinstance(token, ApiToken) or token_may_write(token)


class Operator(permissions.BasePermission):
    """The operator's endpoints (/api/v1/operator/...): staff only, as the operator's pages
    (vservers.access.is_operator)."""

    message = "operators only"

    def has_permission(self, request, view) -> bool:
        return access.is_operator(request.user)
