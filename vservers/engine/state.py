"""The state root and the small files under it: atomic JSON writes and per-object locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from .errors import InvalidInput

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms at every CLI start)
if TYPE_CHECKING:
    from pathlib import Path  # callers pass Paths; pathlib costs `vserver list` ~4 ms to import
    from typing import Any

DEFAULT_ROOT = "/var/lib/vservers"


def root_from_env(env: dict[str, str] | None = None) -> str:
    """The state root VSERVER_ROOT names (DEFAULT_ROOT if unset), checked. EngineConfig reads
    it here, and so does `vserver list`, which needs nothing else of the configuration."""
    root = (os.environ if env is None else env).get("VSERVER_ROOT", DEFAULT_ROOT)
    if not os.path.isabs(root):
        raise InvalidInput(f"VSERVER_ROOT must be an absolute path, not {root!r}")
    return root


def write_json(path: Path, data: dict[str, Any], durable: bool = True) -> None:
    """Write to a temporary file and rename it over the old one, so a crash leaves either.
    DURABLE waits until the data is on disk; state that a reboot voids anyway need not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_path(path: Path) -> None:
    """Wait until PATH (a file, or a directory: its entries, e.g. after a rename) is on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | Path) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[None]:
    """An exclusive flock on PATH (created if missing); one operation per object at a time.
    Without WAIT, BlockingIOError if another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


# A work directory (a template's staging, busybox's compile tree) is claimed with an flock on
# the directory itself for as long as its builder lives: the kernel drops the lock when the
# process dies, however it dies (SIGKILL, OOM), so whoever looks later can tell a build in
# progress from the remains of a dead one. The age check covers the moment between mkdir and
# flock, when a new directory is not claimed yet.
_CLAIMED: dict[str, int] = {}
ABANDONED_AFTER = 60.0


def claim(directory: Path) -> None:
    """Hold DIRECTORY as in use by this process until release()."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _CLAIMED[str(directory)] = fd


def release(directory: Path) -> None:
    """Let go of DIRECTORY (claimed by this process, under this or its final name)."""
    fd = _CLAIMED.pop(str(directory), None)
    if fd is not None:
        os.close(fd)


def remove_abandoned(parent: Path, prefix: str, now: float | None = None) -> list[Path]:
    """Remove the directories PARENT/PREFIX* that no living process holds (claim()) and that
    are older than ABANDONED_AFTER seconds; returns them."""
    import shutil
    import time

    now = time.time() if now is None else now
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.glob(prefix + "*")):
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not a directory (or a link): not one of ours
        try:
            if now - os.fstat(fd).st_mtime < ABANDONED_AFTER:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its builder is alive
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            os.close(fd)
    return removed
