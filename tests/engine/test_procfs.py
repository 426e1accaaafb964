"""The one parser of /proc/PID/stat and the boot id: literal lines first, then this machine's
own processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from vservers.engine import procfs

# A process may name itself anything up to 15 bytes, spaces and parentheses included.
STAT = (b"4242 (a) (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 "
        b"2482176 123 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")


def test_fields_are_counted_from_the_last_parenthesis() -> None:
    stat = procfs.parse_stat(STAT)
    assert stat == procfs.ProcStat(pid=4242, comm="a) (b) c", state="S", ppid=1, pgrp=4242, session=4242,
                                   start_time=987654)
    assert stat.alive


def test_zombies_and_dead_tasks_are_not_alive() -> None:
    assert not procfs.parse_stat(STAT.replace(b"c) S", b"c) Z")).alive
    assert not procfs.parse_stat(STAT.replace(b"c) S", b"c) X")).alive


def test_it_reads_this_process() -> None:
    stat = procfs.read_stat(os.getpid())
    assert stat is not None
    assert (stat.pid, stat.ppid, stat.state) == (os.getpid(), os.getppid(), "R")
    assert procfs.start_time(os.getpid()) == stat.start_time > 0


def test_a_gone_process_reads_as_none() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert procfs.read_stat(child.pid) is None
    assert procfs.start_time(child.pid) is None


def test_a_zombie_has_no_start_time() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while (stat := procfs.read_stat(pid)) is not None and stat.state != "Z":
            os.sched_yield()
        assert stat is not None and stat.ppid == os.getpid()
        assert procfs.start_time(pid) is None
    finally:
        os.waitpid(pid, 0)


def test_the_boot_id_is_the_kernels_uuid() -> None:
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", procfs.boot_id())


def test_importing_the_engine_reads_nothing_of_the_host_yet() -> None:
    # The web process imports engine modules; what launch needs from /proc waits for a start.
    code = "import vservers.engine.launch as launch; print(launch._masked_present.cache_info().currsize)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_catches_tells_a_handled_or_blocked_signal_from_an_ignored_or_default_one() -> None:
    import signal

    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGUSR1, lambda *_: None)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert procfs.catches(child.pid, signal.SIGUSR1)  # a handler
        assert procfs.catches(child.pid, signal.SIGUSR2)  # blocked: it waits, pending
        assert not procfs.catches(child.pid, signal.SIGHUP)  # ignored
        assert not procfs.catches(child.pid, signal.SIGWINCH)  # the default action
    finally:
        child.communicate("\n", timeout=10)
    assert not procfs.catches(child.pid, signal.SIGUSR1)  # gone
