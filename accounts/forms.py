"""Sign-in and password forms that ask the login throttle (accounts.throttle) first.

The throttle is asked before the password is checked: while a sign-in must wait, the answer
is the same whether the password was right or wrong, so guessing on is pointless, and the
message says how long to wait. The panel's login page and the admin's use the same form and
view (accounts.views.LoginView), so they count, answer and set the known-device cookie alike.
"""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm

from . import throttle, two_factor
from .models import AuditEntry

THROTTLED = (
    "Too many failed sign-ins %(whom)s. Please wait %(wait)s and try again. "
    "Your account is not locked: a browser you have signed in with before is not held up by "
    "other people's failed attempts."
)
WHOM = {
    "device": "in this browser",
    "user": "for this user name",
    "address": "from your network",
}


def _wait(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class Throttled(forms.ValidationError):
    """The form's "throttled" error; RETRY_AFTER (seconds) becomes the Retry-After header."""

    def __init__(self, retry_after: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


def refuse_if_throttled(request, username: str, action: str) -> None:
    """Raise the form's "throttled" error (and audit it) while a sign-in as USERNAME from the
    request's browser and address must wait (accounts.throttle)."""
    refusal = throttle.check(request, username)
    if refusal is None:
        return
    AuditEntry.record(
        request, action, None, username=str(username)[:150], reason=refusal.reason, retry_after=refusal.retry_after
    )
    raise Throttled(refusal.retry_after, THROTTLED, code="throttled",
                    params={"whom": WHOM[refusal.reason], "wait": _wait(refusal.retry_after)})


class ThrottledLoginMixin:
    def clean(self):
        username = self.cleaned_data.get("username")
        if username is not None and self.cleaned_data.get("password"):
            refuse_if_throttled(self.request, username, "auth.login_throttled")
        return super().clean()


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    """The panel's login page (accounts.views.LoginView)."""


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin's login page (accounts.admin.login): the same throttle and counts."""


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """Changing the password asks for the old one: a stolen session must not be a way to guess
    it without limit. Wrong old passwords count as failed sign-ins of the user."""

    def __init__(self, user, *args, request=None, **kwargs):
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self):
        username = self.user.get_username()
        refuse_if_throttled(self.request, username, "auth.password_change_throttled")
        try:
            return super().clean_old_password()
        except forms.ValidationError:
            AuditEntry.record(self.request, "auth.password_change_failed", self.user, username=username)
            throttle.record_failure(self.request, username)
            raise


# -- two-factor sign-in (accounts.two_factor) ----------------------------------------------------

WRONG_CODE = "That code is not right. Codes change every 30 seconds; a recovery code works once."


def _code_field(help_text: str = "") -> forms.CharField:
    return forms.CharField(
        label="Code",
        max_length=32,
        help_text=help_text,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )


class LoginCodeForm(forms.Form):
    """The second step of signing in (accounts.views.LoginCodeView) for USER, who gave the
    password: a code from the authenticator app or a recovery code. Asked of the login
    throttle first, as the password is; a wrong code counts as a failed sign-in."""

    code = _code_field("The 6 digits your authenticator app shows, or one of your recovery codes.")

    def __init__(self, *args, request, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.request, self.user, self.device = request, user, None
        self.fields["code"].widget.attrs["autofocus"] = True

    def clean(self):
        code = self.cleaned_data.get("code")
        if code is None:
            return self.cleaned_data
        username = self.user.get_username()
        refuse_if_throttled(self.request, username, "auth.otp_throttled")
        self.device = two_factor.verify(self.request, self.user, code)
        if self.device is None:
            AuditEntry.record(self.request, "auth.otp_failed", self.user, username=username, actor=self.user)
            throttle.record_failure(self.request, username)
            raise forms.ValidationError(WRONG_CODE, code="wrong_code")
        return self.cleaned_data


class ConfirmCodeForm(forms.Form):
    """The first code from the app, which turns the authenticator on, and the password: a
    session left open must not be enough to put the owner's account behind somebody else's
    phone. A wrong password is throttled and counted as a failed sign-in."""

    code = _code_field("The 6 digits your authenticator app shows for this panel now.")
    password = forms.CharField(
        label="Your password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args, request, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.request, self.user = request, user

    def clean_password(self):
        password = self.cleaned_data["password"]
        username = self.user.get_username()
        refuse_if_throttled(self.request, username, "auth.2fa_check_throttled")
        if not self.user.check_password(password):
            AuditEntry.record(self.request, "auth.2fa_check_failed", self.user, username=username)
            throttle.record_failure(self.request, username)
            raise forms.ValidationError("That is not your password.", code="wrong")
        return password


class ConfirmIdentityForm(forms.Form):
    """Turning two-factor sign-in off or making new recovery codes: the password or a current
    code, so a session left open is not enough. Throttled and counted as sign-ins are."""

    password = forms.CharField(
        label="Your password", required=False, strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    code = forms.CharField(
        label="or a code", required=False, max_length=32,
        help_text="From your authenticator app, or a recovery code (which is then spent).",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autocapitalize": "none"}),
    )

    def __init__(self, *args, request, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.request, self.user = request, user

    def clean(self):
        password, code = self.cleaned_data.get("password"), (self.cleaned_data.get("code") or "").strip()
        if not password and not code:
            raise forms.ValidationError("Give your password or a code.", code="required")
        username = self.user.get_username()
        refuse_if_throttled(self.request, username, "auth.2fa_check_throttled")
        if (code and two_factor.verify(self.request, self.user, code) is not None) or (
            password and self.user.check_password(password)
        ):
            return self.cleaned_data
        AuditEntry.record(self.request, "auth.2fa_check_failed", self.user, username=username)
        throttle.record_failure(self.request, username)
        raise forms.ValidationError("That password or code is not right.", code="wrong")
