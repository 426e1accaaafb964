"""Joining a node end to end: the operator adds a node in the panel and is shown a one-time
token; `manage.py node join URL TOKEN` runs as its own process against a live server of the
panel (this test's database), writes its env file (0600), starts a real `manage.py
nodeworker node-<name>`, and the node turns online by the worker's heartbeat. The token does
not work twice; a wrong and an expired token get a sentence that says so; the join endpoint
is throttled like the sign-in."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test.testcases import LiveServerThread, _StaticFilesHandler
from django.urls import reverse
from django.utils import timezone

from tests.leaks import PANEL_ENV
from tests.panel import faults
from tests.panel.faults import wait_gone, wait_until
from vservers.models import Node
from vservers.nodes import join

pytestmark = pytest.mark.django_db(transaction=True)

file_database = faults.file_database
fault_world = faults.fault_world

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def panel_url(fault_world):
    """A live server of the panel in this process, whose request threads open the test's
    database by its settings (pytest-django's live_server shares the in-memory connection
    instead, which the node's worker process could not open)."""
    server = LiveServerThread("127.0.0.1", _StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    if server.error:
        raise server.error
    yield f"http://127.0.0.1:{server.port}/"
    server.terminate()


@pytest.fixture
def node_host(tmp_path, fault_world):
    """A new host's files: its VSERVER_ROOT, its sshd host key, and the environment its
    commands run with (the test's database through fault_settings)."""
    host = tmp_path / "node-b"
    host.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host / "ssh_host_ed25519_key")],
                   check=True, stdin=subprocess.DEVNULL)
    env = {
        **os.environ, **PANEL_ENV,
        "VSERVER_ROOT": str(host / "root"),
        "DJANGO_SETTINGS_MODULE": "tests.panel.fault_settings",
        "PANEL_TEST_DATABASE": fault_world.database,
        "PANEL_HEARTBEAT_SECONDS": "1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("DATABASE_URL", None)
    started: list[int] = []
    yield host, env, started
    for queue in ("node-b",):
        pid_file = host / f"{queue}.worker.pid"
        if pid_file.exists():
            started.append(int(pid_file.read_text()))
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        assert wait_gone(pid, timeout=60), f"worker {pid} did not stop"


def node_join(url: str, token: str, host: Path, env: dict, env_file: Path | None = None, *more: str):
    return subprocess.run(
        [sys.executable, "manage.py", "node", "join", url, token, "--env-file", str(env_file or host / "node.env"),
         "--host-key-file", str(host / "ssh_host_ed25519_key.pub"), *more],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_an_operator_adds_a_node_and_the_host_joins_with_the_token_once(fault_world, panel_url, node_host,
                                                                         client):
    host, env, _ = node_host
    client.force_login(fault_world.operator)
    page = client.post(reverse("op_node_add"), {"name": "b", "ssh_address": "127.0.0.1:2222",
                                               "vserver_root": "/var/lib/vservers"})
    assert page.status_code == 200 and "no-cache" in page["Cache-Control"]
    token = re.search(r'id="join-token" class="mono" type="text" readonly value="([^"]+)"', page.content.decode())[1]
    node = Node.objects.get(name="b")
    assert (node.queue_name, node.joined_at, node.is_online) == ("node-b", None, False)
    assert node.join_token_hash == join.token_hash(token) and token not in node.join_token_hash
    assert client.get(reverse("op_node_edit", args=["b"])).content.decode().count(token) == 0

    result = node_join(panel_url, token, host, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Joined as node b (queue node-b)" in result.stdout
    env_file = host / "node.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    written = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert written["PANEL_NODE_QUEUE"] == "node-b" and written["VSERVER_ROOT"] == str(host / "root")
    assert written["REDIS_URL"]
    # PostgreSQL: the node's own role; SQLite (one host): the panel's own file, no URL.
    from django.db import connection

    assert ("DATABASE_URL" in written) == (connection.vendor == "postgresql")
    node.refresh_from_db()
    public_key = (host / "root" / "ssh" / "id_ed25519.pub").read_text().strip()
    assert node.ssh_public_key == public_key
    assert node.ssh_host_key == (host / "ssh_host_ed25519_key.pub").read_text().strip()
    assert node.joined_at is not None and node.cpus == os.cpu_count() and node.memory_mb > 0
    assert node.vserver_root == str(host / "root")

    # Its worker runs on its queue and its heartbeat makes the node online.
    pid = int((host / "node-b.worker.pid").read_text())
    assert b"nodeworker\0node-b" in Path(f"/proc/{pid}/cmdline").read_bytes()
    wait_until(lambda: Node.objects.get(name="b").is_online, lambda: "node b online; the worker's log:\n"
               + (host / "node-b.worker.log").read_text(errors="replace")[-3000:])
    # It keeps the other nodes' keys (here: none have one) in its authorized_keys.
    assert (host / "root" / "ssh" / "authorized_keys").exists()

    # Again on the same host: the panel says the token is used; the host has joined, its
    # worker runs: nothing else happens.
    again = node_join(panel_url, token, host, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was used already" in again.stdout and f"runs already (pid {pid})" in again.stdout
    # Anywhere else: refused with the sentence.
    elsewhere = node_join(panel_url, token, host, env, host / "other.env")
    assert elsewhere.returncode != 0 and "This join token was used already: node b joined" in elsewhere.stderr
    assert not (host / "other.env").exists()


def test_a_wrong_or_expired_token_gets_a_sentence_and_the_endpoint_is_throttled(fault_world, panel_url,
                                                                                node_host, client):
    host, env, _ = node_host
    node, token = join.add_node("c", "127.0.0.1:2223", "/var/lib/vservers")
    Node.objects.filter(pk=node.pk).update(join_token_expires=timezone.now() - timedelta(seconds=1))
    expired = node_join(panel_url, token, host, env, None, "--no-start")
    assert expired.returncode != 0 and "This join token expired at" in expired.stderr, expired.stderr
    wrong = node_join(panel_url, "x" * 43, host, env, None, "--no-start")
    assert wrong.returncode != 0 and "This join token is not known to the panel" in wrong.stderr, wrong.stderr
    assert not (host / "node.env").exists()
    # A new token voids the old one, and works.
    fresh = join.new_token(Node.objects.get(pk=node.pk))
    assert "not known" in node_join(panel_url, token, host, env, None, "--no-start").stderr
    # The sign-in throttle, per address: the failures above count; a few more in a row and
    # even the good token must wait (as a right password does at the sign-in).
    body = {"token": "y" * 43, "cpus": 1, "memory_mb": 1, "disk_mb": 1, "ssh_host_key": node.ssh_host_key or "x",
            "ssh_public_key": "x"}
    statuses = [client.post(reverse("node_join"), body, content_type="application/json").status_code
                for _ in range(5)]
    assert statuses[0] == 400 and statuses[-1] == 429, statuses
    refused = client.post(reverse("node_join"), {**body, "token": fresh}, content_type="application/json")
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert "Too many refused join tokens" in refused.json()["detail"]
    assert Node.objects.get(pk=node.pk).joined_at is None


def test_a_join_token_never_begins_with_a_dash_which_the_command_line_would_read_as_an_option(monkeypatch):
    drawn = iter(["-first", "-second", "third"])
    monkeypatch.setattr(join.secrets, "token_urlsafe", lambda nbytes: next(drawn))
    node, token = join.add_node("d", "127.0.0.1:2224", "/var/lib/vservers")
    assert token == "third" and Node.objects.get(pk=node.pk).join_token_hash == join.token_hash("third")
