"""Snapshots of a server's own disk: take, list, put back and delete them.

A server's own files are its disk image (`disk.img`, a sparse ext4 holding the overlay's
upper layer); the template below is shared and read-only, so a copy of that one image is the
whole of what makes the server itself. Snapshots live in the server's directory, so deleting
the server deletes them:

    <server_dir>/snapshots/<snap>/disk.img        a sparse copy of the image
    <server_dir>/snapshots/<snap>/snapshot.json   when, of which template, what it cost

Taking one of a running server (the caller holds the server's lock):

1. freeze the server's cgroup: none of its processes runs, so none can change a file;
2. freeze its ext4 (FIFREEZE): the kernel writes everything out (data, journal, lazily
   initialised inode tables) and keeps it still, so the image is a clean filesystem that
   needs no journal replay;
3. copy the image sparse (`cp --reflink=auto --sparse=always`: a reflink where the host's
   filesystem has them, else only the image's data extents), bounded by COPY_LIMIT;
4. thaw the filesystem, then the cgroup, whatever happened in 2-3.

Crash safety. A snapshot is written to `snapshots/.tmp-<snap>` and renamed into place; a
delete renames to `.del-<snap>` before removing; any dot entry left there is a dead
operation's and the next snapshot operation removes it. While a server may be frozen or a
restore is half done, `snapshot-busy.json` in its directory says so: the next start, stop or
snapshot operation (`recover`) thaws what is frozen, or finishes the restore. The filesystem
freeze is held by a helper process that thaws as soon as its pipe from the engine closes, so
an engine killed with SIGKILL leaves no frozen filesystem behind.

Why a helper process for FIFREEZE: the server's ext4 is mounted only in the server's own
mount namespace. Mounting the same loop device again in a private namespace of a child gives
the same superblock (as disk.run_where_mounted does for resize2fs), and the ioctls on that
mount freeze and thaw the filesystem the guest uses.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import faults, loopdev, syscalls, templates, validate
from .errors import Conflict, EngineError, NotFound
from .lifecycle import SNAPSHOT_BUSY
from .state import fsync_path, read_json, write_json
from .syscalls import CLONE_NEWNS, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC

if TYPE_CHECKING:
    from .lifecycle import Engine

SNAPSHOTS = "snapshots"
IMAGE = "disk.img"
META = "snapshot.json"
BUSY = SNAPSHOT_BUSY  # lifecycle looks for it before it imports this module
RESTORE_TMP = ".disk.img.restore"
# The longest a running server stays frozen for the copy of its image; past it the copy is
# killed, the server thawed and the snapshot fails. A sparse copy of this host's images runs
# at several hundred MB/s (bench/snapshots.py), so this is room for gigabytes of data.
COPY_LIMIT = 120.0
# How long the kernel may take to write out and freeze the filesystem (FIFREEZE syncs it).
FS_FREEZE_TIMEOUT = 60.0
# Free space the node keeps beyond a snapshot's own blocks, so a snapshot never fills it.
SPACE_MARGIN = 64 * 2**20
# _IOWR('X', 119, int) and _IOWR('X', 120, int) from linux/fs.h.
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a server's disk."""

    name: str
    created: float  # epoch seconds
    size_bytes: int  # blocks allocated on the node (what counts against quota)
    apparent_bytes: int
    template: str
    template_version: str
    freeze_seconds: float | None  # None when the server was stopped
    copy_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- paths ------------------------------------------------------------------------------------


def _snapshots_dir(engine: Engine, name: str) -> Path:
    return engine._dir(name) / SNAPSHOTS


def image(engine: Engine, name: str, snap: str) -> Path:
    """The image of snapshot SNAP of server NAME (NotFound if there is none)."""
    engine.spec(name)
    path = _snapshots_dir(engine, name) / validate.snapshot_name(snap)
    if not (path / META).is_file():
        raise NotFound(f"server {name!r} has no snapshot {snap!r}")
    return path / IMAGE


def _info(path: Path) -> SnapshotInfo:
    meta = read_json(path / META) or {}
    st = os.stat(path / IMAGE)
    return SnapshotInfo(
        name=path.name,
        created=float(meta["created"]),
        size_bytes=st.st_blocks * 512,
        apparent_bytes=st.st_size,
        template=str(meta["template"]),
        template_version=str(meta["template_version"]),
        freeze_seconds=meta.get("freeze_seconds"),
        copy_seconds=float(meta["copy_seconds"]),
    )


def listing(engine: Engine, name: str) -> list[SnapshotInfo]:
    """The server's snapshots, oldest first."""
    engine.spec(name)
    base = _snapshots_dir(engine, name)
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        if entry.name.startswith(".") or not (entry / META).is_file():
            continue  # half written or being removed
        try:
            found.append(_info(entry))
        except FileNotFoundError:
            continue  # deleted meanwhile
    return sorted(found, key=lambda info: (info.created, info.name))


# -- take -------------------------------------------------------------------------------------


def _auto_name(base: Path) -> str:
    stem = time.strftime("s%Y%m%d-%H%M%S", time.gmtime())
    name, n = stem, 1
    while (base / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def create(engine: Engine, name: str, snap: str | None) -> SnapshotInfo:
    """Take snapshot SNAP (a name from the UTC time if None) of server NAME; the caller holds
    the server's lock."""
    spec = engine.spec(name)
    server_dir = engine._dir(name)
    base = server_dir / SNAPSHOTS
    base.mkdir(mode=0o700, exist_ok=True)
    snap = _auto_name(base) if snap is None else validate.snapshot_name(snap)
    final = base / snap
    if final.exists():
        raise Conflict(f"server {name!r} already has a snapshot {snap!r}")
    source = server_dir / IMAGE
    _check_space(base, source, name)
    tmp = base / f".tmp-{snap}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        init_pid = engine._running_init(name)
        freeze_seconds: float | None = None
        if init_pid is None:
            copy_seconds = _copy(source, tmp / IMAGE, None, name)
        else:
            runtime = engine._runtime(name)
            if runtime is None or not runtime.loop_device:
                raise EngineError(f"the loop device of running server {name!r} is not recorded")
            freeze_seconds, copy_seconds = _copy_frozen(engine, name, runtime.loop_device, source, tmp / IMAGE)
        # After the thaw: making the copy durable is no reason to keep the server still.
        fsync_path(tmp / IMAGE)
        write_json(tmp / META, {
            "created": time.time(),
            "template": spec.template,
            "template_version": spec.template_version,
            "freeze_seconds": freeze_seconds,
            "copy_seconds": copy_seconds,
        })
        faults.checkpoint("snapshot", "copied")
        os.rename(tmp, final)
        fsync_path(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _info(final)


def _check_space(base: Path, source: Path, name: str) -> None:
    needed = os.stat(source).st_blocks * 512
    st = os.statvfs(base)
    free = st.f_bavail * st.f_frsize
    if free < needed + SPACE_MARGIN:
        raise Conflict(
            f"not enough free space on the node for a snapshot of {name!r}: it needs "
            f"{_mib(needed + SPACE_MARGIN)}, {_mib(free)} is free"
        )


def _copy_frozen(engine: Engine, name: str, device: str, source: Path, target: Path) -> tuple[float, float]:
    """Copy SOURCE, the image of running server NAME on loop DEVICE, to TARGET with its
    processes and filesystem frozen; returns (seconds frozen, seconds copying).

    The freeze helper mounts the filesystem before anything is frozen, and a first freeze
    and thaw of the filesystem alone, with the server's processes running, writes out what
    is dirty and checkpoints the journal (about 40 ms here, with the loop device's flush to
    the host's disk): the freeze with every process stopped then has next to nothing left
    to write, so the server stands still only for the cgroup freeze, the copy and the thaws."""
    busy = engine._dir(name) / BUSY
    write_json(busy, {"freeze": target.parent.name})
    thawed = False
    try:
        # Held open: the device cannot be freed and handed to another image meanwhile.
        with loopdev.held(device, source), FilesystemFreezer(device, engine._dir(name) / "disk") as fs:
            fs.freeze()
            fs.thaw()
            started = time.monotonic()
            try:
                engine.cgroups.freeze(name)
                fs.freeze()
                faults.checkpoint("snapshot", "frozen")
                copy_seconds = _copy(source, target, COPY_LIMIT, name)
            finally:
                try:
                    fs.thaw()
                finally:
                    engine.cgroups.thaw(name)
                    frozen = time.monotonic() - started
                    thawed = True
    except OSError as exc:
        raise EngineError(f"cannot freeze the disk of {name!r}: {exc.strerror or exc}") from exc
    finally:
        if thawed:  # else the note stays, and the next operation thaws what is left
            busy.unlink(missing_ok=True)
    return frozen, copy_seconds


def _copy(source: Path, target: Path, limit: float | None, name: str) -> float:
    """Copy SOURCE to TARGET keeping holes; returns the seconds it took.

    coreutils' cp does what we want in one argument list: FICLONE (a reflink, no data copied)
    where the filesystem has it, else copy_file_range over the data extents it finds with
    SEEK_DATA/SEEK_HOLE, writing holes as holes; rewriting that by hand gains nothing."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["cp", "--reflink=auto", "--sparse=always", "--", str(source), str(target)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=limit,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(
            f"copying the disk of {name!r} took longer than {limit:g} s: snapshot abandoned, server thawed"
        ) from None
    if result.returncode != 0:
        raise EngineError(f"copying the disk of {name!r} failed: {result.stderr.strip()}")
    return time.monotonic() - started


# -- the filesystem freeze ----------------------------------------------------------------------


class FilesystemFreezer:
    """FIFREEZE of the ext4 on loop DEVICE, through a child that mounts it on MOUNT_DIR in a
    private mount namespace when the context is entered (before anything is frozen), freezes
    it on freeze() and thaws it on thaw(), when the context ends, or when this process dies
    (its pipe from us reaches end of file, whatever killed us)."""

    def __init__(self, device: str, mount_dir: Path) -> None:
        self.device, self.mount_dir = device, mount_dir
        self.pid = self.status = self.command = -1
        self.frozen = False

    def __enter__(self) -> FilesystemFreezer:
        self.pid, self.status, self.command = _spawn_fs_helper(self.device, self.mount_dir)
        self._expect("R", "mount", FS_FREEZE_TIMEOUT)
        return self

    def freeze(self) -> None:
        os.write(self.command, b"f")
        self.frozen = True
        self._expect("F", "freeze", FS_FREEZE_TIMEOUT)

    def thaw(self) -> None:
        if not self.frozen:
            return
        os.write(self.command, b"t")
        self._expect("T", "thaw", FS_FREEZE_TIMEOUT)
        self.frozen = False

    def __exit__(self, *exc_info) -> None:
        frozen, self.frozen = self.frozen, False
        os.close(self.command)  # end of file: the child thaws (whatever it holds) and exits
        try:
            got = _read_status(self.status, FS_FREEZE_TIMEOUT)
            # A helper that never froze (it failed, and said why) has nothing to thaw.
            if got != "T" and frozen:
                raise EngineError(f"cannot thaw the filesystem on {self.device}: {got[1:] or 'the helper failed'}")
        finally:
            os.close(self.status)
            _reap(self.pid)

    def _expect(self, answer: str, what: str, timeout: float) -> None:
        got = _read_status(self.status, timeout)
        if got != answer:
            raise EngineError(f"cannot {what} the filesystem on {self.device}: {got[1:] or 'the helper failed'}")


def thaw_filesystem(device: str, mount_dir: Path) -> None:
    """Thaw the ext4 on loop DEVICE if it is frozen (one left so by a helper killed too)."""
    with FilesystemFreezer(device, mount_dir):
        pass  # the helper's FITHAW on leaving is the whole point; EINVAL (not frozen) is fine


def _spawn_fs_helper(device: str, mount_dir: Path) -> tuple[int, int, int]:
    """Fork the helper; returns (its pid, our end of its status pipe, our end of its command
    pipe). It answers "R" once mounted, "F" once frozen (after we send "f"), "T" once thawed
    (after "t", and once more when our end of the command pipe closes, before it exits),
    "E<reason>" on failure."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    command_r, command_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its pipe and exits
        try:
            os.close(status_r)
            os.close(command_w)
            # The server's lock among them: a helper thawing after its engine was killed must
            # not keep the next operation (or the reconcile's recover) out.
            syscalls.close_fds_except(status_w, command_r)
            syscalls.unshare(CLONE_NEWNS)
            # Private first: the mount below must not propagate back into the host's namespace.
            syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
            syscalls.mount(device, mount_dir, "ext4", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            fd = os.open(mount_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.write(status_w, b"R")
            while True:
                command = os.read(command_r, 1)  # b"": end of file, the engine is done or gone
                if command == b"f":
                    fcntl.ioctl(fd, FIFREEZE, 0)
                    os.write(status_w, b"F")
                    continue
                try:
                    fcntl.ioctl(fd, FITHAW, 0)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # EINVAL: it was not frozen
                        raise
                os.write(status_w, b"T")
                if not command:
                    os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the engine
            try:
                os.write(status_w, f"E{exc}".encode()[:500])
            finally:
                os._exit(1)
    os.close(status_w)
    os.close(command_r)
    return pid, status_r, command_w


def _read_status(fd: int, timeout: float) -> str:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return "Eno answer from the freeze helper"
    return os.read(fd, 600).decode(errors="replace")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# -- put back -----------------------------------------------------------------------------------


def restore(engine: Engine, name: str, snap: str) -> None:
    """Put snapshot SNAP back as server NAME's disk; the server is stopped and left stopped
    (the engine starts it). The caller holds the server's lock.

    1. check the snapshot and its template version are there;
    2. stop the server; note the restore in snapshot-busy.json;
    3. copy the snapshot's image beside disk.img and rename it over: at every instant one
       whole image is in place, and the snapshot stays for another restore;
    4. record the snapshot's template version in config.json; drop the note.
    A crash anywhere after 2 leaves the note, and the next start, stop or snapshot operation
    does 3-4 again from the start."""
    validate.snapshot_name(snap)
    path = _snapshots_dir(engine, name) / snap
    if not (path / META).is_file():
        raise NotFound(f"server {name!r} has no snapshot {snap!r}")
    meta = read_json(path / META) or {}
    try:
        templates.get(engine.config, meta["template"], meta["template_version"])
    except NotFound:
        raise Conflict(
            f"snapshot {snap!r} of {name!r} was taken on template {meta['template']} version "
            f"{meta['template_version']}, which is no longer installed"
        ) from None
    engine._stop_locked(name, timeout=10.0)
    write_json(engine._dir(name) / BUSY, {"restore": snap})
    _finish_restore(engine, name, snap)


def _finish_restore(engine: Engine, name: str, snap: str) -> None:
    from .lifecycle import DISK_GROW_PENDING

    server_dir = engine._dir(name)
    busy = server_dir / BUSY
    path = server_dir / SNAPSHOTS / snap
    meta = read_json(path / META)
    if meta is None:  # nothing to put back any more: the server keeps the disk it has
        busy.unlink(missing_ok=True)
        return
    tmp = server_dir / RESTORE_TMP
    tmp.unlink(missing_ok=True)
    _copy(path / IMAGE, tmp, None, name)
    fsync_path(tmp)
    faults.checkpoint("snapshot-restore", "copied")
    os.replace(tmp, server_dir / IMAGE)
    fsync_path(server_dir)
    faults.checkpoint("snapshot-restore", "swapped")
    spec = engine.spec(name)
    data = spec.to_json()
    data.update(template=meta["template"], template_version=meta["template_version"])
    write_json(server_dir / "config.json", data)
    if (server_dir / IMAGE).stat().st_size < spec.limits.disk_bytes:
        # The disk grew since the snapshot: the next start grows the old image again.
        write_json(server_dir / DISK_GROW_PENDING, {"disk_bytes": spec.limits.disk_bytes})
    (server_dir / "usage.json").unlink(missing_ok=True)  # the old disk's figure
    busy.unlink()


# -- delete -------------------------------------------------------------------------------------


def delete(engine: Engine, name: str, snap: str) -> None:
    """Delete snapshot SNAP of server NAME; one that is not there is already deleted."""
    engine.spec(name)
    validate.snapshot_name(snap)
    base = _snapshots_dir(engine, name)
    path = base / snap
    if not path.exists():
        return
    doomed = base / f".del-{snap}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(path, doomed)  # gone from the listing at once, even if the removal is cut short
    shutil.rmtree(doomed)


# -- after a crash ------------------------------------------------------------------------------


def recover(engine: Engine, name: str) -> bool:
    """Finish what a snapshot operation killed midway left of server NAME: thaw its cgroup
    and filesystem, or finish a restore. Returns whether there was anything (a stat when
    not). The caller holds the server's lock."""
    server_dir = engine._dir(name)
    try:
        busy = read_json(server_dir / BUSY)
    except NotADirectoryError:
        return False
    if busy is None:
        return False
    sweep(engine, name)
    if "restore" in busy:
        _finish_restore(engine, name, str(busy["restore"]))
        return True
    engine.cgroups.thaw(name)
    runtime = engine._runtime(name)
    if engine._running_init(name) is not None and runtime is not None and runtime.loop_device:
        try:
            with loopdev.held(runtime.loop_device, server_dir / IMAGE):
                thaw_filesystem(runtime.loop_device, server_dir / "disk")
        except OSError:
            pass  # the device went with the server: nothing of it is frozen any more
    (server_dir / BUSY).unlink(missing_ok=True)
    return True


def sweep(engine: Engine, name: str) -> None:
    """Remove what dead snapshot operations half wrote (the caller holds the lock)."""
    server_dir = engine._dir(name)
    (server_dir / RESTORE_TMP).unlink(missing_ok=True)
    base = server_dir / SNAPSHOTS
    if base.is_dir():
        for entry in base.iterdir():
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)


# -- small things -------------------------------------------------------------------------------


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"
