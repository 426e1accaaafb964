"""Two busybox servers A and B on the real kernel: each has its own processes, IPC, files,
address, accounts and uid range, and neither can see the other or the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.engine.helpers import compile_static, http_get, wait_for_http
from vservers.engine.errors import InvalidInput

A_IP, B_IP = "198.19.1.10", "198.19.1.11"
IPC_KEY = "0x56530001"


@pytest.fixture(scope="module")
def pair(engine):
    from vservers.engine import Limits

    limits = Limits(memory_bytes=64 * 2**20, pids=64, cpus=0.5, disk_bytes=64 * 2**20)
    for name, ip in (("iso-a", A_IP), ("iso-b", B_IP)):
        engine.create(name, "busybox", [f"{ip}/18"], limits)
        engine.start(name)
    wait_for_http(A_IP)
    wait_for_http(B_IP)
    yield engine, "iso-a", "iso-b"
    for name in ("iso-a", "iso-b"):
        engine.delete(name)


def run(engine, name, *argv, input=None):
    return engine.run(name, list(argv), input=input)


def test_ps_shows_only_the_servers_own_processes_with_init_as_pid_1(pair):
    engine, a, b = pair
    out = run(engine, a, "ps", "-o", "pid,comm").stdout.split("\n")
    rows = [line.split() for line in out[1:] if line.strip()]
    pids = {int(pid): comm for pid, comm in rows}
    assert pids[1] == "init"
    assert "runsvdir" in pids.values() and "httpd" in pids.values()
    host_init_b = engine.status(b).init_pid
    assert all(pid < 100 for pid in pids), "host or B pids visible in A"
    assert host_init_b not in pids or pids.get(host_init_b) != "init"
    # No process of the host (such as this test runner) shows up.
    assert "python" not in " ".join(pids.values()) and "pytest" not in " ".join(pids.values())
    # And the host sees A's init as an ordinary process in A's uid range.
    status = engine.status(a)
    assert os.stat(f"/proc/{status.init_pid}").st_uid == status.uid_base


def test_ipc_objects_made_in_a_are_invisible_in_b_and_on_the_host(pair, tmp_path):
    engine, a, b = pair
    tool = compile_static("ipc_tool.c", tmp_path)
    run(engine, a, "/bin/sh", "-c", "cat > /tmp/ipc_tool && chmod 755 /tmp/ipc_tool", input=tool.read_bytes())
    result = run(engine, a, "/tmp/ipc_tool", IPC_KEY)
    assert result.returncode == 0, result.stderr
    key_hex = IPC_KEY[2:]
    in_a = run(engine, a, "ipcs").stdout
    assert in_a.count(key_hex) == 3  # shm, semaphores, message queue
    assert "vserver-test" in run(engine, a, "ls", "/dev/mqueue").stdout
    in_b = run(engine, b, "ipcs").stdout
    assert key_hex not in in_b
    assert "vserver-test" not in run(engine, b, "ls", "/dev/mqueue").stdout
    key_decimal = str(int(IPC_KEY, 16))
    for kind in ("shm", "sem", "msg"):
        host_keys = [line.split()[0] for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]]
        assert key_decimal not in host_keys
    assert not Path("/dev/mqueue/vserver-test").exists()


def test_files_written_in_a_stay_in_a_and_never_reach_the_template(pair, config):
    from vservers.engine import templates

    engine, a, b = pair
    before = engine.status(a).usage.disk_used_bytes
    assert run(engine, a, "/bin/sh", "-c", "dd if=/dev/zero of=/root/data bs=1024 count=2048 2>/dev/null; sync")\
        .returncode == 0
    assert run(engine, a, "cat", "/etc/hostname").returncode == 0
    run(engine, a, "/bin/sh", "-c", "echo changed > /var/www/index.html")
    assert run(engine, b, "ls", "/root/data").returncode != 0
    spec = engine.spec(a)
    template_root = templates.rootfs_path(config, spec.template, spec.template_version)
    assert not (template_root / "root" / "data").exists()
    assert "changed" not in (template_root / "var/www/index.html").read_text()
    after = engine.status(a).usage.disk_used_bytes
    # A's disk use is its own changes: about the 2 MiB written, not the template's size.
    assert 2 * 2**20 <= after - before < 3 * 2**20
    assert after < 4 * 2**20
    assert http_get(B_IP)[1] != "changed\n"
    run(engine, a, "rm", "/root/data")
    run(engine, a, "/bin/sh", "-c", f"cat {template_root}/var/www/index.html 2>/dev/null; true")


def test_both_serve_http_on_their_own_addresses_and_stopping_a_leaves_b(pair):
    engine, a, b = pair
    status_a, body_a = http_get(A_IP)
    status_b, _ = http_get(B_IP)
    assert (status_a, status_b) == (200, 200)
    assert engine.status(a).ips == [f"{A_IP}/18"]
    services = {s.name: s for s in engine.services(a).list()}
    assert services["httpd"].state == "running"
    stopped = engine.services(a).control("httpd", "stop")
    assert stopped.state == "stopped"
    try:
        with pytest.raises(ConnectionRefusedError):
            http_get(A_IP)
        assert http_get(B_IP)[0] == 200
    finally:
        started = engine.services(a).control("httpd", "start")
    assert started.state == "running"
    assert http_get(A_IP)[0] == 200


def test_an_account_added_in_a_exists_in_a_only(pair):
    engine, a, b = pair
    key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@example")
    account = engine.accounts(a).add("alice", password="correct horse battery", ssh_key=key)
    try:
        assert account.uid >= 1000
        assert "alice" in [x.name for x in engine.accounts(a).list()]
        assert "alice" not in [x.name for x in engine.accounts(b).list()]
        shadow = run(engine, a, "grep", "^alice:", "/etc/shadow").stdout
        assert shadow.split(":")[1].startswith("$")  # a real hash, not the plain password
        keys = run(engine, a, "cat", "/home/alice/.ssh/authorized_keys").stdout
        assert keys.strip() == key
        owner = run(engine, a, "stat", "-c", "%U %a", "/home/alice/.ssh/authorized_keys").stdout.split()
        assert owner == ["alice", "600"]
    finally:
        engine.accounts(a).delete("alice")
    assert "alice" not in [x.name for x in engine.accounts(a).list()]


# SHA-512 crypt of "correct horse battery" (made with vservers.passwords.sha512_crypt).
PASSWORD_HASH = (
    "$6$2uK6CPDX9nezSz8W$/5VfxHFomMp7H7c90FjZ5iEBxd09jIp4YD1mOffe"
    "5sUueTog.SHqgiJi9XndpvA5Uth5beQsayDqISyt1j0Mi1"
)


def test_a_password_hash_is_stored_as_given(pair):
    engine, a, _ = pair
    accounts = engine.accounts(a)
    accounts.add("hashed")
    try:
        accounts.set_password_hash("hashed", PASSWORD_HASH)
        shadow = run(engine, a, "grep", "^hashed:", "/etc/shadow").stdout
        assert shadow.split(":")[1] == PASSWORD_HASH
        with pytest.raises(InvalidInput, match="SHA-512 crypt"):
            accounts.set_password_hash("hashed", "correct horse battery")  # a plain password is no hash
        assert run(engine, a, "grep", "^hashed:", "/etc/shadow").stdout == shadow
    finally:
        accounts.delete("hashed")


def test_root_in_a_is_an_unprivileged_range_on_the_host(pair, config):
    from vservers.engine import templates

    engine, a, b = pair
    spec_a, spec_b = engine.spec(a), engine.spec(b)
    assert spec_a.uid_base != spec_b.uid_base
    assert abs(spec_a.uid_base - spec_b.uid_base) >= 65536
    for spec in (spec_a, spec_b):
        init_pid = engine.status(spec.name).init_pid
        assert Path(f"/proc/{init_pid}/uid_map").read_text().split() == ["0", str(spec.uid_base), "65536"]
        # Inside, the map is relative to the VPS's outer namespace (see userns.py): the guest
        # does not learn its host range.
        uid_map = run(engine, spec.name, "cat", "/proc/self/uid_map").stdout.split()
        assert uid_map == ["0", "0", "65536"]
    assert run(engine, a, "id", "-u").stdout.strip() == "0"
    run(engine, a, "touch", "/root/made-by-a")
    init_a = engine.status(a).init_pid
    st = os.stat(f"/proc/{init_a}/root/root/made-by-a")
    assert (st.st_uid, st.st_gid) == (spec_a.uid_base, spec_a.uid_base)
    template_root = templates.rootfs_path(config, spec_a.template, spec_a.template_version)
    assert os.stat(template_root / "bin" / "busybox").st_uid == 0
    assert not (template_root / "root" / "made-by-a").exists()
    # Root in A cannot change the template's files as seen by B (copy-up goes to A's disk).
    run(engine, a, "/bin/sh", "-c", "echo x >> /etc/passwd")
    assert "x" not in run(engine, b, "tail", "-n", "1", "/etc/passwd").stdout.split()
    assert os.stat(template_root / "etc" / "passwd").st_uid == 0
    # And it is not root on the host: it cannot load modules or change the host's hostname.
    assert run(engine, a, "hostname").stdout.strip() == a
    assert os.uname().nodename != a


def test_hostnames_are_their_own(pair):
    engine, a, b = pair
    assert run(engine, a, "hostname").stdout.strip() == "iso-a"
    assert run(engine, b, "hostname").stdout.strip() == "iso-b"
