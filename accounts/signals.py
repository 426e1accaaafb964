"""Sign-ins, sign-outs and failed sign-ins go to the audit log, from Django's own auth
signals, so every way of logging in (the login page, the admin, force_login in tests) is
recorded the same way."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .models import AuditEntry, Membership


def _record_for(request, action: str, user) -> None:
    """An entry about USER, who is also its actor (and whose tenant it concerns)."""
    membership = Membership.objects.filter(user=user).select_related("tenant").first()
    entry = AuditEntry.record(request, action, user, tenant=membership.tenant if membership else None)
    if entry.actor_id != user.pk:
        # record() takes the actor from request.user, which a login without a full request
        # (Client.force_login, authenticate() with a bare HttpRequest) does not carry.
        AuditEntry.objects.filter(pk=entry.pk).update(actor=user)


@receiver(user_logged_in, dispatch_uid="accounts.audit_login")
def audit_login(sender, request, user, **kwargs) -> None:
    _record_for(request, "auth.login", user)


@receiver(user_logged_out, dispatch_uid="accounts.audit_logout")
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is None:  # logging out without being logged in
        return
    _record_for(request, "auth.logout", user)


@receiver(user_login_failed, dispatch_uid="accounts.audit_login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django has already masked the password in CREDENTIALS; only the name is kept. Which
    # user it names stays out of the entry (no actor, no tenant): the name may not exist.
    username = str(credentials.get("username", ""))[:150]
    AuditEntry.record(request, "auth.login_failed", None, username=username)
