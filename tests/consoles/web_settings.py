"""Settings of the web process that the console's tests start (tests/consoles/web.py): the fault
tests' (the panel's own, on the test's database), with WhiteNoise serving static files from
the apps' and the project's static directories, as the test server does, instead of from a
collectstatic run (make run does that one)."""

from tests.panel.fault_settings import *  # noqa: F403

WHITENOISE_USE_FINDERS = True
