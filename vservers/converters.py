"""Path converters for URLs that carry text read from inside a guest."""

from __future__ import annotations

from urllib.parse import quote, unquote


class GuestNameConverter:
    """An account's or a service's name as one path segment, whatever it holds.

    The worker stores only names the engine accepts (vservers.models.guest.store_listing),
    and those pass through unchanged. A page must still not fail on a name that reached the
    database some other way (Django's "str" refuses a "/", so reversing raised NoReverseMatch),
    so every other character travels percent-escaped."""

    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        return unquote(value, errors="surrogateescape")

    def to_url(self, value: str) -> str:
        # reverse() escapes this once more ("%" becomes "%25") and the web server undoes that
        # before the resolver sees the path, so to_python gets this text back. "@" is kept as
        # it is: service names have it (getty@tty1).
        text = quote(value, safe="@", errors="surrogateescape")
        # A browser would drop a "." segment and climb a ".." one instead of sending them.
        return text if text.strip(".") else text.replace(".", "%2E")
