"""Writing files into a guest's root filesystem without ever leaving it.

A guest tree may contain symlinks that point anywhere (absolute links are meant for the guest's
view of the world, not the host's). So paths are walked one component at a time from a file
descriptor of the root, with O_NOFOLLOW on every component: a symlink anywhere in the path is
refused instead of followed, and '..' is refused outright.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from .. import validate
from ..errors import EngineError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _components(relpath: str) -> list[str]:
    """The path's components; an absolute path is taken as relative to the guest's root."""
    if not isinstance(relpath, str) or "\x00" in relpath:
        raise EngineError(f"invalid guest path {relpath!r}")
    parts = [part for part in relpath.split("/") if part not in ("", ".")]
    if not parts:
        raise EngineError(f"invalid guest path {relpath!r}: names the root itself")
    if ".." in parts:
        raise EngineError(f"refusing guest path {relpath!r}: '..' is not allowed")
    return parts


def _walk(root: Path, parts: list[str], mode: int = 0o755) -> int:
    """An open file descriptor of ROOT/PARTS (missing directories made with MODE), reached
    without following any symlink."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                    created = True
                except FileExistsError:
                    created = False  # made meanwhile by someone else; the open checks what it is
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if created:
                    os.fchmod(next_fd, mode)  # mkdir's mode is cut by the umask
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            where = Path(root).joinpath(*parts)
            raise EngineError(f"refusing to write under {where}: a component is a symlink or not a directory") from None
        raise
    return fd


def make_dirs(root: Path, relpath: str, mode: int = 0o755) -> Path:
    """Create ROOT/RELPATH and its missing parents (MODE for new ones); no symlinks followed."""
    parts = _components(relpath)
    os.close(_walk(Path(root), parts, mode))
    return Path(root).joinpath(*parts)


def write_file(root: Path, relpath: str, content: str | bytes, mode: int = 0o644) -> Path:
    """Create or replace the regular file ROOT/RELPATH with CONTENT and permissions MODE.

    Missing parent directories are created (0755). A symlink, FIFO or device at the path, or a
    symlink in any parent, is refused with EngineError rather than written through.
    """
    parts = _components(relpath)
    data = content.encode() if isinstance(content, str) else bytes(content)
    target = Path(root).joinpath(*parts)
    refused = EngineError(f"refusing to write {target}: it is a symlink or not a regular file")
    dir_fd = _walk(Path(root), parts[:-1])
    try:
        try:
            existing = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(existing.st_mode):
                raise refused
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(parts[-1], flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise refused from None
            raise
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused
        os.ftruncate(fd, 0)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return target


def write_service(root: Path, service_dir: str, name: str, run_script: str) -> Path:
    """Create the runit service SERVICE_DIR/NAME inside the guest with RUN_SCRIPT as its ./run.

    SERVICE_DIR's modification time is then set a second back. runsvdir (runit's, and
    busybox's) does not start the services of a directory changed within the current second:
    it sleeps in steps of 100 ms until the next second, to be sure it sees later changes. A
    server booted within a second of its template's build waited that out, up to a second
    before its first service ran (measured: 200-530 ms to the first HTTP answer, against 2 ms
    once the second had passed)."""
    name = validate.service_name(name)
    run = write_file(root, f"{service_dir}/{name}/run", run_script, mode=0o755)
    fd = _walk(Path(root), _components(service_dir))
    try:
        earlier = time.time() - 1
        os.utime(fd, (earlier, earlier))
    finally:
        os.close(fd)
    return run
