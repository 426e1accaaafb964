"""The user's API token page, mounted at /accounts/tokens/."""

from __future__ import annotations

from django.urls import path

from . import pages

urlpatterns = [
    path("", pages.tokens, name="api_tokens"),
    path("<int:pk>/revoke/", pages.revoke, name="api_token_revoke"),
]
