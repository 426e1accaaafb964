"""The btrfs storage backend (vservers/engine/qgroups.py) on a pool the test makes itself: a
sparse file with a btrfs in it, loop-mounted outside the tests' state root, quotas on.

One journey with one busybox server covers the lifecycle (create, start, HTTP, grow online,
the usage figure, rescue, reinstall, stop, delete) and the walls, each beside its positive
control: the qgroup limit holds against the guest's writes (EDQUOT) and its inodes, and a
subvolume made inside (which would escape the limit) is refused through the overlay while the
same ioctl works on the host.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess

import pytest

from tests.engine.helpers import compile_static, install_in_guest, wait_for_http
from tests.leaks import TEST_ENV

IP = "198.19.33.10"
PROBE = "/usr/local/bin/escape-probe"
MIB = 2**20


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A 1 GiB sparse btrfs, loop-mounted (autoclear: the unmount frees the device)."""
    base = tmp_path_factory.mktemp("btrfs-pool")
    image, mount_point = base / "pool.img", base / "pool"
    mount_point.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(2**30)
    _run("mkfs.btrfs", "-q", "-f", str(image))
    _run("mount", "-o", "loop", str(image), str(mount_point))
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def btrfs_engine(engine, pool):
    """The tests' installation with new servers on the btrfs pool (engine builds the template)."""
    from vservers.engine import Engine
    from vservers.engine.config import EngineConfig

    return Engine(EngineConfig.from_env({**TEST_ENV, "VSERVER_STORAGE": "btrfs", "VSERVER_STORAGE_POOL": str(pool)}))


def test_the_setting_and_the_pool_are_checked_with_a_clear_error(pool, tmp_path):
    from vservers.engine.config import EngineConfig
    from vservers.engine.errors import InvalidInput
    from vservers.engine.qgroups import check_pool

    with pytest.raises(InvalidInput, match="loop or btrfs"):
        EngineConfig.from_env({**TEST_ENV, "VSERVER_STORAGE": "zfs"})
    with pytest.raises(InvalidInput, match="VSERVER_STORAGE_POOL"):
        EngineConfig.from_env({**TEST_ENV, "VSERVER_STORAGE": "btrfs"})
    assert EngineConfig.from_env(TEST_ENV).storage == "loop"
    assert "not btrfs" in check_pool(tmp_path)  # the host's ext4
    assert "not a directory" in check_pool(pool / "missing")
    assert "btrfs quota enable" in check_pool(pool)  # quotas still off
    config = EngineConfig.from_env({**TEST_ENV, "VSERVER_STORAGE": "btrfs", "VSERVER_STORAGE_POOL": str(pool)})
    from vservers.engine.doctor import _storage_check

    assert not _storage_check(config).ok and "btrfs quota enable" in _storage_check(config).detail
    _run("btrfs", "quota", "enable", str(pool))
    assert check_pool(pool) == ""
    assert _storage_check(config).ok


def sh(engine, script: str, check: bool = True):
    result = engine.run("bq", ["/bin/sh", "-c", script], timeout=120)
    assert not check or result.returncode == 0, result.stderr
    return result


def probe_answer(text: str, key: str) -> tuple[str, str]:
    for line in text.splitlines():
        name, _, rest = line.partition("=")
        if name == key:
            ret, _, err = rest.partition(":")
            return ret, err.strip()
    raise AssertionError(f"no {key} in {text!r}")


def as_uid(uid: int, action) -> str:
    """ACTION() run in a child as host uid UID (no capabilities); its error's name or "OK"."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports and exits
        answer = "OK"
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            action()
        except OSError as exc:
            answer = os.strerror(exc.errno or 0)
        except BaseException as exc:  # noqa: BLE001
            answer = repr(exc)
        os.write(w, answer.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as fh:
        return fh.read()


def host_write_ceilings(engine) -> str:
    """The write ceilings outside every server's group (cgroup v1's blkio root)."""
    from pathlib import Path

    path = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
    return path.read_text() if path.exists() else ""


def test_a_server_lives_its_whole_life_on_a_qgroup_and_cannot_leave_it(btrfs_engine, pool, tmp_path_factory):
    from vservers.engine import Limits, qgroups
    from vservers.engine.errors import EngineError

    engine = btrfs_engine
    assert qgroups.check_pool(pool) == "", "the pool test above enables quotas"
    probe = compile_static("escape_probe.c", tmp_path_factory.mktemp("probe")).read_bytes()
    limits = Limits(disk_bytes=32 * MIB, io_write_bps=1024 * MIB)  # high: only where it lands is checked
    spec = engine.create("bq", "busybox", [f"{IP}/18"], limits)
    try:
        server_dir = engine.config.server_dir("bq")
        storage = qgroups.of_server(server_dir)
        assert storage is not None and storage.subvolume.is_relative_to(pool)
        assert not (server_dir / "disk.img").exists()
        assert qgroups.limit_bytes(storage.subvolume) == 32 * MIB
        assert os.stat(storage.upper).st_uid == spec.uid_base

        engine.start("bq")
        wait_for_http(IP)
        assert engine._runtime("bq").loop_device == ""  # no loop device at all
        # Its I/O ceiling is on the pool's device, in its own group only: the device is shared.
        pool_device = qgroups.pool_devices(pool)[0]
        assert engine.cgroups.limits("bq", pool_device).io_write_bps == 1024 * MIB
        assert f"{pool_device} " not in host_write_ceilings(engine)
        install_in_guest(engine, "bq", PROBE, probe)
        sh(engine, "echo hello > /root/mine")
        assert (storage.upper / "root" / "mine").read_text() == "hello\n"  # its files, in its subvolume

        # Wall 1: the limit holds for the guest's writes (the overlay writes with its mounter's,
        # host root's, credentials: btrfs makes no exception for them).
        fill = sh(engine, "dd if=/dev/zero of=/root/fill bs=1M count=64 2>&1; sync", check=False)
        assert "Disk quota exceeded" in fill.stdout + fill.stderr
        os.sync()  # qgroup figures are those of the last transaction commit
        used = engine.status("bq").usage.disk_used_bytes
        assert 24 * MIB < used <= 32 * MIB, used
        assert qgroups.used_bytes(storage.subvolume) == used
        pool_free = os.statvfs(pool)
        assert pool_free.f_bavail * pool_free.f_frsize > 512 * MIB  # the pool is not filled

        # Grow online: a new limit, at once; the guest writes past the old one.
        engine.update("bq", dataclasses.replace(limits, disk_bytes=48 * MIB, io_write_bps=512 * MIB))
        assert qgroups.limit_bytes(storage.subvolume) == 48 * MIB
        assert engine.cgroups.limits("bq", pool_device).io_write_bps == 512 * MIB
        sh(engine, "dd if=/dev/zero of=/root/more bs=1M count=8 2>/dev/null")

        # Wall 2: a subvolume made inside would have a qgroup of its own, outside the limit.
        # Positive control: the guest's own host uid makes one in the same directory on the host.
        made = storage.upper / "root" / "escape"
        parent = os.open(made.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the way in is root's
        try:
            args = qgroups._VolArgs(0, made.name.encode())
            assert as_uid(spec.uid_base, lambda: fcntl.ioctl(parent, qgroups.BTRFS_IOC_SUBVOL_CREATE, args)) == "OK"
        finally:
            os.close(parent)
        assert os.lstat(made).st_ino == qgroups.BTRFS_FIRST_FREE_OBJECTID
        qgroups.destroy(made)
        ret, err = probe_answer(sh(engine, f"{PROBE} subvol /root escape").stdout, "subvol")
        assert (ret, err) == ("-1", "ENOTTY")  # overlayfs passes no btrfs ioctl through

        # Wall 3: inodes come from the same counted metadata: the guest runs out of its own.
        # (A limit just above what it uses, set from the host, keeps the file count small.)
        sh(engine, "rm -f /root/fill /root/more; sync")
        os.sync()
        qgroups.set_limit(storage.subvolume, qgroups.used_bytes(storage.subvolume) + MIB)
        result = sh(engine, f"mkdir -p /root/inodes && {PROBE} fill-inodes /root/inodes")
        created, err = probe_answer(result.stdout, "created")
        assert err == "EDQUOT" and int(created) > 1000, result.stdout
        engine.update("bq", dataclasses.replace(limits, disk_bytes=48 * MIB))  # puts the server's limit back
        assert qgroups.limit_bytes(storage.subvolume) == 48 * MIB

        # Not done by this backend: a clear error naming it.
        with pytest.raises(EngineError, match="btrfs storage backend"):
            engine.snapshot_create("bq")
        with pytest.raises(EngineError, match="btrfs storage backend"):
            engine.backup_create("bq")

        # Rescue sees the server's files at /mnt; reinstall gives it a fresh subvolume.
        assert engine.rescue_start("bq").rescue
        assert sh(engine, "cat /mnt/root/mine").stdout == "hello\n"
        engine.rescue_leave("bq")
        old_id = qgroups.subvolume_id(storage.subvolume)
        engine.reinstall("bq")
        assert qgroups.subvolume_id(storage.subvolume) != old_id
        assert qgroups.limit_bytes(storage.subvolume) == 48 * MIB
        assert sh(engine, "ls /root/mine", check=False).returncode != 0
        wait_for_http(IP)

        engine.stop("bq")
        assert engine.status("bq").state == "stopped"
    finally:
        engine.delete("bq")
    assert not storage.subvolume.exists() and not server_dir.exists()
