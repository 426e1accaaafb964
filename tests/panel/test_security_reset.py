"""The password reset throttle (accounts.throttle.reset_allowed): per e-mail address and per
client address, silently: the answer is the same redirect whether a mail went out, whether it
was throttled, and whether an account has the address. Mails are counted in Django's locmem
outbox (pytest-django's mailoutbox)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEntry, PasswordResetRequest

RESET = "/accounts/reset/"
PER_EMAIL, PER_ADDRESS = 3, 5


@pytest.fixture
def alice(django_user_model, settings):
    settings.PANEL_RESET_THROTTLE = {"per_email": PER_EMAIL, "per_address": PER_ADDRESS, "window": 3600}
    settings.PANEL_TRUSTED_PROXIES = []
    return django_user_model.objects.create_user("alice", "alice@example.com", "correct horse battery")


def ask(email: str, address: str = "203.0.113.9"):
    return Client(REMOTE_ADDR=address).post(RESET, {"email": email})


def test_eight_requests_for_one_account_send_three_mails(alice, mailoutbox):
    answers = {(r.status_code, r["Location"]) for r in (ask("Alice@example.com", f"192.0.2.{i}") for i in range(8))}
    assert answers == {(302, "/accounts/reset/sent/")}
    assert len(mailoutbox) == PER_EMAIL
    assert AuditEntry.objects.filter(action="auth.password_reset_throttled").count() == 8 - PER_EMAIL


def test_one_address_asking_for_many_accounts_is_throttled(alice, django_user_model, mailoutbox):
    for i in range(8):
        django_user_model.objects.create_user(f"user{i}", f"user{i}@example.com", "x")
        assert ask(f"user{i}@example.com").status_code == 302
    assert len(mailoutbox) == PER_ADDRESS
    assert ask("alice@example.com", "198.51.100.1").status_code == 302
    assert len(mailoutbox) == PER_ADDRESS + 1


def test_the_answer_does_not_tell_whether_an_account_exists(alice, mailoutbox):
    unknown = ask("nobody@example.com", "198.51.100.2")
    for _ in range(PER_EMAIL):
        ask("alice@example.com", "198.51.100.3")
    throttled = ask("alice@example.com", "198.51.100.4")
    assert len(mailoutbox) == PER_EMAIL
    assert (throttled.status_code, throttled["Location"]) == (unknown.status_code, unknown["Location"])


def test_the_throttle_lifts_after_the_window(alice, mailoutbox):
    for _ in range(PER_EMAIL + 2):
        ask("alice@example.com")
    assert len(mailoutbox) == PER_EMAIL
    PasswordResetRequest.objects.update(created=timezone.now() - timedelta(seconds=3601))
    ask("alice@example.com")
    assert len(mailoutbox) == PER_EMAIL + 1
    assert PasswordResetRequest.objects.count() == 1
