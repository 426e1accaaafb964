"""Backups of real busybox servers: archive, verify, restore (same server and another uid
range), damaged and hostile archives refused with the target untouched, a full backup
directory, and kill -9 in the middle of a backup and of a restore."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.engine import helpers
from tests.engine.helpers import http_get, wait_for_http
from vservers.engine.errors import InvalidInput

# Walks the upper layer of a server's image from a mount namespace of its own (util-linux
# mounts the image read-only on an autoclear loop device; both end with the process) and
# prints every entry: kind, mode, owners, size, device, content hash, link target, xattrs.
TREE_SCRIPT = r"""
import hashlib, json, os, stat, subprocess, sys, tempfile
image = sys.argv[1]
mnt = tempfile.mkdtemp()
subprocess.run(["mount", "-o", "ro,loop,noload", image, mnt], check=True)
top = os.path.join(mnt, "upper")
tree = {}
for dirpath, dirnames, filenames in os.walk(top):
    for name in [""] if dirpath == top else []:
        pass
    for name in dirnames + filenames + ([""] if dirpath == top else []):
        path = os.path.join(dirpath, name) if name else dirpath
        st = os.lstat(path)
        entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink}
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["mtime"] = st.st_mtime_ns
            with open(path, "rb") as fh:
                entry["sha"] = hashlib.sha256(fh.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            entry["link"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry["rdev"] = st.st_rdev
        entry["xattrs"] = {} if stat.S_ISLNK(st.st_mode) else {
            x: os.getxattr(path, x, follow_symlinks=False).hex() for x in os.listxattr(path, follow_symlinks=False)}
        tree[os.path.relpath(path, top)] = entry
subprocess.run(["umount", mnt], check=True)
os.rmdir(mnt)
json.dump(tree, sys.stdout)
"""

# What the guest does before its backup: a changed template file, a new file of www-data, a
# deleted template file (a whiteout), a directory made again (opaque), a symlink, a hard link,
# a FIFO and a set-uid file.
PREPARE = (
    "echo 'export CHANGED=1' >> /etc/profile && rm /etc/shells && "
    "rm -rf /var/www && mkdir /var/www && echo 'restored page' > /var/www/index.html && "
    "chown 33:33 /var/www/index.html && mkdir -p /root/data && echo one > /root/data/a && "
    "ln /root/data/a /root/data/hard && ln -s /etc/passwd /root/data/link && mkfifo /root/data/fifo && "
    "cp /bin/busybox /root/data/suid && chmod 4750 /root/data/suid && chown 0:33 /root/data/suid && "
    "chmod 4750 /root/data/suid"
)


# Sets an extended attribute on a file of the upper layer of a stopped server's image, from a
# mount namespace of its own (the image mounted read-write, unmounted when the process ends).
SETXATTR_SCRIPT = r"""
import os, subprocess, sys, tempfile
image, path, name, value = sys.argv[1:5]
mnt = tempfile.mkdtemp()
subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
os.setxattr(os.path.join(mnt, "upper", path), name, bytes.fromhex(value), follow_symlinks=False)
subprocess.run(["umount", mnt], check=True)
os.rmdir(mnt)
"""
CAP_NET_RAW = 13


def file_caps_v3(permitted: int, rootid: int) -> bytes:
    """security.capability as the kernel stores it for a user namespace's root (revision 3,
    effective): magic, permitted and inheritable of both words, the namespace root's host uid."""
    import struct

    return struct.pack("<IIIIII", 0x03000000 | 0x1, permitted, 0, 0, 0, rootid)


def set_upper_xattr(image: Path, path: str, name: str, value: bytes) -> None:
    subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SETXATTR_SCRIPT,
                    str(image), path, name, value.hex()], check=True, capture_output=True)


def upper_tree(image: Path) -> dict:
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", TREE_SCRIPT,
                          str(image)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def comparable(tree: dict) -> dict:
    """TREE without what every start rewrites (runit's supervise/ state of each service) and
    without the link count of whiteouts: overlayfs hard-links its whiteouts to one shared
    inode in its work dir, which is not part of a backup."""
    kept = {}
    for path, entry in tree.items():
        if "/supervise" in f"/{path}" and path.startswith("etc/service/"):
            continue
        if entry["mode"] & 0o170000 == 0o020000:
            entry = {**entry, "nlink": None}
        kept[path] = entry
    return kept


def shifted(tree: dict, delta: int) -> dict:
    """TREE with its owners, and the namespace root of its file capabilities, moved by DELTA;
    whiteouts stay host root's."""
    moved = {}
    for path, entry in tree.items():
        xattrs = dict(entry["xattrs"])
        caps = bytes.fromhex(xattrs.get("security.capability", ""))
        if len(caps) == 24:  # revision 3: the last word is the root's host uid
            xattrs["security.capability"] = (caps[:20] + (int.from_bytes(caps[20:], "little") + delta)
                                             .to_bytes(4, "little")).hex()
        moved[path] = {**entry, "uid": entry["uid"] and entry["uid"] + delta,
                       "gid": entry["gid"] and entry["gid"] + delta, "xattrs": xattrs}
    return moved


@pytest.fixture
def bengine(engine, tmp_path):
    """The tests' engine with a backup directory of this test's own."""
    from vservers.engine import Engine

    return Engine(dataclasses.replace(engine.config, backup_dir_setting=tmp_path / "backups"))


def _image(engine, name: str) -> Path:
    return engine.config.server_dir(name) / "disk.img"


def _fingerprint(path: Path) -> tuple:
    st = path.stat()
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return st.st_ino, st.st_size, st.st_mtime_ns, digest


def _prepared_server(bengine, make_server, name: str, ip: str) -> str:
    make_server(name, ip)
    result = bengine.run(name, ["/bin/sh", "-c", PREPARE])
    assert result.returncode == 0, result.stderr
    bengine.stop(name)
    return name


def test_a_round_trip_brings_back_every_file_whiteout_and_opaque_dir_byte_for_byte(bengine, make_server):
    name = _prepared_server(bengine, make_server, "bk-round", "198.19.21.10/18")
    before = upper_tree(_image(bengine, name))
    assert before["etc/shells"]["mode"] & 0o170000 == 0o020000 and before["etc/shells"]["rdev"] == 0  # whiteout
    assert before["var/www"]["xattrs"].get("trusted.overlay.opaque") == b"y".hex()
    assert before["root/data/suid"]["mode"] & 0o7777 == 0o4750

    seen = []
    info = bengine.backup_create(name, progress=lambda done, total: seen.append((done, total)))
    assert info.server == name and info.name.startswith(f"{name}-") and info.name.endswith(".tar.zst")
    assert info.manifest["uid_base"] == bengine.spec(name).uid_base
    assert info.manifest["template"] == "busybox" and info.manifest["addresses"] == ["198.19.21.10/18"]
    assert info.manifest["files"] == len(before)  # every entry of the upper layer, and no more
    assert seen and seen[-1][0] == seen[-1][1]
    assert bengine.backup_list(name) == [info] and bengine.backup_verify(info.name) == info
    assert oct(bengine.backup_path(info.name).stat().st_mode & 0o777) == "0o600"

    # Wreck the server's files, then restore.
    bengine.start(name)
    bengine.run(name, ["/bin/sh", "-c", "echo broken > /var/www/index.html; rm -rf /root/data; echo x > /etc/shells"])
    bengine.stop(name)
    status = bengine.backup_restore(info.name, name)
    assert status.state == "running"
    wait_for_http("198.19.21.10")
    assert http_get("198.19.21.10")[1] == "restored page\n"
    assert bengine.run(name, ["cat", "/etc/shells"]).returncode != 0  # still deleted
    assert bengine.run(name, ["/bin/sh", "-c", "ls /var/www"]).stdout.split() == ["index.html"]
    bengine.stop(name)
    assert comparable(upper_tree(_image(bengine, name))) == comparable(before)
    assert not (bengine.config.server_dir(name) / "disk.img.restore").exists()


def test_a_restore_into_a_server_of_another_uid_range_shifts_the_owners(bengine, make_server):
    name = _prepared_server(bengine, make_server, "bk-src", "198.19.21.11/18")
    base = bengine.spec(name).uid_base
    # What `setcap cap_net_raw+ep` by the guest's root leaves on disk (busybox has no setcap).
    set_upper_xattr(_image(bengine, name), "root/data/a", "security.capability", file_caps_v3(1 << CAP_NET_RAW, base))
    before = upper_tree(_image(bengine, name))
    assert before["root/data/a"]["xattrs"]["security.capability"] == file_caps_v3(1 << CAP_NET_RAW, base).hex()
    info = bengine.backup_create(name)
    other = make_server("bk-dst", "198.19.21.12/18", start=False)
    delta = bengine.spec(other).uid_base - bengine.spec(name).uid_base
    assert delta != 0
    bengine.backup_restore(info.name, other)
    wait_for_http("198.19.21.12")
    assert http_get("198.19.21.12")[1] == "restored page\n"
    listed = bengine.run(other, ["ls", "-ln", "/var/www/index.html", "/root/data/suid"]).stdout.splitlines()
    owners = {line.split()[-1]: line.split() for line in listed}
    assert owners["/var/www/index.html"][2:4] == ["33", "33"]
    assert owners["/root/data/suid"][2:4] == ["0", "33"]
    assert owners["/root/data/suid"][0] == "-rwsr-x---"  # a chown after the fact would have cleared it
    bengine.stop(other)
    after = upper_tree(_image(bengine, other))
    assert comparable(after) == comparable(shifted(before, delta))
    assert after["root/data/a"]["xattrs"]["security.capability"] == file_caps_v3(1 << CAP_NET_RAW, base + delta).hex()


# -- damaged and hostile archives ---------------------------------------------------------------


def _copy_as(bengine, info, stamp: str) -> str:
    """A copy of backup INFO under another name (same manifest), to damage."""
    from vservers.engine import backups

    name = f"{info.server}-{stamp}.tar.zst"
    shutil.copyfile(bengine.backup_path(info.name), bengine.backup_path(name))
    shutil.copyfile(backups.sidecar(bengine.backup_path(info.name)), backups.sidecar(bengine.backup_path(name)))
    return name


def _reseal(bengine, archive: str) -> None:
    """Make the manifest's checksum and size those of the archive as it is now (an attacker
    who can write the backup directory can do as much)."""
    from vservers.engine import backups

    path = bengine.backup_path(archive)
    side = backups.sidecar(path)
    data = json.loads(side.read_text())
    data["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    data["size_bytes"] = path.stat().st_size
    side.write_text(json.dumps(data))


@pytest.fixture
def stopped_pair(bengine, make_server):
    """A backup of a small stopped server, and the server (stopped) to restore into."""
    name = make_server("bk-target", "198.19.21.13/18")
    bengine.run(name, ["/bin/sh", "-c", "echo precious > /root/keep; head -c 300000 /dev/urandom > /root/noise"])
    bengine.stop(name)
    return bengine.backup_create(name), name


def _refused(bengine, archive: str, target: str, words: str) -> None:
    from vservers.engine import InvalidInput

    image = _image(bengine, target)
    before = _fingerprint(image)
    with pytest.raises(InvalidInput, match=words):
        bengine.backup_verify(archive)
    with pytest.raises(InvalidInput, match=words):
        bengine.backup_restore(archive, target)
    assert _fingerprint(image) == before
    assert bengine.status(target).state == "stopped"
    assert not (bengine.config.server_dir(target) / "disk.img.restore").exists()


def test_an_archive_with_one_byte_flipped_is_refused_and_the_target_untouched(bengine, stopped_pair):
    info, target = stopped_pair
    name = _copy_as(bengine, info, "20000101T000000Z")
    path = bengine.backup_path(name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(bengine, name, target, "damaged: its checksum does not match")
    _reseal(bengine, name)  # the checksum fits again: zstd's own check of the content finds it
    _refused(bengine, name, target, "damaged: zstd")


def test_a_truncated_archive_is_refused_and_the_target_untouched(bengine, stopped_pair):
    info, target = stopped_pair
    name = _copy_as(bengine, info, "20000101T000001Z")
    path = bengine.backup_path(name)
    os.truncate(path, path.stat().st_size * 2 // 3)
    _refused(bengine, name, target, "damaged: it has .* bytes, its manifest says")
    _reseal(bengine, name)
    _refused(bengine, name, target, "damaged: zstd")


def _hostile(bengine, info, stamp: str, add) -> str:
    """An archive like INFO's, with members ADD(tar) writes, compressed and sealed."""
    from vservers.engine import backups

    raw = io.BytesIO()
    base = info.manifest["uid_base"]
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        top = tarfile.TarInfo("upper")
        top.type, top.mode, top.uid, top.gid = tarfile.DIRTYPE, 0o755, base, base
        tar.addfile(top)
        add(tar, base)
    name = f"{info.server}-{stamp}.tar.zst"
    path = bengine.backup_path(name)
    path.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw.getvalue(), capture_output=True,
                                    check=True).stdout)
    side = json.loads(backups.sidecar(bengine.backup_path(info.name)).read_text())
    backups.sidecar(path).write_text(json.dumps(side))
    _reseal(bengine, name)
    return name


def _file(name: str, base: int, data: bytes = b"x", **changes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.uid, member.gid = len(data), 0o644, base, base
    for key, value in changes.items():
        setattr(member, key, value)
    return member, io.BytesIO(data)


HOSTILE = {
    "dotdot": (lambda tar, b: tar.addfile(*_file("upper/../../../../tmp/evil", b)), "'\\.\\.' in its path"),
    "absolute": (lambda tar, b: tar.addfile(*_file("/tmp/evil", b)), "absolute path"),
    "outside-upper": (lambda tar, b: tar.addfile(*_file("work/evil", b)), "not a plain path inside upper/"),
    "through-a-link": (
        lambda tar, b: (tar.addfile(_file("upper/etc", b, type=tarfile.SYMTYPE, linkname="/etc", size=0)[0]),
                        tar.addfile(*_file("upper/etc/passwd", b))),
        "behind a symbolic link",
    ),
    "block-device": (
        lambda tar, b: tar.addfile(_file("upper/disk", b, type=tarfile.BLKTYPE, devmajor=8, devminor=0, size=0)[0]),
        "device file",
    ),
    "char-device": (
        lambda tar, b: tar.addfile(_file("upper/mem", b, type=tarfile.CHRTYPE, devmajor=1, devminor=1, size=0)[0]),
        "device file",
    ),
    "host-root-owner": (lambda tar, b: tar.addfile(*_file("upper/suid", b, uid=0, mode=0o4755)),
                        "has uid 0, outside the server's range"),
    "hard-link-out": (
        lambda tar, b: tar.addfile(_file("upper/shadow", b, type=tarfile.LNKTYPE, linkname="etc/shadow", size=0)[0]),
        "not a plain path inside upper/",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_member_is_refused_and_the_target_untouched(bengine, stopped_pair, kind):
    info, target = stopped_pair
    add, words = HOSTILE[kind]
    name = _hostile(bengine, info, f"20000101T0000{sorted(HOSTILE).index(kind):02d}Z", add)
    _refused(bengine, name, target, words)
    assert not Path("/tmp/evil").exists()


def test_archive_names_are_validated_everywhere(bengine):
    from vservers.engine import InvalidInput

    for bad in ("../x-20261206T153012Z.tar.zst", "x-20261206T153012Z.tar.zst/..", "/etc/passwd",
                "x.tar.zst", "X-20261206T153012Z.tar.zst", "x-20261206T153012Z.tar.gz"):
        for call in (bengine.backup_path, bengine.backup_verify, bengine.backup_delete,
                     lambda a: bengine.backup_restore(a, "nobody"), lambda a: bengine.backup_push(a, "/tmp")):
            with pytest.raises(InvalidInput, match="invalid backup name"):
                call(bad)


def test_delete_removes_a_backup_and_a_missing_one_succeeds(bengine, stopped_pair):
    info, _target = stopped_pair
    bengine.backup_delete(info.name)
    bengine.backup_delete(info.name)
    assert bengine.backup_list() == []
    assert not bengine.backup_path(info.name).exists()


# -- a full backup directory ----------------------------------------------------------------------


def test_a_full_backup_directory_fails_readably_and_keeps_the_earlier_backups(engine, make_server, tmp_path):
    from vservers.engine import Engine, EngineError

    full = tmp_path / "small"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(full)], check=True)
    try:
        small = Engine(dataclasses.replace(engine.config, backup_dir_setting=full / "backups"))
        name = make_server("bk-full", "198.19.21.14/18")
        small.stop(name)
        earlier = small.backup_create(name)  # an idle server's files: a few KB
        small.start(name)
        small.run(name, ["/bin/sh", "-c", "head -c 3000000 /dev/urandom > /root/big"])  # cannot compress
        small.stop(name)
        with pytest.raises(EngineError, match="the backup directory is full: .*No space left on device"):
            small.backup_create(name)
        assert sorted(os.listdir(full / "backups")) == sorted([earlier.name, earlier.name[:-8] + ".json"])
        assert small.backup_list() == [earlier] and small.backup_verify(earlier.name) == earlier
    finally:
        subprocess.run(["umount", str(full)], check=True)


# -- kill -9 in the middle ------------------------------------------------------------------------


def _cli(env_extra: dict, *args: str) -> subprocess.Popen:
    from tests.leaks import TEST_ENV

    env = {**os.environ, **TEST_ENV, **env_extra}
    return subprocess.Popen([sys.executable, "-m", "vservers.engine.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])


def _until(condition, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def _stopped(pid: int) -> bool:
    from vservers.engine import procfs

    stat = procfs.read_stat(pid)
    return stat is not None and stat.state == "T"


def _kill_at(fault: str, backup_dir: Path, *args: str) -> None:
    """Run `vserver ARGS` until it stops itself at FAULT, then SIGKILL it."""
    proc = _cli({"VSERVER_TEST_FAULT": fault, "VSERVER_BACKUP_DIR": str(backup_dir)}, *args)
    try:
        _until(lambda: _stopped(proc.pid) or proc.poll() is not None, f"vserver to reach {fault}")
        assert proc.poll() is None, f"vserver ended before {fault}: {proc.stderr.read() if proc.stderr else ''}"
        proc.kill()
    finally:
        proc.kill()
        proc.wait()


def _nothing_held(bengine, name: str) -> None:
    """No mount and no loop device of the server's is left once the killed engine's helpers
    (tar, zstd) have seen their pipes close and ended."""
    from vservers.engine import loopdev

    server_dir = bengine.config.server_dir(name)
    _until(lambda: not loopdev.devices_for(server_dir), "the loop device to be released")
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(server_dir) in line]


def test_a_backup_killed_with_sigkill_leaves_no_backup_and_the_server_starts(bengine, make_server):
    name = make_server("bk-kill1", "198.19.21.15/18")
    bengine.run(name, ["/bin/sh", "-c", "head -c 4000000 /dev/urandom > /root/big && echo fine > /root/note"])
    bengine.stop(name)
    backup_dir = bengine.config.backup_dir
    _kill_at("backup:writing", backup_dir, "backup", "create", name)
    _nothing_held(bengine, name)
    assert [p.name for p in backup_dir.iterdir() if p.name.endswith(".partial")]  # what the kill left
    assert bengine.backup_list() == []
    bengine.start(name)
    assert bengine.run(name, ["cat", "/root/note"]).stdout == "fine\n"
    bengine.stop(name)
    info = bengine.backup_create(name)  # removes what the dead writer left
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted([info.name, info.name[:-8] + ".json"])


def test_a_restore_killed_with_sigkill_leaves_the_old_files_and_a_new_restore_works(bengine, make_server):
    name = make_server("bk-kill2", "198.19.21.16/18")
    bengine.run(name, ["/bin/sh", "-c", "echo backed-up > /root/note"])
    bengine.stop(name)
    info = bengine.backup_create(name)
    bengine.start(name)
    bengine.run(name, ["/bin/sh", "-c", "echo after > /root/note"])
    _kill_at("backup-restore:extracted", bengine.config.backup_dir, "backup", "restore", info.name, name)
    _nothing_held(bengine, name)
    assert bengine.status(name).state == "stopped"  # it was stopped for the swap that never came
    bengine.start(name)
    assert bengine.run(name, ["cat", "/root/note"]).stdout == "after\n"  # the old image, whole
    bengine.backup_restore(info.name, name)
    assert bengine.run(name, ["cat", "/root/note"]).stdout == "backed-up\n"
    assert not (bengine.config.server_dir(name) / "disk.img.restore").exists()


# -- the CLI and the second destination ------------------------------------------------------------


def _run_cli(backup_dir: Path, *args: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    proc = _cli({"VSERVER_BACKUP_DIR": str(backup_dir), **(extra or {})}, *args)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def private_sshd(tmp_path):
    """helpers.private_sshd with a client key of the test's own: the ssh options a push uses."""
    keys = tmp_path / "ssh"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client")], check=True)
    with helpers.private_sshd(keys / "sshd", (keys / "client.pub").read_text()) as sshd:
        options = (f"-i {keys / 'client'} -p {sshd['port']} -o StrictHostKeyChecking=no "
                   "-o UserKnownHostsFile=/dev/null")
        yield {"VSERVER_BACKUP_SSH_OPTIONS": options}


def test_the_cli_creates_lists_verifies_pushes_restores_and_deletes(bengine, make_server, tmp_path, private_sshd):
    backup_dir = bengine.config.backup_dir
    name = make_server("bk-cli", "198.19.21.17/18")
    bengine.run(name, ["/bin/sh", "-c", "echo via-cli > /root/note"])
    created = _run_cli(backup_dir, "backup", "create", name)  # running: through a snapshot
    assert created.returncode == 0, created.stderr
    listed = json.loads(_run_cli(backup_dir, "backup", "list", name, "--json").stdout)
    assert [row["name"] for row in listed] == [created.stdout.split()[0]]
    archive = listed[0]["name"]
    verified = _run_cli(backup_dir, "backup", "verify", archive)
    assert verified.returncode == 0 and "intact" in verified.stdout

    remote = tmp_path / "remote"
    remote.mkdir()
    pushed = _run_cli(backup_dir, "backup", "push", archive, f"root@127.0.0.1:{remote}", extra=private_sshd)
    assert pushed.returncode == 0, pushed.stderr
    local = tmp_path / "nfs"
    local.mkdir()
    assert _run_cli(backup_dir, "backup", "push", archive, str(local)).returncode == 0
    for copy in (remote, local):
        assert sorted(p.name for p in copy.iterdir()) == sorted([archive, archive[:-8] + ".json"])
        assert hashlib.sha256((copy / archive).read_bytes()).hexdigest() == listed[0]["sha256"]
    # The copy is a backup in its own right: a backup directory holding it restores from it.
    from vservers.engine import Engine

    elsewhere = Engine(dataclasses.replace(bengine.config, backup_dir_setting=remote))
    assert elsewhere.backup_verify(archive).sha256 == listed[0]["sha256"]

    bad = _run_cli(backup_dir, "backup", "push", archive, "root@127.0.0.1:/tmp/x;reboot")
    assert bad.returncode == 2 and "invalid backup destination" in bad.stderr
    bengine.run(name, ["/bin/sh", "-c", "echo changed > /root/note"])
    restored = _run_cli(backup_dir, "backup", "restore", archive, name)
    assert restored.returncode == 0, restored.stderr
    assert bengine.run(name, ["cat", "/root/note"]).stdout == "via-cli\n"
    assert _run_cli(backup_dir, "backup", "delete", archive, archive).returncode == 0
    assert json.loads(_run_cli(backup_dir, "backup", "list", "--json").stdout) == []
    refused = _run_cli(backup_dir, "backup", "verify", "../../etc/passwd")
    assert refused.returncode == 2 and "invalid backup name" in refused.stderr


# -- a running server, through a temporary snapshot ---------------------------------------------------


def test_a_running_server_is_backed_up_through_a_snapshot_and_keeps_running(bengine, make_server):
    name = make_server("bk-live", "198.19.21.18/18")
    bengine.run(name, ["/bin/sh", "-c", "echo live > /root/note && rm /etc/shells"])
    init = bengine.status(name).init_pid
    info = bengine.backup_create(name)
    status = bengine.status(name)
    assert status.state == "running" and status.init_pid == init
    assert bengine.snapshot_list(name) == []  # the temporary snapshot is gone
    wait_for_http("198.19.21.18")  # and it still serves
    other = make_server("bk-live2", "198.19.21.19/18", start=False)
    bengine.backup_restore(info.name, other)
    assert bengine.run(other, ["cat", "/root/note"]).stdout == "live\n"
    assert bengine.run(other, ["cat", "/etc/shells"]).returncode != 0


def test_a_users_snapshot_survives_backups_and_nobody_else_takes_a_backups_name(bengine, make_server):
    """A backup deletes every snapshot named like its own as a killed backup's leftover: a
    user may not take one so named (the engine and the CLI refuse), and a user's snapshot
    is kept through a running server's backup."""
    name = make_server("bk-names", "198.19.21.21/18")
    for refused in (lambda: bengine.snapshot_create(name, "backup-mine"),
                    lambda: bengine.snapshot_delete(name, "backup-mine"),
                    lambda: bengine.snapshot_restore(name, "backup-mine")):
        with pytest.raises(InvalidInput, match="kept for the snapshots backups take"):
            refused()
    cli = _run_cli(bengine.config.backup_dir, "snapshot", "create", name, "backup-mine")
    assert cli.returncode != 0 and "kept for the snapshots backups take" in cli.stderr
    bengine.snapshot_create(name, "before")
    bengine.backup_create(name)
    bengine.backup_create(name)  # the second one sweeps leftovers: "before" is not one
    assert [s.name for s in bengine.snapshot_list(name)] == ["before"]


def test_a_running_servers_backup_killed_with_sigkill_leaves_it_running_and_thawed(bengine, make_server):
    name = make_server("bk-kill3", "198.19.21.20/18")
    bengine.run(name, ["/bin/sh", "-c", "head -c 4000000 /dev/urandom > /root/big && echo fine > /root/note"])
    _kill_at("backup:writing", bengine.config.backup_dir, "backup", "create", name)
    from vservers.engine import loopdev

    snapshots = bengine.config.server_dir(name) / "snapshots"
    _until(lambda: not loopdev.devices_for(snapshots), "the snapshot's loop device to be released")
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(snapshots) in line]
    assert bengine.status(name).state == "running"
    assert bengine.run(name, ["cat", "/root/note"]).stdout == "fine\n"  # not frozen: it answers
    assert not bengine.cgroups.frozen(name)
    from vservers.engine import snapshots as snapshots_module

    left = [s.name for s in snapshots_module.listing(bengine, name)]
    assert len(left) == 1 and left[0].startswith("backup-")  # what the kill left...
    assert bengine.snapshot_list(name) == []  # ...which users are not shown
    assert bengine.backup_list() == []
    info = bengine.backup_create(name)  # removes the dead backup's snapshot and partial file
    assert bengine.snapshot_list(name) == [] and bengine.backup_list() == [info]
    assert sorted(p.name for p in bengine.config.backup_dir.iterdir()) == sorted([info.name, info.name[:-8] + ".json"])


# -- the last wall: tar unpacks in a namespace where only the new image is writable -------------------


def test_the_read_only_namespace_stops_a_write_outside_even_with_every_other_check_off(engine, tmp_path):
    """An archive member with an absolute path, unpacked by tar with its own defence switched
    off (-P) and without the engine's member checks: outside the engine's namespace it writes
    where it names (the control); in the namespace restore_into uses, every mount but the new
    image is read-only, and the write fails."""
    from vservers.engine import backups, loopdev
    from vservers.engine.lifecycle import make_disk_image

    victim = tmp_path / "victim"
    victim.mkdir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(*_file(str(victim / "evil"), 0, b"written outside\n"))
    archive = tmp_path / "evil.tar"
    archive.write_bytes(raw.getvalue())

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["tar", "-x", "-P", "-f", str(archive)], cwd=scratch, check=True, capture_output=True)
    assert (victim / "evil").read_bytes() == b"written outside\n"  # the attack works without the wall
    (victim / "evil").unlink()

    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    make_disk_image(image, 32 * 2**20, engine.config.uid_base)
    errors = os.memfd_create("errors")
    with open(archive, "rb") as src:
        pid = backups._spawn_mounted(image, mnt, ["tar", "-x", "-P", "-f", "-"], writable=True,
                                     stdin=src.fileno(), stdout=None, stderr=errors)
        _, status = os.waitpid(pid, 0)
    os.lseek(errors, 0, os.SEEK_SET)
    said = os.read(errors, 65536).decode()
    os.close(errors)
    assert os.waitstatus_to_exitcode(status) != 0
    assert "Read-only file system" in said
    assert not (victim / "evil").exists()
    _until(lambda: not loopdev.devices_for(tmp_path), "the image's loop device to be released")


def test_a_backup_larger_than_the_target_disk_is_refused_and_the_target_untouched(bengine, make_server):
    from vservers.engine import InvalidInput

    name = make_server("bk-big", "198.19.21.21/18")
    bengine.run(name, ["/bin/sh", "-c", "head -c 20000000 /dev/urandom > /root/big"])
    bengine.stop(name)
    info = bengine.backup_create(name)
    small = make_server("bk-small", "198.19.21.22/18", start=False, disk_bytes=16 * 2**20)
    before = _fingerprint(_image(bengine, small))
    with pytest.raises(InvalidInput, match="holds 19 MiB, more than the 16 MiB disk of 'bk-small'"):
        bengine.backup_restore(info.name, small)
    assert _fingerprint(_image(bengine, small)) == before
    assert not (bengine.config.server_dir(small) / "disk.img.restore").exists()
