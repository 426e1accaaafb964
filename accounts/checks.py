"""`manage.py check --deploy`: what the login throttle needs to tell clients apart."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_trusted_proxies(app_configs, **kwargs) -> list[Warning]:
    # HTTPS through a proxy (panel.production) without PANEL_TRUSTED_PROXIES: every request's
    # REMOTE_ADDR is the proxy's, so all clients share one count of failed sign-ins and the
    # audit log shows the proxy's address for everyone.
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None) and not settings.PANEL_TRUSTED_PROXIES:
        return [
            Warning(
                "PANEL_TRUSTED_PROXIES is empty, but the panel is served through a TLS proxy: every "
                "client has the proxy's address, for the login throttle and the audit log.",
                hint="Set PANEL_TRUSTED_PROXIES=127.0.0.1 (the proxy's address) once the proxy sets "
                "X-Forwarded-For itself, e.g. nginx: proxy_set_header X-Forwarded-For $remote_addr;",
                id="accounts.W001",
            )
        ]
    return []
