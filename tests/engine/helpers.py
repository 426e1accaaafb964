"""Helpers for engine tests: talk to servers only after checking the kernel routes their
address to our own bridge, and drive the CLI like an operator."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.leaks import TEST_ENV


def check_routed_to_bridge(address: str, bridge: str = TEST_ENV["VSERVER_BRIDGE"]) -> None:
    """Refuse to send anything to ADDRESS unless the kernel routes it to our own bridge: the
    default route leads off this machine."""
    ip = ipaddress.ip_address(address)
    assert ip in ipaddress.ip_network("198.18.0.0/15") or ip in ipaddress.ip_network("fd00::/8")
    out = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True, check=True).stdout
    assert f" dev {bridge} " in out, f"{address} is not routed to {bridge}: {out}"


def http_get(address: str, path: str = "/", timeout: float = 5.0, bridge: str | None = None) -> tuple[int, str]:
    check_routed_to_bridge(address, bridge or TEST_ENV["VSERVER_BRIDGE"])
    host = f"[{address}]" if ":" in address else address
    conn = http.client.HTTPConnection(host.strip("[]"), 80, timeout=timeout)  # no proxies, ever
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def vserver_cli(*args: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the `vserver` CLI exactly as an operator would, with the tests' environment."""
    env = {**os.environ, **TEST_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "vservers.engine.cli", *args],
        capture_output=True, text=True, input=input, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    if check:
        assert result.returncode == 0, f"vserver {' '.join(args)} failed: {result.stderr}"
    return result


def wait_for_http(address: str, timeout: float = 15.0, bridge: str | None = None) -> None:
    """Wait until ADDRESS answers HTTP 200: a fresh server's supervisor needs a moment to
    start its web server. Polls; never asserts on how long it took."""
    import time

    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = http_get(address, timeout=2.0, bridge=bridge)[0]
            if last == 200:
                return
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} did not answer HTTP within {timeout}s (last: {last!r})\n"
                                 f"{network_state(address)}")
        time.sleep(0.05)


def network_state(address: str) -> str:
    """What the host knows of ADDRESS and its bridge's ports, for a failure's message: the
    neighbour entry, the route, the ports with their state and the bridge's table."""
    bridge = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True).stdout
    device = bridge.split(" dev ", 1)[1].split()[0] if " dev " in bridge else ""
    commands = [
        ["ip", "neigh", "show", "to", address],
        ["ip", "route", "get", address],
        ["bridge", "link", "show"] + (["master", device] if device else []),
        ["bridge", "fdb", "show"] + (["br", device] if device else []),
        ["ip", "-s", "link", "show"] + (["master", device] if device else []),
    ]
    if device:
        from vservers.engine import firewall

        commands.append(["nft", "list", "set", "bridge", firewall.table_name(device), "dropped"])
    shown = []
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        shown.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    return "\n".join(shown)


def compile_static(source: str, directory: Path) -> Path:
    """The C file tests/engine/SOURCE compiled into DIRECTORY, linked statically: a busybox
    guest has no C library to load. Skips the test when gcc is missing."""
    import shutil

    import pytest

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (build-essential)")
    out = directory / Path(source).stem
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(Path(__file__).with_name(source))], check=True)
    return out


def install_in_guest(engine, name: str, guest_path: str, program: bytes) -> None:
    """PROGRAM copied into server NAME as the executable GUEST_PATH (its directory made)."""
    directory = guest_path.rsplit("/", 1)[0] or "/"
    script = 'mkdir -p "$1" && cat > "$2" && chmod 755 "$2"'
    result = engine.run(name, ["/bin/sh", "-c", script, "sh", directory, guest_path], input=program)
    assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def private_sshd(directory: Path, authorized_keys: str) -> Iterator[dict[str, object]]:
    """An sshd of the test's own on a loopback port: its own config and host key in
    DIRECTORY, root by key only, AUTHORIZED_KEYS as its authorized_keys file (read again at
    every connection: a test may rewrite it). The system's sshd is never used or changed;
    /run/sshd (privilege separation's empty directory) is made if missing and removed again.
    Yields port, host_key (the public line), authorized_keys (the file's path) and pid."""
    import shutil
    import socket
    import time

    sshd = "/usr/sbin/sshd"
    assert os.path.exists(sshd), "openssh-server is not installed (make install-test)"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host")], check=True)
    keys_file = directory / "authorized_keys"
    keys_file.write_text(authorized_keys)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (directory / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\nPidFile none\n"
        f"AuthorizedKeysFile {keys_file}\nPermitRootLogin prohibit-password\nAllowUsers root\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
    )
    made_run_dir = not os.path.isdir("/run/sshd")
    if made_run_dir:
        os.mkdir("/run/sshd", 0o755)
    with open(directory / "sshd.log", "w") as log:  # a file, not a pipe nobody reads
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(directory / "sshd_config")], stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the test's sshd did not start"
                time.sleep(0.02)
        host_key = " ".join((directory / "host.pub").read_text().split()[:2])
        yield {"port": port, "host_key": host_key, "authorized_keys": keys_file, "pid": proc.pid}
    finally:
        proc.terminate()
        proc.wait()
        if made_run_dir:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def start_cli(*args: str, fault: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`vserver ARGS` in a process of its own that stops itself at FAULT (faults.checkpoint),
    in the installation ENV (the tests' own by default)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vservers.engine.cli", *args],
        env={**os.environ, **(env or TEST_ENV), "VSERVER_TEST_FAULT": fault},
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_stopped(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until PROC has stopped itself at its fault point (state T); never a blind sleep."""
    import time

    from vservers.engine import procfs

    deadline = time.monotonic() + timeout
    while True:
        stat = procfs.read_stat(proc.pid)
        if stat is not None and stat.state == "T":
            return
        assert proc.poll() is None, f"the command ended before its fault point: {proc.stderr.read()!r}"
        assert time.monotonic() < deadline, "the command never reached its fault point"
        time.sleep(0.01)


def kill_9(proc: subprocess.Popen) -> None:
    import signal

    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()


def is_fork_server(pid: int) -> bool:
    """Whether PID is a fork server (vservers/engine/forker.py: `python -m vservers.engine.forker`)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"vservers.engine.forker"]
    except OSError:
        return False


def report_self(out_w: int, *given_and_tag: int | str) -> None:
    """Run by a fork server's child (tests/engine/test_forker.py) with the fds it was given and
    a tag last: write what the child is, as JSON, to OUT_W: its parent, its open fds (with the
    close-on-exec flag) and the tag."""
    tag = given_and_tag[-1]
    import fcntl
    import json

    fds = {int(fd): bool(fcntl.fcntl(int(fd), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
           for fd in os.listdir("/proc/self/fd") if int(fd) != out_w and os.path.exists(f"/proc/self/fd/{fd}")}
    os.write(out_w, json.dumps({"ppid": os.getppid(), "fds": fds, "tag": tag, "out_w": out_w}).encode())
