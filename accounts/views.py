"""Django's login and password views with the throttled forms (accounts.forms).

A throttled sign-in answers 429 Too Many Requests with Retry-After, and the login page with
the reason, so a script sees the limit and a person reads it. A successful sign-in marks the
browser as a known device of the user (accounts.devices). The admin's login page is this
view too (accounts.admin).

A user with two-factor sign-in (accounts.two_factor) is not signed in by the password: the
anonymous session remembers who gave it (PENDING_KEY, for PENDING_AGE seconds) and the code
page (LoginCodeView) signs in. Nothing of a sign-in happens before the code: no session of
the user, no known-device cookie, no clearing of the throttle's count for the name (a thief
of the password could otherwise wipe the count of his wrong codes by typing it again).
"""

from __future__ import annotations

import itertools
import time

import django_otp
from django.contrib import auth
from django.contrib.auth import views as auth_views
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.generic import FormView

from . import throttle, two_factor
from .devices import remember
from .forms import LoginCodeForm, LoginForm, ThrottledPasswordChangeForm
from .models import AuditEntry

PENDING_KEY = "_panel_2fa_pending"
PENDING_AGE = 10 * 60


def mark_throttled(form, response):
    """429 with Retry-After when the form was refused by the login throttle (any field's
    "throttled" error: the form's own, the old password's, a password's)."""
    for error in itertools.chain.from_iterable(form.errors.as_data().values()):
        if error.code == "throttled":
            response.status_code = 429
            response["Retry-After"] = str(getattr(error, "retry_after", 60))
            return response
    return response


class LoginView(auth_views.LoginView):
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def form_valid(self, form):
        user = form.get_user()
        if two_factor.is_enabled(user):
            self.request.session[PENDING_KEY] = {
                "user": user.pk,
                "backend": user.backend,
                "next": self.get_success_url(),
                "at": int(time.time()),
            }
            return HttpResponseRedirect(reverse("login_code"))
        response = super().form_valid(form)
        remember(self.request, response, user)
        return response

    def form_invalid(self, form):
        return mark_throttled(form, super().form_invalid(form))


def pending_user(request):
    """The user who gave the password in this (anonymous) session and owes a code, or None
    (none, too long ago, or the account is gone or disabled since)."""
    pending = request.session.get(PENDING_KEY)
    if not isinstance(pending, dict) or time.time() - pending.get("at", 0) > PENDING_AGE:
        return None
    user = auth.get_user_model()._default_manager.filter(pk=pending.get("user"), is_active=True).first()
    if user is None or not two_factor.is_enabled(user):
        return None
    user.backend = pending["backend"]
    return user


@method_decorator([sensitive_post_parameters(), csrf_protect, never_cache], name="dispatch")
class LoginCodeView(FormView):
    """The second step: a code from the authenticator or a recovery code signs the pending
    user in, with a verified session (django_otp.login). Wrong codes are throttled and counted
    as failed sign-ins are (accounts.forms.LoginCodeForm); 429 with Retry-After while a sign-in
    must wait."""

    form_class = LoginCodeForm
    template_name = "registration/login_code.html"

    def dispatch(self, request, *args, **kwargs):
        self.user = pending_user(request)
        if self.user is None:
            request.session.pop(PENDING_KEY, None)
            return render(request, self.template_name, {"expired": True})
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request, "user": self.user}

    def form_valid(self, form):
        target = self.request.session.pop(PENDING_KEY)["next"]
        auth.login(self.request, self.user, backend=self.user.backend)
        django_otp.login(self.request, form.device)
        response = HttpResponseRedirect(target)
        remember(self.request, response, self.user)
        return response

    def form_invalid(self, form):
        return mark_throttled(form, super().form_invalid(form))


class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form):
        # The new password voids every known device (accounts.devices) but this browser's.
        response = super().form_valid(form)
        remember(self.request, response, form.user)
        return response

    def form_invalid(self, form):
        return mark_throttled(form, super().form_invalid(form))


class PasswordResetView(auth_views.PasswordResetView):
    """Throttled per e-mail address and per client address (accounts.throttle.reset_allowed),
    silently: a refused request ends on the same "sent" page as any other, so the page never
    tells whether an account exists or whether a mail went out. The refusal is audited."""

    def form_valid(self, form):
        email = form.cleaned_data["email"]
        if throttle.reset_allowed(self.request, email):
            return super().form_valid(form)
        AuditEntry.record(self.request, "auth.password_reset_throttled", None, email=str(email)[:254])
        return HttpResponseRedirect(self.get_success_url())
