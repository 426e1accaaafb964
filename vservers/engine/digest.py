"""SHA-256 for the names the engine derives from other names (an installation's id, a server's
host veth, a bridge's MAC, the firewall's per-port values): CPython's own implementation.

hashlib loads OpenSSL's libcrypto and sets it up before it hashes anything: 11 M instructions
(~3 ms) of every `vserver start` and `vserver stop` (valgrind --tool=callgrind, 2026-12-07), for
digests of a few dozen bytes. The built-in module gives the same bytes, so every name stays as
it was; where it is missing (it is _sha2 from Python 3.12 on), hashlib's is used.
"""

from __future__ import annotations

try:
    from _sha256 import sha256
except ImportError:  # pragma: no cover - another interpreter
    from hashlib import sha256

__all__ = ["sha256"]
