"""Settings of the worker processes that the fault tests start (tests/panel/faults.py): the
panel's own settings, on the test session's database instead of the panel's. REDIS_URL and
the VSERVER_* variables come from the environment, as in production."""

import faulthandler
import os
import signal

from panel.settings import *  # noqa: F403
from panel.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["PANEL_TEST_DATABASE"]
# One worker process per `manage.py nodeworker` unless a test asks for a group (--processes):
# the fault tests stop, kill and count that one process.
PANEL_NODE_WORKERS = 1

# SIGUSR2 writes every thread's stack to the worker's log: WorkerProcess.stop asks for it when a
# warm stop does not end in time, so the log shows what the worker was waiting for.
faulthandler.register(signal.SIGUSR2, all_threads=True)
