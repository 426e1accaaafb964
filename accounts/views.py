"""Django's login and password views with the throttled forms (accounts.forms).

A throttled sign-in answers 429 Too Many Requests with Retry-After, and the login page with
the reason, so a script sees the limit and a person reads it. A successful sign-in marks the
browser as a known device of the user (accounts.devices). The admin's login page is this
view too (accounts.admin).
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.core.exceptions import NON_FIELD_ERRORS
from django.http import HttpResponseRedirect

from . import throttle
from .devices import remember
from .forms import LoginForm, ThrottledPasswordChangeForm
from .models import AuditEntry


def _mark_throttled(form, response):
    errors = form.errors.as_data()
    for error in errors.get(NON_FIELD_ERRORS, []) + errors.get("old_password", []):
        if error.code == "throttled":
            response.status_code = 429
            response["Retry-After"] = str(getattr(error, "retry_after", 60))
            return response
    return response


class LoginView(auth_views.LoginView):
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        remember(self.request, response, form.get_user())
        return response

    def form_invalid(self, form):
        return _mark_throttled(form, super().form_invalid(form))


class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}

    def form_invalid(self, form):
        return _mark_throttled(form, super().form_invalid(form))


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
