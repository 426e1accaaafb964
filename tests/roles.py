"""PostgreSQL roles made by a test (a node's own role, vservers.nodes.credentials)."""

from __future__ import annotations

import pytest
from django.db import connection


def require_role_creation(why: str) -> None:
    """Skip unless the test database is PostgreSQL and its role may create roles (WHY: what
    is PostgreSQL's, for the skip's message)."""
    if connection.vendor != "postgresql":
        pytest.skip(f"{why} (make test runs this in its PostgreSQL pass)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("the test database's role may not create roles (scripts/with-postgres gives CREATEROLE)")
