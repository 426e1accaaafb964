"""Receivers that keep the audit log, the login throttle and the session epochs up to date.

Sign-ins, sign-outs and failed sign-ins come from Django's own auth signals, so every way of
logging in (the login page, the admin, force_login in tests) is recorded the same way; a
refused (throttled) sign-in is recorded by the form that refuses it (accounts.forms).

Operations: the views record who asked for an operation (vservers.actions); an operation that
is created outside of any request (the reconciler's autostart, management commands, the
worker) is recorded here, so the audit log has an entry for every operation there is.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from . import sessions, throttle
from .middleware import current_request
from .models import AuditEntry, Membership


def _record_for(request, action: str, user) -> None:
    """An entry about USER, who is also its actor (and whose tenant it concerns)."""
    membership = Membership.objects.filter(user=user).select_related("tenant").first()
    AuditEntry.record(request, action, user, tenant=membership.tenant if membership else None, actor=user)


@receiver(user_logged_in, dispatch_uid="accounts.audit_login")
def audit_login(sender, request, user, **kwargs) -> None:
    _record_for(request, "auth.login", user)
    throttle.clear_user(user.get_username())
    if request is not None and hasattr(request, "session"):
        sessions.stamp(request.session, user)


@receiver(user_logged_out, dispatch_uid="accounts.audit_logout")
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is None:  # logging out without being logged in
        return
    _record_for(request, "auth.logout", user)
    # Signing out signs out everywhere: the user's other browsers and devices too.
    sessions.end_all_sessions(user)


@receiver(user_login_failed, dispatch_uid="accounts.audit_login_failed")
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django has already masked the password in CREDENTIALS; only the name is kept. Which
    # user it names stays out of the entry (no actor, no tenant): the name may not exist.
    username = str(credentials.get("username", ""))[:150]
    AuditEntry.record(request, "auth.login_failed", None, username=username)
    throttle.record_failure(request, username)


@receiver(pre_save, sender=get_user_model(), dispatch_uid="accounts.end_sessions_on_disable")
def end_sessions_when_disabled(sender, instance, update_fields=None, raw=False, **kwargs) -> None:
    """A disabled account's sessions end, and stay ended when it is enabled again. (Saves
    that bypass signals, QuerySet.update(), still lock the user out: the backend refuses
    inactive users' sessions; only their revival after re-enabling is not prevented then.)"""
    if raw or instance.pk is None or (update_fields is not None and "is_active" not in update_fields):
        return
    was_active = sender._default_manager.filter(pk=instance.pk).values_list("is_active", flat=True).first()
    if was_active is not None and was_active != instance.is_active:
        sessions.end_all_sessions(instance)


@receiver(post_save, sender="vservers.Operation", dispatch_uid="accounts.audit_system_operation")
def audit_system_operation(sender, instance, created, raw=False, **kwargs) -> None:
    if not created or raw or current_request() is not None:
        return  # requests record their operations themselves (vservers.actions)
    AuditEntry.record(
        None,
        f"server.{instance.kind}",
        instance.server,
        actor=instance.requested_by,
        operation=str(instance.uuid),
        system=True,
    )
