"""The user's own two-factor page (/accounts/two-factor/): set up an authenticator (QR code and
the secret as text), confirm it with a code, see the recovery codes once, make new ones, turn
it off. The logic and the audit entries are accounts.two_factor's.

Every change is a POST (a GET changes nothing, so setting up starts with a button); the
recovery codes are shown only on the answer to the POST that made them (signed-in pages are
"no-store", panel.middleware). Turning it on asks for the password with the first code
(accounts.forms.ConfirmCodeForm); making new codes and turning it off ask for the password or
a code (accounts.forms.ConfirmIdentityForm).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_POST

from . import two_factor
from .forms import ConfirmCodeForm, ConfirmIdentityForm
from .views import mark_throttled

TEMPLATE = "registration/two_factor.html"
CODES_TEMPLATE = "registration/two_factor_codes.html"


def _page(request: HttpRequest, *, confirm_form=None, identity_form=None, status: int = 200) -> HttpResponse:
    user = request.user
    enabled = two_factor.is_enabled(user)
    device = None if enabled else two_factor.draft(user)
    context = {
        "enabled": enabled,
        "required": two_factor.is_required(user),
        "device": device,
        "confirm_form": confirm_form or ConfirmCodeForm(request=request, user=user),
        "identity_form": identity_form or ConfirmIdentityForm(request=request, user=user),
        "codes_left": two_factor.recovery_codes_left(user) if enabled else 0,
    }
    if device is not None:
        context["qr"] = two_factor.qr_svg_data_uri(device)
        context["secret"] = two_factor.secret_text(device)
    return render(request, TEMPLATE, context, status=status)


@require_GET
@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return _page(request)


@require_POST
@login_required
def start(request: HttpRequest) -> HttpResponse:
    try:
        two_factor.start(request, request.user)
    except ValueError:
        messages.info(request, "Two-factor sign-in is already on. Turn it off first to use another app.")
    return redirect("two_factor")


@require_POST
@login_required
@sensitive_post_parameters()
def confirm(request: HttpRequest) -> HttpResponse:
    form = ConfirmCodeForm(request.POST, request=request, user=request.user)
    codes = two_factor.confirm(request, request.user, form.cleaned_data["code"]) if form.is_valid() else None
    if codes is None:
        if form.is_valid():
            form.add_error("code", "That code is not right. Check the time on your phone and try the next one.")
        return mark_throttled(form, _page(request, confirm_form=form, status=400))
    return render(request, CODES_TEMPLATE, {"codes": codes, "new": True})


@require_POST
@login_required
@sensitive_post_parameters()
def recovery_codes(request: HttpRequest) -> HttpResponse:
    form = ConfirmIdentityForm(request.POST, request=request, user=request.user)
    if not two_factor.is_enabled(request.user):
        return redirect("two_factor")
    if not form.is_valid():
        return mark_throttled(form, _page(request, identity_form=form, status=400))
    return render(request, CODES_TEMPLATE, {"codes": two_factor.regenerate(request, request.user), "new": False})


@require_POST
@login_required
@sensitive_post_parameters()
def disable(request: HttpRequest) -> HttpResponse:
    form = ConfirmIdentityForm(request.POST, request=request, user=request.user)
    if not two_factor.is_enabled(request.user):
        return redirect("two_factor")
    if not form.is_valid():
        return mark_throttled(form, _page(request, identity_form=form, status=400))
    two_factor.disable(request, request.user)
    messages.success(request, "Two-factor sign-in is off: your password alone signs you in.")
    return redirect("two_factor")
