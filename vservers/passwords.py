"""A guest password as the guest stores it: a SHA-512 crypt hash ("$6$salt$..."), made in the
panel when a tenant gives a root password with a request, so that only the hash waits in the
database until provisioning hands it to the guest's `chpasswd -e` (engine.accounts).

Why the standard library's crypt: it calls the system's libxcrypt, the same well-kept
library the guests' shadow and PAM use to check the hash, with a salt from the system's
random source (random.SystemRandom). It is deprecated since Python 3.11 and gone in 3.13; the
panel runs on Debian's 3.11 (see README), and passlib's sha512_crypt is the replacement then.
"""

from __future__ import annotations

import hmac
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def sha512_crypt(password: str) -> str:
    """PASSWORD (already checked by engine.validate.password) as a SHA-512 crypt hash."""
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    if not hashed or not hashed.startswith("$6$"):
        raise RuntimeError("the system's crypt() cannot make SHA-512 hashes")
    return hashed


def matches(password: str, hashed: str) -> bool:
    """Whether PASSWORD is the one HASHED was made from (as the guest's login checks it)."""
    return hmac.compare_digest(crypt.crypt(password, hashed) or "", hashed)
