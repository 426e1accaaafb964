"""A quick password hasher for the tests' own process (tests/conftest.py)."""

from __future__ import annotations

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class QuickPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 with a thousand iterations instead of a million: each hash took 0.39 s
    on the CI's machine, and the tests make and check hundreds. The encoded hash carries its
    iterations and algorithm ("pbkdf2_sha256$1000$..."), so every other process of a test (a
    web server, a worker), on the panel's own settings, checks it with the stock hasher, and
    upgrades it at a sign-in there as it would any older hash."""

    iterations = 1000
