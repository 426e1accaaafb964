"""Who a request to the API is: a bearer token (api.tokens) or the browser's session.

`Authorization: Bearer vps_...` finds the token by its prefix, compares the secret's digest in
constant time, and refuses a revoked or expired token, a disabled user, and a token whose user
no longer belongs to the tenant it was made in (the token is bound to that tenant). The answer
to any of these is 401 with `WWW-Authenticate: Bearer`; its message says which, except for an
unknown or wrong token, which are the same answer.

The session (the panel's own cookie, with the session epoch check of accounts.middleware) is
for the docs page and a signed-in browser; DRF checks its CSRF token on every write.
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework import authentication, exceptions

from vservers import access

from . import tokens
from .models import ApiToken

INVALID = "invalid token"


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("give the token as: Authorization: Bearer <token>")
        try:
            parsed = tokens.parse(header[1].decode("ascii"))
        except UnicodeDecodeError:
            parsed = None
        if parsed is None:
            raise exceptions.AuthenticationFailed(INVALID)
        prefix, secret = parsed
        token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
        if token is None or not tokens.matches(secret, token.digest):
            raise exceptions.AuthenticationFailed(INVALID)
        if token.revoked is not None:
            raise exceptions.AuthenticationFailed("this token was revoked")
        if token.expires <= timezone.now():
            raise exceptions.AuthenticationFailed("this token has expired")
        user = token.user
        if not user.is_active:
            raise exceptions.AuthenticationFailed(INVALID)
        member = access.membership(user)
        if (member.tenant_id if member else None) != token.tenant_id:
            raise exceptions.AuthenticationFailed("this token was made for another tenant than its user's")
        return user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's: the panel's session, with a CSRF check on every unsafe method."""
