"""Making and checking API tokens.

A token reads `vps_<prefix>_<secret>`: 12 hex digits of prefix that find its row, and 32 random
bytes (URL-safe base64) of secret. Only the SHA-256 of the secret is stored; a request's secret
is hashed and compared in constant time (hmac.compare_digest). A fast hash is enough here, unlike
for passwords: the secret is 256 random bits, so there is nothing to guess from a leaked
digest, and checking stays cheap on every request. The "vps_" start lets secret scanners and
people recognise a token that ended up in a log or a repository.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX_START = "vps_"
_FORMAT = re.compile(r"vps_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class NewToken:
    prefix: str
    digest: str
    text: str  # the whole token, to show once


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def make() -> NewToken:
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return NewToken(prefix=prefix, digest=digest(secret), text=f"{PREFIX_START}{prefix}_{secret}")


def parse(text: str) -> tuple[str, str] | None:
    """(prefix, secret) of a token in its format, or None."""
    match = _FORMAT.fullmatch(text)
    return (match[1], match[2]) if match else None


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
