"""Two-factor sign-in in a real browser (Debian's chromium, Playwright) under the panel's
Content-Security-Policy: a tenant sets up an authenticator from the page (the QR code is an
image made on the server; the secret is typed from the page as an app would take it), then
signs in with the password and a code. Nothing of the pages may be blocked by the CSP.

No engine, no worker: database rows only (offline_world) behind a live server.
"""

from __future__ import annotations

import base64
import time

import pytest
from django_otp.oath import TOTP

from accounts import two_factor
from accounts.models import AuditEntry

pytestmark = pytest.mark.slow
PASSWORD = "a-long-test-password"


def app_code(secret_text: str, steps_ahead: int = 0) -> str:
    """What an authenticator app shows for the secret as typed from the page."""
    maker = TOTP(base64.b32decode(secret_text.replace(" ", "")))
    maker.time = time.time() + 30 * steps_ahead
    return f"{maker.token():06d}"


def test_a_tenant_sets_up_two_factor_and_signs_in_with_a_code(offline_world, live_server, browser):
    alice = offline_world.alice
    alice.set_password(PASSWORD)
    alice.save()
    violations: list[str] = []
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(20_000)

    def sign_in_with_password():
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", PASSWORD)
        page.click("main form button[type=submit]")
        page.wait_for_load_state()

    # 1. the password alone signs her in (no authenticator yet); she sets one up
    sign_in_with_password()
    assert "/accounts/login/" not in page.url
    page.click("text=Two-factor")
    page.wait_for_url("**/accounts/two-factor/")
    page.click("text=Set up two-factor sign-in")
    page.wait_for_selector("#totp-qr")
    # The QR code is an image the browser could decode and draw (a data: URI the CSP allows).
    assert page.evaluate("document.getElementById('totp-qr').naturalWidth") > 0
    secret = page.inner_text("#totp-secret")
    page.fill("#id_code", app_code(secret))
    page.fill("#id_password", PASSWORD)
    page.click("text=Turn on")
    page.wait_for_selector("#recovery-codes")
    assert page.locator("#recovery-codes li").count() == 10
    assert two_factor.is_enabled(alice)

    # 2. signed out, the password leads to the code page; the app's next code signs her in
    page.click("text=Log out")
    page.wait_for_load_state()
    sign_in_with_password()
    assert page.url.endswith("/accounts/login/code/")
    page.fill("#id_code", app_code(secret, steps_ahead=1))  # the one just used is spent
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login" not in page.url
    assert page.locator(".user-name").inner_text() == "alice"
    page.goto(f"{live_server.url}/servers/")
    assert "/servers/" in page.url

    actions = set(AuditEntry.objects.filter(actor=alice).values_list("action", flat=True))
    assert {"2fa.start", "2fa.confirm", "auth.login"} <= actions
    assert violations == []
    context.close()
