"""Backups: a server's own files as a zstd-compressed tar archive in the backup directory.

A server's own files are the overlay's upper layer inside its disk image; the template below
is shared and never backed up. An archive holds that `upper/` tree only, written by GNU tar
with numeric owners, extended attributes (overlay keeps an opaque directory as
`trusted.overlay.opaque` and a deleted template file as a 0/0 character device, the
"whiteout": both must come back) and sparse files, compressed by `zstd`.

Beside each archive `NAME.tar.zst` lies `NAME.json`: the manifest (template, limits,
addresses, uid base, counts) and the archive's sha256. The manifest sits beside the archive
and not inside it because the checksum cannot be inside the file it sums, and because
listing backups then reads small files instead of decompressing archives. The JSON is written
last: an archive without one is a half-made backup, never listed, removed by the next create.

Restoring treats an archive as untrusted input (a backup directory may be NFS, an archive may
come back from the second destination): it is verified in full before the target is touched
(checksum, a complete decompression and listing by the same GNU tar that will extract it,
every member checked: relative, no `..`, inside `upper/`, no path through a symbolic link of
the archive, no device but a whiteout, owners inside the server's uid range). Then tar unpacks
it into a fresh image, in a private mount namespace where every other mount is read-only, so
whatever a member tries it can only write into that new filesystem. The new image is mounted
*idmapped* for tar: owners from the manifest's uid range land on disk in the target's, and the
kernel moves the namespace root of file capabilities with them (no chown walk after the fact,
which would clear set-uid bits and capabilities). Only a complete, checked image replaces the old one,
by rename.

Python's tarfile (3.11.2 here) has no extraction filters and is never used to unpack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import faults, loopdev, syscalls, userns, validate
from .errors import EngineError, InvalidInput, NotFound
from .spec import ID_RANGE_SIZE, ServerSpec
from .state import fsync_path, locked, read_json, write_json

FORMAT = 1
SUFFIX = ".tar.zst"
ARCHIVE_NAME = re.compile(r"(?P<server>[a-z][a-z0-9-]{0,31})-(?P<stamp>\d{8}T\d{6}Z)\.tar\.zst")
STAMP = "%Y%m%dT%H%M%SZ"
TOP = "upper"  # the one tree an archive holds: the overlay's upper dir
CHUNK = 1 << 20
PIPE_BYTES = 1 << 20
PROGRESS_EVERY = 0.25  # seconds between progress calls
ZSTD_LEVEL = "-3"
# Tar's listing in a form that can be parsed whatever the names: C-quoted, numeric owners,
# the C locale (other bytes as octal escapes).
TAR_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

Progress = Callable[[int, int], None]
RESTORE_IMAGE = "disk.img.restore"  # the new image while it is filled; only a whole one is renamed
# The snapshot a running server is read through: backup-20261206-153012 (no user may take one).
TEMP_SNAPSHOT = validate.BACKUP_SNAPSHOT_PREFIX

if TYPE_CHECKING:
    from .lifecycle import Engine


@dataclass(frozen=True)
class BackupInfo:
    """One backup archive of a server and what its manifest says."""

    name: str  # file name in the backup dir, e.g. "vs-0123abcd4567-20261206T153012Z.tar.zst"
    server: str  # the engine name it was taken of
    created: float  # epoch seconds
    size_bytes: int
    sha256: str  # of the archive file
    manifest: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- names and the directory ----------------------------------------------------------------


def check_name(archive: str) -> str:
    """ARCHIVE if it is a backup's file name (no path), else InvalidInput."""
    if not isinstance(archive, str) or not ARCHIVE_NAME.fullmatch(archive):
        raise InvalidInput(
            f"invalid backup name {archive!r}: expected SERVER-YYYYMMDDTHHMMSSZ{SUFFIX}, without a directory"
        )
    return archive


def path_of(backup_dir: Path, archive: str) -> Path:
    return backup_dir / check_name(archive)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name[: -len(SUFFIX)] + ".json")


def ensure_dir(backup_dir: Path) -> None:
    backup_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(backup_dir, 0o700)  # archives hold every file of a server, secrets included


def new_name(backup_dir: Path, server: str, now: float | None = None) -> str:
    """A free archive name for SERVER at NOW (UTC seconds); a later second if that one is taken."""
    when = int(time.time() if now is None else now)
    while True:
        stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).strftime(STAMP)
        name = f"{server}-{stamp}{SUFFIX}"
        path = backup_dir / name
        if not (path.exists() or sidecar(path).exists() or path.with_name(name + ".partial").exists()):
            return name
        when += 1


def read_info(path: Path) -> BackupInfo | None:
    """The backup at PATH, or None if it is not a complete one (no archive or no manifest)."""
    try:
        data = read_json(sidecar(path))
    except (ValueError, OSError):
        return None
    if data is None or not path.is_file():
        return None
    try:
        manifest = data["manifest"]
        created = datetime.datetime.fromisoformat(manifest["created"]).timestamp()
        return BackupInfo(name=path.name, server=str(manifest["server"]), created=created,
                          size_bytes=int(data["size_bytes"]), sha256=str(data["sha256"]), manifest=manifest)
    except (KeyError, TypeError, ValueError):
        return None


def list_backups(backup_dir: Path, server: str | None = None) -> list[BackupInfo]:
    """Every complete backup (of SERVER), newest first."""
    try:
        entries = os.listdir(backup_dir)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        match = ARCHIVE_NAME.fullmatch(entry)
        if match is None or (server is not None and match["server"] != server):
            continue
        info = read_info(backup_dir / entry)
        if info is not None and (server is None or info.server == server):
            found.append(info)
    return sorted(found, key=lambda i: (i.created, i.name), reverse=True)


def delete(backup_dir: Path, archive: str) -> None:
    """Remove a backup; the manifest first, so a crash leaves no listed half. Missing: done."""
    path = path_of(backup_dir, archive)
    sidecar(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    fsync_path(backup_dir)


def remove_abandoned(backup_dir: Path) -> list[Path]:
    """Remove partial archives and archives without a manifest that no living writer holds
    (the writer keeps an flock on its file until the manifest is written)."""
    removed: list[Path] = []
    try:
        entries = os.listdir(backup_dir)
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = backup_dir / entry
        if entry.endswith(SUFFIX + ".partial"):
            pass
        elif ARCHIVE_NAME.fullmatch(entry) and not sidecar(path).exists():
            pass
        else:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            if entry.endswith(".partial") or not sidecar(path).exists():
                path.unlink(missing_ok=True)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


# -- create ---------------------------------------------------------------------------------


def create(backup_dir: Path, spec: ServerSpec, image: Path, mount_dir: Path,
           progress: Progress | None = None) -> BackupInfo:
    """Archive the upper layer in IMAGE (a stopped server's disk, or a snapshot of it) into the
    backup directory; MOUNT_DIR is an empty directory to mount IMAGE on privately.

    1. the image is mounted read-only in a mount namespace of tar's own (the mount and its
       loop device end with tar, whatever happens to us);
    2. tar's output is counted (progress) and piped through zstd into NAME.tar.zst.partial,
       hashed on the way, under an flock that tells a live writer from a dead one;
    3. fsync, rename to NAME.tar.zst, then NAME.json (the manifest) written atomically: from
       that moment it is a backup.
    """
    ensure_dir(backup_dir)
    remove_abandoned(backup_dir)
    name = new_name(backup_dir, spec.name)
    final = backup_dir / name
    partial = final.with_name(name + ".partial")
    total = max(_allocated(image), 1)
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = False
    try:
        digest, size, counted, files = _write_archive(fd, image, mount_dir, total, progress)
        os.fsync(fd)
        os.replace(partial, final)
        fsync_path(backup_dir)
        manifest = {
            "format": FORMAT,
            "server": spec.name,
            "hostname": spec.hostname,
            "template": spec.template,
            "template_version": spec.template_version,
            "limits": dataclasses.asdict(spec.limits),
            "addresses": list(spec.addresses),
            "uid_base": spec.uid_base,
            "files": files,
            "bytes": counted,
            "created": created.isoformat(),
        }
        write_json(sidecar(final), {"format": FORMAT, "sha256": digest, "size_bytes": size, "manifest": manifest})
        fsync_path(backup_dir)
        done = True
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise EngineError(f"the backup directory is full: {backup_dir} ({exc.strerror}); "
                              f"the backup of {spec.name!r} was not kept") from None
        raise EngineError(f"cannot write the backup of {spec.name!r} to {backup_dir}: {exc}") from None
    finally:
        if not done:
            side = sidecar(final)
            for path in (partial, final, side, side.with_name(f".{side.name}.{os.getpid()}.tmp")):
                path.unlink(missing_ok=True)  # the last: write_json's, if it failed half-way
        os.close(fd)
    if progress is not None:
        progress(total, total)
    info = read_info(final)
    assert info is not None
    return info


def _write_archive(out_fd: int, image: Path, mount_dir: Path, total: int,
                   progress: Progress | None) -> tuple[str, int, int, int]:
    """tar | zstd > OUT_FD, hashed on the way; returns (sha256, compressed size, tar bytes,
    members). tar feeds zstd directly: passing the stream through Python cost about a tenth
    of the throughput (bench/backups.py); progress is what zstd has read so far
    (/proc/PID/io), the stream's size tar's own total."""
    tar_r, tar_w = os.pipe2(os.O_CLOEXEC)
    index_r, index_w = os.pipe2(os.O_CLOEXEC)
    errors = _memfd("tar-errors")
    zstd_errors = _memfd("zstd-errors")
    argv = [
        "tar", "--create", "--file=-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sparse",
        "--one-file-system", "--format=posix", "--totals", "--verbose", "--index-file=/dev/fd/3", TOP,
    ]
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = _spawn_mounted(image, mount_dir, argv, writable=False, stdin=null, stdout=tar_w, stderr=errors,
                             fd3=index_w)
    finally:
        os.close(null)
        os.close(tar_w)
        os.close(index_w)
    zstd = None
    counter = _LineCounter(index_r)
    try:
        _widen(tar_r)
        zstd = subprocess.Popen(["zstd", "-q", ZSTD_LEVEL, "-T0", "-c"], stdin=tar_r, stdout=subprocess.PIPE,
                                stderr=zstd_errors, env=TAR_ENV)
        assert zstd.stdout is not None
        _widen(zstd.stdout.fileno())
        digest = hashlib.sha256()
        size = 0
        last = time.monotonic()
        while chunk := zstd.stdout.read(CHUNK):
            digest.update(chunk)
            _write_all(out_fd, chunk)
            if size == 0:
                faults.checkpoint("backup", "writing")
            size += len(chunk)
            if progress is not None and time.monotonic() - last >= PROGRESS_EVERY:
                last = time.monotonic()
                progress(min(_bytes_read(zstd.pid), total), total)
        zstd_code = zstd.wait()
        tar_code = _wait(pid)
        pid = 0
        tar_said = _read_memfd(errors)
        if tar_code != 0:
            raise EngineError(f"tar could not read the server's files: {_tail(tar_said, tar_code)}")
        if zstd_code != 0:
            raise EngineError(f"zstd failed: {_tail(_read_memfd(zstd_errors), zstd_code)}")
        written = re.search(r"^Total bytes written: (\d+)", tar_said, re.MULTILINE)
        if written is None:
            raise EngineError(f"tar did not say how much it wrote: {_tail(tar_said, tar_code)}")
        return digest.hexdigest(), size, int(written[1]), counter.join()
    finally:
        if pid:
            _kill_wait(pid)
        if zstd is not None:
            _close_proc(zstd)
        counter.join()
        os.close(tar_r)
        os.close(errors)
        os.close(zstd_errors)


def _bytes_read(pid: int) -> int:
    """What process PID has read so far (rchar of /proc/PID/io); 0 if that cannot be read."""
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# -- verify ---------------------------------------------------------------------------------


@dataclass
class Listing:
    """What a full listing of an archive found."""

    members: int = 0
    uids: set[int] = dataclasses.field(default_factory=set)
    gids: set[int] = dataclasses.field(default_factory=set)


def verify(backup_dir: Path, archive: str) -> tuple[BackupInfo, Listing]:
    """Check a backup in full: manifest, checksum, and every member of the decompressed
    stream (see check_member). InvalidInput with the reason if anything is wrong."""
    path = path_of(backup_dir, archive)
    if not path.is_file():
        raise NotFound(f"no backup named {archive!r} in {backup_dir}")
    info = read_info(path)
    if info is None:
        raise InvalidInput(f"backup {archive!r} has no readable manifest ({sidecar(path).name})")
    if info.manifest.get("format") != FORMAT:
        raise InvalidInput(f"backup {archive!r} is of format {info.manifest.get('format')!r}, not {FORMAT}")
    try:
        base = int(info.manifest["uid_base"])
    except (KeyError, TypeError, ValueError):
        raise InvalidInput(f"the manifest of backup {archive!r} has no uid base") from None
    size = path.stat().st_size
    if size != info.size_bytes:
        raise InvalidInput(f"backup {archive!r} is damaged: it has {size} bytes, its manifest says "
                           f"{info.size_bytes} (truncated or changed)")
    digest = _sha256(path)
    if digest != info.sha256:
        raise InvalidInput(f"backup {archive!r} is damaged: its checksum does not match its manifest")
    listing = list_archive(path, base)
    return info, listing


def list_archive(path: Path, uid_base: int) -> Listing:
    """Decompress and list PATH in full with GNU tar, checking every member."""
    errors = _memfd("zstd-errors")
    tar_errors = _memfd("tar-errors")
    listing = Listing()
    checker = _MemberChecker(uid_base)
    try:
        with open(path, "rb") as src:
            zstd = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=src, stdout=subprocess.PIPE,
                                    stderr=errors, env=TAR_ENV)
        assert zstd.stdout is not None
        tar = None
        try:
            tar = subprocess.Popen(
                ["tar", "--list", "--file=-", "--verbose", "--numeric-owner", "--quoting-style=c", "--full-time",
                 "--xattrs", "--xattrs-include=*"],
                stdin=zstd.stdout, stdout=subprocess.PIPE, stderr=tar_errors, env=TAR_ENV,
            )
            zstd.stdout.close()
            assert tar.stdout is not None
            for raw in tar.stdout:
                checker.line(raw.rstrip(b"\n"))
            tar_code = tar.wait()
            zstd_code = zstd.wait()
        finally:  # both are done unless a member was refused: then they are killed
            if tar is not None:
                _close_proc(tar)
            _close_proc(zstd)
        if zstd_code != 0:
            raise InvalidInput(f"backup {path.name!r} is damaged: zstd: {_tail(_read_memfd(errors), zstd_code)}")
        if tar_code != 0:
            raise InvalidInput(f"backup {path.name!r} is damaged: tar: {_tail(_read_memfd(tar_errors), tar_code)}")
    finally:
        os.close(errors)
        os.close(tar_errors)
    listing.members, listing.uids, listing.gids = checker.members, checker.uids, checker.gids
    return listing


_MEMBER = re.compile(
    rb'(?P<type>.)(?P<perm>[-rwxsStT]{9})[ *+.]? +(?P<uid>\d+)/(?P<gid>\d+) +(?P<size>\d+|\d+,\d+) '
    rb'\S+ \S+ +"(?P<name>(?:[^"\\]|\\.)*)"(?: (?P<kind>->|link to) "(?P<target>(?:[^"\\]|\\.)*)")?'
)
_XATTR = re.compile(rb"  x: +\d+ (?P<name>.+)")


class _MemberChecker:
    """Checks tar's listing line by line: every member is a relative path inside `upper/` with
    no `..` or `.` part, none goes through a symbolic link of the archive, hard links point to
    members seen before, the only devices are overlay whiteouts (character 0,0), and owners
    lie in the uid range of the server the backup was taken of."""

    def __init__(self, uid_base: int) -> None:
        self.base = uid_base
        self.members = 0
        self.uids: set[int] = set()
        self.gids: set[int] = set()
        self.seen: set[str] = set()
        self.links: set[str] = set()

    def line(self, raw: bytes) -> None:
        if _XATTR.fullmatch(raw):
            return  # any attribute may come back: through overlay they reveal only the template
        match = _MEMBER.fullmatch(raw)
        if match is None:
            raise InvalidInput(f"the archive has an entry tar describes as {raw[:200].decode(errors='replace')!r}")
        name = self._name(_unquote(match["name"]))
        kind = match["type"].decode()
        self.members += 1
        if kind == "c":
            if match["size"] != b"0,0":
                raise InvalidInput(f"archive member {name!r} is a device file ({match['size'].decode()})")
        elif kind == "b":
            raise InvalidInput(f"archive member {name!r} is a device file")
        elif kind == "l":
            self.links.add(name)
        elif kind == "h":
            target = self._name(_unquote(match["target"] or b""))
            if target not in self.seen:
                raise InvalidInput(f"archive member {name!r} is a hard link to {target!r}, not an earlier member")
        elif kind not in "-dp":
            raise InvalidInput(f"archive member {name!r} is of a kind that is not restored ({kind!r})")
        whiteout = kind == "c"  # made by overlayfs as host root: owned by 0:0
        for label, value, found in (("uid", int(match["uid"]), self.uids), ("gid", int(match["gid"]), self.gids)):
            if not (self.base <= value < self.base + ID_RANGE_SIZE or whiteout and value == 0):
                raise InvalidInput(f"archive member {name!r} has {label} {value}, outside the server's range "
                                   f"{self.base}-{self.base + ID_RANGE_SIZE - 1}")
            found.add(value)
        self.seen.add(name)

    def _name(self, name: str) -> str:
        if name.startswith("/"):
            raise InvalidInput(f"archive member {name!r} has an absolute path")
        parts = name.rstrip("/").split("/")
        if ".." in parts:
            raise InvalidInput(f"archive member {name!r} has a '..' in its path")
        if parts[0] != TOP or "" in parts or "." in parts:
            raise InvalidInput(f"archive member {name!r} is not a plain path inside {TOP}/")
        clean = "/".join(parts)
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in self.links:
                raise InvalidInput(f"archive member {name!r} lies behind a symbolic link of the archive")
        return clean


_ESCAPES = {ord("n"): b"\n", ord("t"): b"\t", ord("r"): b"\r", ord("a"): b"\a", ord("b"): b"\b",
            ord("f"): b"\f", ord("v"): b"\v", ord("\\"): b"\\", ord('"'): b'"', ord("?"): b"?"}


def _unquote(quoted: bytes) -> str:
    """A name as tar's --quoting-style=c printed it, back to the file name it stands for."""
    out = bytearray()
    i = 0
    while i < len(quoted):
        byte = quoted[i]
        if byte != ord("\\"):
            out.append(byte)
            i += 1
            continue
        nxt = quoted[i + 1]
        if ord("0") <= nxt <= ord("7"):
            digits = re.match(rb"[0-7]{1,3}", quoted[i + 1:i + 4])
            assert digits is not None
            out.append(int(digits.group(), 8) & 0xFF)
            i += 1 + len(digits.group())
        elif nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        else:
            raise InvalidInput(f"the archive lists a name tar escaped in an unknown way: {quoted[:200]!r}")
    if b"\0" in out:
        raise InvalidInput("an archive member's name holds a NUL byte")
    return os.fsdecode(bytes(out))


# -- restore --------------------------------------------------------------------------------


def restore_into(path: Path, info: BackupInfo, listing: Listing, image: Path, mount_dir: Path,
                 uid_base: int, progress: Progress | None = None) -> None:
    """Unpack the verified archive PATH into IMAGE (a fresh, empty server disk), its owners
    moved from the manifest's uid range to UID_BASE's; MOUNT_DIR is a directory to mount on.

    The archive is read once more and hashed as it goes: a file changed since verify() is
    refused before anything uses the image."""
    old_base = int(info.manifest["uid_base"])
    # Root (0) one to one as well: tar creates each file as root before giving it its owner,
    # and whiteouts stay root's.
    ns_fd = userns.create_mapping([(0, 0, 1), (uid_base, old_base, ID_RANGE_SIZE)])
    tar_r, tar_w = os.pipe2(os.O_CLOEXEC)
    errors = _memfd("tar-errors")
    argv = [
        "tar", "--extract", "--file=-", "--numeric-owner", "--same-owner", "--same-permissions", "--xattrs",
        "--xattrs-include=*", "--no-overwrite-dir",
    ]
    try:
        pid = _spawn_mounted(image, mount_dir, argv, writable=True, stdin=tar_r, stdout=None, stderr=errors,
                             idmap_fd=ns_fd)
    finally:
        os.close(tar_r)
        os.close(ns_fd)
    zstd = None
    pump = None
    total = max(info.size_bytes, 1)
    try:
        with open(path, "rb") as src:
            zstd = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE, stdout=tar_w,
                                    stderr=subprocess.PIPE, env=TAR_ENV)
            os.close(tar_w)
            tar_w = -1
            assert zstd.stdin is not None
            _widen(zstd.stdin.fileno())
            digest = hashlib.sha256()
            pump = _Pump(src.fileno(), zstd.stdin, total, progress, digest)
            pump.join()
        zstd_err = zstd.stderr.read().decode(errors="replace") if zstd.stderr else ""
        zstd_code = zstd.wait()
        tar_code = _wait(pid)
        pid = 0
        if pump.error is not None:
            raise EngineError(f"cannot pass the archive to zstd: {pump.error}")
        if digest.hexdigest() != info.sha256:
            raise InvalidInput(f"backup {path.name!r} changed while it was restored: its checksum does not match")
        if zstd_code != 0:
            raise InvalidInput(f"backup {path.name!r} is damaged: zstd: {_tail(zstd_err, zstd_code)}")
        if tar_code != 0:
            raise EngineError(f"tar could not restore {path.name!r}: {_tail(_read_memfd(errors), tar_code)}")
    finally:
        if tar_w >= 0:
            os.close(tar_w)
        if pid:
            _kill_wait(pid)
        if zstd is not None:
            _close_proc(zstd)
        os.close(errors)
    if progress is not None:
        progress(total, total)


# -- the engine's operations (Engine.backup_* delegate here) ------------------------------------


def backup_server(engine: Engine, name: str, progress: Progress | None = None) -> BackupInfo:
    """Back up server NAME.

    Stopped, its image is read under its lock. Running, it is read through a temporary
    snapshot (Engine.snapshot_create: the server is frozen only while its image is copied),
    archived without holding the server's lock, and deleted after. One backup of a server at
    a time (a lock of its own), and a temporary snapshot a killed backup left is deleted by
    the next one."""
    backup_dir = engine.config.backup_dir
    with locked(engine.config.root / "locks" / f"{validate.server_name(name)}.backup.lock"):
        from . import snapshots

        for snap in snapshots.listing(engine, name):
            if snap.name.startswith(TEMP_SNAPSHOT):
                engine._drop_snapshot(name, snap.name)
        with engine._lock(name):
            spec = engine.spec(name)
            engine._recover_snapshot(name)  # a killed snapshot restore is finished before reading
            if engine._running_init(name) is None:
                engine._clean_leftovers(name)  # a crashed run's loop device must not hold the image
                server_dir = engine._dir(name)
                return create(backup_dir, spec, server_dir / "disk.img", server_dir / "disk", progress)
        snap = engine._take_snapshot(name, time.strftime(f"{TEMP_SNAPSHOT}%Y%m%d-%H%M%S", time.gmtime()))
        try:
            image = engine.snapshot_image(name, snap.name)
            return create(backup_dir, spec, image, engine._dir(name) / "disk", progress)
        finally:
            with contextlib.suppress(EngineError):
                engine._drop_snapshot(name, snap.name)


def restore_server(engine: Engine, archive: str, name: str, progress: Progress | None = None):
    """Restore ARCHIVE into the existing server NAME and start it.

    1. verify the archive in full (nothing of NAME is touched before);
    2. under NAME's lock: unpack it into a new empty image beside the old one (the server may
       go on running meanwhile);
    3. stop the server, rename the new image over the old one (a crash before leaves the old
       image, after it the new whole one), start it.
    """
    from .lifecycle import STOP_TIMEOUT, make_disk_image

    backup_dir = engine.config.backup_dir
    info, listing = verify(backup_dir, archive)
    path = path_of(backup_dir, archive)
    with engine._lock(name):
        spec = engine.spec(name)
        if info.manifest.get("template") != spec.template:
            raise InvalidInput(f"backup {archive!r} is of a {info.manifest.get('template')!r} server; "
                               f"{name!r} runs {spec.template!r}")
        needed = int(info.manifest.get("bytes", 0))
        if needed > spec.limits.disk_bytes:
            raise InvalidInput(f"backup {archive!r} holds {needed / 2**20:.0f} MiB, more than the "
                               f"{spec.limits.disk_bytes / 2**20:.0f} MiB disk of {name!r}")
        server_dir = engine._dir(name)
        new_image = server_dir / RESTORE_IMAGE
        new_image.unlink(missing_ok=True)  # left by a restore that was killed
        try:
            make_disk_image(new_image, spec.limits.disk_bytes, spec.uid_base)
            restore_into(path, info, listing, new_image, server_dir / "disk", spec.uid_base, progress)
            fsync_path(new_image)
            engine._stop_locked(name, STOP_TIMEOUT)
            faults.checkpoint("backup-restore", "extracted")
            os.replace(new_image, server_dir / "disk.img")
            fsync_path(server_dir)
        finally:
            new_image.unlink(missing_ok=True)
        (server_dir / "usage.json").unlink(missing_ok=True)  # the old files' figure
        engine._start_locked(spec)
    return engine.status(name, with_addresses=False)


# -- the second destination -----------------------------------------------------------------

_DESTINATION = re.compile(r"(?P<user>[a-z_][a-z0-9_-]{0,31})@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):"
                          r"(?P<path>/[A-Za-z0-9._/-]*)")


def check_destination(destination: str) -> str:
    """DESTINATION if it is USER@HOST:/ABSOLUTE/PATH or an absolute local directory."""
    if isinstance(destination, str) and destination.startswith("/"):
        if ".." in destination.split("/") or not re.fullmatch(r"/[A-Za-z0-9._/-]*", destination):
            raise InvalidInput(f"invalid backup destination {destination!r}")
        return destination
    if not isinstance(destination, str) or not _DESTINATION.fullmatch(destination) \
            or ".." in destination.split(":", 1)[1].split("/"):
        raise InvalidInput(f"invalid backup destination {destination!r}: use USER@HOST:/PATH or /PATH")
    return destination


def push(path: Path, destination: str, ssh_options: tuple[str, ...] = ()) -> None:
    """Copy the backup PATH and its manifest to DESTINATION with rsync (over SSH for a remote
    one, with SSH_OPTIONS): --partial keeps a cut transfer for the next try, --checksum
    compares content rather than size and time. The manifest goes last, so that at the
    destination, too, an archive without one is an unfinished copy."""
    destination = check_destination(destination)
    if read_info(path) is None:
        raise NotFound(f"no complete backup {path.name!r}")
    target = destination.rstrip("/") + "/"
    base = ["rsync", "--checksum", "--partial", "--times", "--chmod=F600", "--protect-args"]
    if not destination.startswith("/"):
        # rsync splits -e on spaces itself (no shell); validate.ssh_options keeps every word plain.
        base += ["-e", " ".join(["ssh", "-o", "BatchMode=yes", *validate.ssh_options(ssh_options)])]
    for item in (path, sidecar(path)):
        argv = [*base, "--", str(item), target]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise EngineError(f"{exc.filename} is not installed (Debian packages rsync, openssh-client)") from None
        if result.returncode != 0:
            raise EngineError(f"rsync to {destination} failed: {_tail(result.stderr, result.returncode)}")


# -- processes and pipes ----------------------------------------------------------------------


def _spawn_mounted(image: Path, mount_dir: Path, argv: list[str], *, writable: bool, stdin: int,
                   stdout: int | None, stderr: int, fd3: int | None = None, idmap_fd: int | None = None) -> int:
    """Fork ARGV in a mount namespace of its own where IMAGE is mounted on MOUNT_DIR (its
    working directory) and every other mount is read-only. The mount lives only in that
    namespace, and the loop device has autoclear: both go when the process ends."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or reports and exits
        try:
            os.dup2(stdin, 0)
            os.dup2(os.open(os.devnull, os.O_WRONLY) if stdout is None else stdout, 1)
            os.dup2(stderr, 2)
            if fd3 is not None:
                os.dup2(fd3, 3)
            # Attached before the new namespace: the loop device's open image then belongs to the
            # host's mount, and the copies below can all be made read-only (a writer on one of
            # them would make that fail with EBUSY).
            device, device_fd = loopdev.attach(image)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            # Private first: nothing below may propagate back into the host's namespace.
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            syscalls.mount_setattr(root, syscalls.MOUNT_ATTR_RDONLY,
                                   flags=syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE)
            os.close(root)
            flags = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
            syscalls.mount(device, mount_dir, "ext4", flags if writable else flags | syscalls.MS_RDONLY)
            os.close(device_fd)  # the mount holds the device now
            if idmap_fd is not None:
                tree = syscalls.open_tree(mount_dir, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
                syscalls.mount_setattr(tree, syscalls.MOUNT_ATTR_IDMAP, idmap_fd)
                syscalls.move_mount(tree, mount_dir)
                os.close(tree)
            os.chdir(mount_dir)
            if argv[-1] == TOP and not os.path.isdir(TOP):
                # A server never started has no upper dir yet (launch makes it): nothing of its
                # own, an archive of no members.
                argv = [*argv[:-1], "--files-from=/dev/null"]
            os.execvpe(argv[0], argv, TAR_ENV)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the engine
            try:
                os.write(2, f"{exc}\n".encode())
            finally:
                os._exit(127)
    return pid


class _Pump(threading.Thread):
    """Copies SRC (an fd) to DST (a pipe to zstd) in a thread, counting and hashing, and
    reports (done, TOTAL) at most every PROGRESS_EVERY seconds."""

    def __init__(self, src: int, dst: IO[bytes], total: int, progress: Progress | None,
                 digest: Any | None = None) -> None:
        super().__init__(daemon=True)
        self.src, self.dst, self.total, self.progress, self.digest = src, dst, total, progress, digest
        self.count = 0
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        last = 0.0
        try:
            while True:
                chunk = os.read(self.src, CHUNK)
                if not chunk:
                    break
                if self.digest is not None:
                    self.digest.update(chunk)
                self.dst.write(chunk)
                self.count += len(chunk)
                now = time.monotonic()
                if self.progress is not None and now - last >= PROGRESS_EVERY:
                    last = now
                    self.progress(min(self.count, self.total), self.total)
        except BaseException as exc:  # noqa: BLE001 - read by the caller after join
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self.dst.close()


class _LineCounter(threading.Thread):
    """Counts the lines of tar's --index-file (one per member: the names are escaped)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.lines = 0
        self.start()

    def run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, CHUNK)
                if not chunk:
                    break
                self.lines += chunk.count(b"\n")
        finally:
            os.close(self.fd)

    def join(self, timeout: float | None = None) -> int:  # type: ignore[override]
        super().join(timeout)
        return self.lines


def _widen(*pipes: int) -> None:
    """Make PIPES hold PIPE_BYTES: with the default 64 KiB every MiB passed through Python
    costs sixteen reads and writes and as many wake-ups (measured: bench/backups.py)."""
    for fd in pipes:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_wait(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _close_proc(proc: subprocess.Popen) -> None:
    """Make sure PROC is gone (killed if still running) and its pipes closed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    proc.wait()


def _memfd(name: str) -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC)


def _read_memfd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data.decode(errors="replace")


def _tail(output: str, code: int) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {code}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512
