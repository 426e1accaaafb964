"""The `vserver` CLI, driven exactly as an operator types it."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import sys
import time

import pytest

from tests.engine.helpers import http_get, vserver_cli, wait_for_http
from tests.leaks import TEST_ENV

IP = "198.19.5.10"


def test_doctor_finds_everything_on_this_host(engine):
    result = vserver_cli("doctor")
    assert result.returncode == 0, result.stdout
    assert "MISSING" not in result.stdout
    assert "ok      idmapped overlay lower layers" in result.stdout
    assert "cgroup v" in result.stdout
    # Measured, and a warning at worst (favordynmods is the host's to set): "ok" or "warning"
    assert re.search(r"^(ok     |warning) cgroup migration: [0-9.]+ ms to move a process", result.stdout, re.M)


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "Bad_Name", "--template", "busybox", "--ip", "198.19.5.20/18"], "invalid server name"),
        (["create", "ok", "--template", "busybox", "--ip", "10.0.0.5/8"], "not in the bridge network"),
        (["create", "ok", "--template", "busybox", "--ip", "198.19.5.20"], "needs a prefix length"),
        (["create", "ok", "--template", "busybox", "--ip", "198.19.5.20/18", "--memory", "lots"], "invalid size"),
        (["create", "ok", "--template", "busybox", "--ip", "198.19.5.20/18", "--hostname=-x;rm"], "hostname"),
        (["create", "ok", "--template", "busybox", "--ip", "198.19.5.20/18", "--cpus", "0"], "CPU share"),
        (["create", "ok", "--template", "../etc", "--ip", "198.19.5.20/18"], "invalid template name"),
        (["start", "$(reboot)"], "invalid server name"),
        (["status", "../../etc"], "invalid server name"),
        (["create", "ok", "--template", "busybox"], "the following arguments are required: --ip"),
    ],
)
def test_bad_input_gets_a_one_line_error_and_exit_2(engine, args, message):
    result = vserver_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "ok" not in engine.names()


def test_unknown_servers_are_reported_not_crashed_on(engine):
    result = vserver_cli("status", "nosuch")
    assert result.returncode == 3
    assert "no server named 'nosuch'" in result.stderr


def test_a_server_through_its_whole_life(engine):
    create = vserver_cli("create", "cli1", "--template", "busybox", "--ip", f"{IP}/18", "--ip", "fd00:19::10/64",
                         "--cpus", "0.5", "--memory", "64M", "--disk", "128M", "--pids", "100", "--hostname",
                         "web.example.test")
    assert create.returncode == 0, create.stderr
    try:
        stopped = json.loads(vserver_cli("status", "cli1", "--json", check=True).stdout)
        assert stopped["state"] == "stopped" and stopped["init_pid"] is None
        vserver_cli("start", "cli1", check=True)
        wait_for_http(IP)
        status = json.loads(vserver_cli("status", "cli1", "--json", check=True).stdout)
        assert status["state"] == "running"
        assert sorted(status["ips"]) == [f"{IP}/18", "fd00:19::10/64"]
        limits = status["limits"]
        assert {key: limits[key] for key in ("cpus", "memory_bytes", "pids", "disk_bytes")} == {
            "cpus": 0.5, "memory_bytes": 64 * 2**20, "pids": 100, "disk_bytes": 128 * 2**20}
        assert [limits[f"io_{key}"] for key in ("read_bps", "write_bps", "read_iops", "write_iops")] == [None] * 4
        assert set(status["usage"]) == {"cpu_seconds", "memory_bytes", "pids", "disk_used_bytes", "net_in_bytes",
                                        "net_out_bytes", "net_in_packets", "net_out_packets", "started"}
        assert status["usage"]["pids"] >= 3 and status["usage"]["memory_bytes"] > 0
        listed = json.loads(vserver_cli("list", "--json", check=True).stdout)
        assert [s["name"] for s in listed if s["name"] == "cli1"] == ["cli1"]

        echo = vserver_cli("exec", "cli1", "--", "sh", "-c", "hostname; echo err >&2; exit 7")
        assert (echo.returncode, echo.stdout, echo.stderr) == (7, "web.example.test\n", "err\n")
        piped = vserver_cli("exec", "cli1", "--", "cat", input="through stdin\n")
        assert piped.stdout == "through stdin\n"

        assert vserver_cli("account", "add", "cli1", "dave", "--password-stdin", input="s3cret-pass\n").returncode == 0
        accounts = json.loads(vserver_cli("account", "list", "cli1", "--json", check=True).stdout)
        assert "dave" in [a["name"] for a in accounts]
        assert vserver_cli("account", "passwd", "cli1", "dave", input="an0ther-pass\n").returncode == 0
        bad = vserver_cli("account", "add", "cli1", "root;x")
        assert bad.returncode == 2 and "invalid user name" in bad.stderr
        assert vserver_cli("account", "delete", "cli1", "dave").returncode == 0

        services = json.loads(vserver_cli("service", "list", "cli1", "--json", check=True).stdout)
        assert {"name": "httpd", "state": "running"}.items() <= services[0].items()
        assert vserver_cli("service", "stop", "cli1", "httpd", check=True).stdout == "httpd: stopped\n"
        with pytest.raises(ConnectionRefusedError):
            http_get(IP)
        vserver_cli("service", "start", "cli1", "httpd", check=True)
        wait_for_http(IP)
        missing = vserver_cli("service", "restart", "cli1", "nosuch")
        assert missing.returncode == 3

        vserver_cli("restart", "cli1", check=True)
        wait_for_http(IP)
        vserver_cli("stop", "cli1", check=True)
        assert json.loads(vserver_cli("status", "cli1", "--json").stdout)["state"] == "stopped"
        not_running = vserver_cli("exec", "cli1", "--", "true")
        assert not_running.returncode == 4 and "not running" in not_running.stderr
    finally:
        vserver_cli("delete", "cli1", check=True)
    assert "cli1" not in engine.names()


def test_enter_gives_an_interactive_shell_on_its_own_terminal(engine, make_server):
    make_server("shell", "198.19.5.11/18")
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "vservers.engine.cli", "enter", "shell"],
                  {**os.environ, **TEST_ENV})
    try:
        output = _read_until(fd, b"# ")  # the guest shell's prompt
        os.write(fd, b"tty; echo marker-$((6*7)); exit\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        _, status = os.waitpid(pid, 0)
    assert b"marker-42" in output
    assert b"/dev/pts/" in output  # a terminal of its own, not the caller's
    assert os.waitstatus_to_exitcode(status) == 0


def _read_until(fd: int, marker: bytes, timeout: float = 20) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            output += os.read(fd, 4096)
    return output


def test_several_servers_in_one_command(engine):
    names = ["multi1", "multi2", "multi3"]
    for index, name in enumerate(names):
        vserver_cli("create", name, "--template", "busybox", "--ip", f"198.19.5.{30 + index}/18", check=True)
    try:
        assert vserver_cli("start", *names).returncode == 0
        assert all(engine.status(n).state == "running" for n in names)
        assert vserver_cli("stop", *names).returncode == 0
        assert all(engine.status(n).state == "stopped" for n in names)
    finally:
        assert vserver_cli("delete", *names).returncode == 0
    assert not set(names) & set(engine.names())
