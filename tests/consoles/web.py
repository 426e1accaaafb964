"""The panel's web process as production runs it (scripts/run-panel): gunicorn with uvicorn's
worker class serving panel.asgi, as the unprivileged user vpanel, on this test's file database
(tests/panel/faults.py file_database, in a directory vpanel may enter). The test binds the
listening socket itself (127.0.0.1, a free port) and hands it over (gunicorn's fd://), so
there is no race for a port.

Also: a signed-in session for a user, as its cookie, and a WebSocket client (websockets)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests.panel.faults import wait_until

REPO = Path(__file__).resolve().parents[2]
WEB_USER = "vpanel"


def web_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(WEB_USER)
    except KeyError:
        pytest.skip(f"no user {WEB_USER} (make install creates it: scripts/ensure-panel-user)")


class WebProcess:
    def __init__(self, directory: Path, database: str, console_socket: Path) -> None:
        user = web_user()
        self.directory = directory
        self.log_path = directory / "web.log"
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        fd = self.listener.fileno()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(directory),  # gunicorn's control socket goes to ~/.gunicorn
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.consoles.web_settings",
            "PANEL_TEST_DATABASE": database,
            # The test's own key: its sessions' hashes must be the web process's.
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "DJANGO_LOCAL_HTTP": "1",
            "PANEL_CONSOLE_SOCKET": str(console_socket),
        }
        argv = [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
            str(Path(sys.executable).parent / "gunicorn"), "panel.asgi:application",
            "-k", "uvicorn_worker.UvicornWorker", "--bind", f"fd://{fd}", "--workers", "1",
            "--chdir", str(REPO), "--access-logfile", "-", "--error-logfile", "-",
            "--graceful-timeout", "5",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     pass_fds=[fd], start_new_session=True)
        try:
            wait_until(self._answers, lambda: f"the web process to answer; its log:\n{self.log_tail()}", timeout=60)
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"the web process exited:\n{self.log_tail()}"
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:  # noqa: S310 - loopback
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the master (its workers end with it), SIGKILL to the group if it hangs;
        the group is the session this test made for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # Whatever is left in its session (a worker whose master died) goes too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.listener.close()
        self._log.close()


def web_console_socket(directory: Path) -> Path:
    """Where the web process looks for the broker: a directory of root's (group vpanel) that
    the broker makes, in the test's directory (the broker checks every directory above it)."""
    return directory / "broker" / "run" / "console.sock"


@pytest.fixture
def file_database_dir():
    """A directory the web process (vpanel) may enter, for the database and the console's
    socket; removed after the test."""
    user = web_user()
    directory = Path(tempfile.mkdtemp(prefix="vservers-console-"))
    os.chown(directory, user.pw_uid, user.pw_gid)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def web(file_database, file_database_dir):
    """The web process on this test's file database (handed to vpanel: SQLite, as root, gives
    the journal files it makes to the database's owner)."""
    user = web_user()
    os.chown(file_database, user.pw_uid, user.pw_gid)
    for suffix in ("-wal", "-shm", "-journal"):
        extra = Path(file_database + suffix)
        if extra.exists():
            os.chown(extra, user.pw_uid, user.pw_gid)
    process = WebProcess(file_database_dir, file_database, web_console_socket(file_database_dir))
    yield process
    process.stop()


def session_cookie(user, device=None) -> str:
    """A signed-in session of USER, as the value of the session cookie: without a second
    factor, or verified with DEVICE (what django_otp.login records in the session)."""
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY

    client = Client()
    client.force_login(user)
    if device is not None:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    return client.cookies[settings.SESSION_COOKIE_NAME].value
