"""Response headers for every page: a Content-Security-Policy, and no caching of what a
signed-in user sees.

CSP: scripts only from our own origin (htmx and static/js/panel.js; no inline script, no
on*= or hx-on attributes, no eval), nothing may frame the panel, forms post only to it.
Inline styles stay allowed (the templates use style attributes, and htmx adds its indicator
style); a style cannot run code. A view that sets its own policy keeps it.

Cache-Control: a response to a signed-in user that says nothing about caching gets
"private, no-store", so a shared computer's browser cache or a proxy never keeps a tenant's
page. A view that sets Cache-Control itself keeps it. Live pages (vservers/views/live.py) keep
"private, no-store" too: their script keeps the ETag itself and asks with If-None-Match.
"""

from __future__ import annotations

from django.utils.cache import patch_cache_control

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class SecurityHeadersMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and "Cache-Control" not in response.headers:
            patch_cache_control(response, private=True, no_store=True)
        return response
