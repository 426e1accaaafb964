"""Named points inside long engine operations where a test process stops itself, to be killed.

VSERVER_TEST_FAULT="snapshot:frozen" makes the process that reaches `checkpoint("snapshot",
"frozen")` stop itself with SIGSTOP; the test waits for the stop (the process's state is T in
/proc) and kills it with SIGKILL, so the middle of an operation is hit exactly, without timing.
The variable is read at each checkpoint, one dictionary lookup: a child of the resident server
(resident.py) takes its user's environment after the engine was imported. The panel's worker
has its own points between engine calls (vservers.jobs.Run).
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "VSERVER_TEST_FAULT"


def checkpoint(operation: str, phase: str) -> None:
    """Stop this process here if the test asked for OPERATION:PHASE."""
    wanted = os.environ.get(ENV)
    if wanted and wanted == f"{operation}:{phase}":
        print(f"vserver: test fault {wanted}: stopping (pid {os.getpid()})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
