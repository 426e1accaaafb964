"""The user's API tokens in the panel: make one (its text is shown once, on the answer to the
POST, never stored or cached), list them with their last use, revoke them."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from . import actions
from .forms import TokenForm
from .models import ApiToken


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None, user=request.user)
    made = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            token, text = actions.create(request.user, name=data["name"], scope=data["scope"], days=data["days"],
                                         request=request)
        except actions.TokenRefused as exc:
            form.add_error(None, str(exc))
        else:
            made = {"token": token, "text": text}
            form = TokenForm(user=request.user)
    listed = ApiToken.objects.filter(user_id=request.user.pk or 0).select_related("tenant")
    return render(request, "api/tokens.html", {"form": form, "tokens": listed, "made": made})


@login_required
@require_POST
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Only the user's own tokens (404 for anyone else's)."""
    token = get_object_or_404(ApiToken, pk=pk, user_id=request.user.pk)
    if actions.revoke(token, request=request):
        messages.success(request, f"Token {token.name} ({token.prefix}) is revoked.")
    return redirect("api_tokens")
