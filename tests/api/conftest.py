"""Fixtures of the API's tests: tokens made the way the token page makes them
(api.actions.create). The panel's (offline_world, world, drain, ...) come from
tests/panel_world.py, for every directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_token():
    """make_token(user, scope="write", days=30) -> the token's text (api.actions.create)."""
    from api import actions

    def make(user, scope: str = "write", days: int = 30, name: str = "test") -> str:
        return actions.create(user, name=name, scope=scope, days=days)[1]

    return make


@pytest.fixture
def api(make_token):
    """api(user, scope="write") -> a test client whose requests carry a token of USER."""
    from rest_framework.test import APIClient

    def client(user, scope: str = "write") -> APIClient:
        made = APIClient()
        made.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(user, scope)}")
        return made

    return client
