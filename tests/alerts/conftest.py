"""The panel's fixtures (tests/panel/conftest.py) for the alerts' tests."""

from __future__ import annotations

from tests.panel.conftest import (  # noqa: F401 - fixtures, used by name
    drain,
    engine,
    http,
    make_server,
    offline_plans,
    offline_pool,
    offline_world,
    provision,
    queued,
    rq_redis,
    world,
)
