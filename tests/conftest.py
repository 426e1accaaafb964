"""Session-wide guarantees: tests run as root on the real kernel, and when the session ends
nothing the tests made is left in the kernel (mounts, loop devices, veths, bridges, cgroups,
processes). The leak check fails the run."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import pytest

from tests import coldpath, prebuild
from tests.leaks import TEST_ENV, find_leaks

# The panel's fixtures (a private Redis, the tests' engine installation, a world of rows, a
# worker that drains the queues, a browser), registered once for every test directory: the
# session-wide ones in tests/panel_fixtures.py, the others in tests/panel_world.py.
pytest_plugins = ["tests.panel_fixtures", "tests.panel_world"]

# One test session at a time per host: the sessions share their installations' names
# (roots, bridges, addresses), so a second one waits here instead of tripping the first.
SESSION_LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "vservers-tests.lock"


def pytest_configure(config):
    if os.geteuid() == 0:
        lock = open(SESSION_LOCK, "w")  # noqa: SIM115 - held until the process exits
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another test session ({SESSION_LOCK})", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        config._vservers_session_lock = lock
    # Guests' inits are reparented to the nearest subreaper when the setup child exits; being
    # it lets the engine reap them (this machine's PID 1 does not reap orphans).
    if os.geteuid() == 0:
        from vservers.engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

        prctl(PR_SET_CHILD_SUBREAPER, 1)
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)


def pytest_collection_finish(session):
    """The cold builds the collected tests will need, started in the background (tests/prebuild.py)."""
    if os.geteuid() != 0 or session.config.option.collectonly:
        return
    what = prebuild.wanted(session.items)
    if what:
        session.config._vservers_prebuild = prebuild.Prebuild(what)


def pytest_unconfigure(config):
    started = getattr(config, "_vservers_prebuild", None)
    if started is not None:
        started.wait()  # nothing the session started outlives it


def pytest_report_header(config):
    """Which database the session runs on: make test runs the suite on SQLite, then the tests
    marked both_databases or cluster again on PostgreSQL (scripts/with-postgres)."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    return f"database: {database['ENGINE'].rsplit('.', 1)[-1]} {database.get('HOST') or ''}".rstrip()


def pytest_terminal_summary(terminalreporter):
    for line in coldpath.summary():
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def quick_password_hashing(settings):
    """Passwords made in the test's process are hashed with tests.hashers' quick PBKDF2; the
    stock hashers stay behind it, so the hashes every process can check stay checkable."""
    settings.PASSWORD_HASHERS = ["tests.hashers.QuickPBKDF2PasswordHasher", *settings.PASSWORD_HASHERS]


@pytest.fixture(autouse=True)
def nodes_stay_online(settings):
    """The worlds' nodes are seen once when made (tests/panel_world.py) and have no worker
    whose heartbeat keeps them online (drain runs jobs in the test's process): a long test
    must not see them turn "unreachable" and their servers "unknown" halfway. The tests of
    the heartbeat (tests/panel/test_nodes_heartbeat.py) set a short timeout themselves."""
    settings.PANEL_NODE_TIMEOUT_SECONDS = 24 * 3600


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_session():
    yield
    if os.geteuid() != 0:
        return
    _reap_children()
    leaks = find_leaks()
    if leaks:
        pytest.fail("kernel objects leaked by the test session:\n" + "\n".join(leaks), pytrace=False)


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return Path("/")
