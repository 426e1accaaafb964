"""The fault tests' settings (the test's database), with the mail backend that kills its
process midway (tests/notifications/backends.py)."""

from tests.panel.fault_settings import *  # noqa: F403

EMAIL_BACKEND = "tests.notifications.backends.DieMidwayBackend"
