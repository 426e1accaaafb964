"""Ending every session of a user at once.

Django ends the other sessions of a user whose password changes by itself: a session keeps a
hash of the password it was opened with (HASH_SESSION_KEY). Signing out, though, ends only the
session it is done in, and a disabled account's sessions merely stop working while it is
disabled: enabled again, they would be back. So each user has an epoch (SessionEpoch), each
session remembers the epoch it was opened in, and a session whose epoch is not the user's
any more is flushed on its next request (accounts.middleware). The epoch moves on when the
user signs out anywhere and when the account is disabled or enabled again.

The user's epoch comes with the user's own row (PanelBackend.get_user), so the check costs no
query of its own.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.db import IntegrityError, transaction
from django.db.models import F, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce

from .models import SessionEpoch

EPOCH_SESSION_KEY = "_panel_session_epoch"


def current_epoch(user) -> int:
    annotated = getattr(user, "panel_session_epoch", None)
    if annotated is not None:
        return annotated
    return SessionEpoch.objects.filter(user_id=user.pk).values_list("epoch", flat=True).first() or 0


def stamp(session, user) -> None:
    """At sign-in: the session belongs to the user's current epoch."""
    session[EPOCH_SESSION_KEY] = current_epoch(user)


def is_current(session, user) -> bool:
    return session.get(EPOCH_SESSION_KEY, 0) == current_epoch(user)


def end_all_sessions(user) -> None:
    """Every session the user has open stops counting (the current one included)."""
    with transaction.atomic():
        if SessionEpoch.objects.filter(user_id=user.pk).update(epoch=F("epoch") + 1):
            return
        try:
            with transaction.atomic():
                SessionEpoch.objects.create(user_id=user.pk, epoch=1)
        except IntegrityError:  # created by a concurrent call just now
            SessionEpoch.objects.filter(user_id=user.pk).update(epoch=F("epoch") + 1)


class PanelBackend(ModelBackend):
    """Django's ModelBackend (inactive users cannot sign in and their sessions do not count),
    whose get_user brings the user's session epoch along in the same query."""

    def get_user(self, user_id):
        user_model = get_user_model()
        epoch = SessionEpoch.objects.filter(user_id=OuterRef("pk")).values("epoch")[:1]
        try:
            user = user_model._default_manager.annotate(
                panel_session_epoch=Coalesce(Subquery(epoch), Value(0))
            ).get(pk=user_id)
        except user_model.DoesNotExist:
            return None
        return user if self.user_can_authenticate(user) else None
