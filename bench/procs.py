"""Processes the benchmarks start on the host: reading /proc, stopping them by PID (never by
name), collecting what is left of them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from vservers.engine import procfs


def proc_start(pid: int) -> int | None:
    """PID's start time (clock ticks after boot): with the PID, it names one process."""
    stat = procfs.read_stat(pid)
    return stat.start_time if stat else None


def processes():
    """(pid, state, parent pid, session id) of every process, from /proc/PID/stat."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = procfs.read_stat(int(entry.name))
        if stat is not None:
            yield stat.pid, stat.state, stat.ppid, stat.session


def session_members(sid: int) -> list[int]:
    """PIDs of live processes in session SID (the one start_new_session made for a child)."""
    return [pid for pid, state, _parent, session in processes() if state != "Z" and session == sid]


def reap_zombies() -> int:
    """Collect exited children that no Popen waits for (guests' inits are handed to us, a
    child subreaper, once the worker is gone). Not waitpid(-1): that would
    take the exit status of the children Popen waits for."""
    me, reaped = os.getpid(), 0
    for pid, state, parent, _session in processes():
        if state == "Z" and parent == me:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
            except ChildProcessError:
                pass
    return reaped


def stop_process(proc: subprocess.Popen | None, name: str, grace: float) -> str | None:
    """SIGTERM PROC (by its PID), SIGKILL after GRACE seconds; a note if it had to be killed."""
    if proc is None or proc.poll() is not None:
        return None
    note = None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        note = f"{name} (pid {proc.pid}) did not stop in {grace:.0f} s; killed"
        proc.kill()
        proc.wait(timeout=10)
    return note


def stop_group(pid: int, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process PID (a session leader we started) and, once it is gone or after
    5 s, SIGKILL what is left of its process group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and proc_start(pid) is None:
            break
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    """The last LINES lines of a log file ("" if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
