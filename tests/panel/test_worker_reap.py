"""The worker's reaper (vservers.worker.reap_zombie_children): it collects its exited
children, leaves alone the ones it is told to keep (RQ's scheduler, whose exit status its
multiprocessing handle waits for) and those still running."""

from __future__ import annotations

import os
import signal
import time

import pytest

from vservers.worker import reap_zombie_children


def _child(exit_code: int | None) -> int:
    """A child that exits with EXIT_CODE at once, or (None) waits to be killed."""
    pid = os.fork()
    if pid == 0:
        if exit_code is None:
            signal.pause()
        os._exit(exit_code)
    return pid


def _zombie(pid: int) -> None:
    """Wait until PID has exited (without reaping it)."""
    deadline = time.monotonic() + 10
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return
        assert time.monotonic() < deadline, f"child {pid} did not exit"
        time.sleep(0.01)


def _still_mine(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


@pytest.mark.parametrize("kept_first", [False, True], ids=["kept-last", "kept-first-in-line"])
def test_it_reaps_exited_children_but_not_kept_or_running_ones(kept_first):
    running = _child(None)
    pids = [_child(3), _child(4), _child(5)]
    kept = pids[0] if kept_first else pids[-1]  # the kernel names the oldest exited child first
    try:
        for pid in pids:
            _zombie(pid)
        reaped = reap_zombie_children({kept})
        assert set(pids) - {kept} <= set(reaped)
        assert kept not in reaped and running not in reaped
        assert os.waitpid(kept, 0) == (kept, 5 << 8 if not kept_first else 3 << 8)  # its status is still there
        assert _still_mine(running)
        assert reap_zombie_children() == []  # nothing left that has exited
    finally:
        os.kill(running, signal.SIGKILL)
        os.waitpid(running, 0)
    for pid in pids:
        assert not _still_mine(pid)
