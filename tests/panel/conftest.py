"""The panel's fixtures live in tests/panel_world.py, registered for every test directory by
tests/conftest.py. Nothing to add here; the re-export below keeps working the conftests that
still import them by name from this module."""

from tests.panel_world import *  # noqa: F403
