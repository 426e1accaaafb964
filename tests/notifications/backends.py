"""Mail backends of the sender tests, for a `manage.py send_mail_outbox` process that the test
kills in the middle of a batch (tests/notifications/test_sender.py)."""

from __future__ import annotations

import os
import signal

from django.core.mail.backends.base import BaseEmailBackend

# Where the process writes the recipient of each mail it delivered, one a line.
LOG = "NOTIFY_TEST_MAIL_LOG"
# The number of the mail (1, 2, ...) at which the process kills itself, before delivering it.
KILL_AT = "NOTIFY_TEST_KILL_AT"


class DieMidwayBackend(BaseEmailBackend):
    """Delivers to a file; SIGKILLs its own process at mail KILL_AT, as the OOM killer or a
    power cut would: the row it claimed stays "sending", claimed by a process that is gone."""

    def send_messages(self, messages) -> int:
        path = os.environ[LOG]
        for message in messages:
            with open(path, "a+") as log:
                log.seek(0)
                delivered = len(log.read().splitlines())
                if delivered + 1 == int(os.environ[KILL_AT]):
                    os.kill(os.getpid(), signal.SIGKILL)
                log.write(f"{message.to[0]}\n")
                log.flush()
                os.fsync(log.fileno())
        return len(messages)
