"""Django's login and password change views with the throttled forms (accounts.forms).

A throttled sign-in answers 429 Too Many Requests with Retry-After, and the login page with
the reason, so a script sees the limit and a person reads it.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.core.exceptions import NON_FIELD_ERRORS

from .forms import LoginForm, ThrottledPasswordChangeForm


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

    def form_invalid(self, form):
        return _mark_throttled(form, super().form_invalid(form))


class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}

    def form_invalid(self, form):
        return _mark_throttled(form, super().form_invalid(form))
