"""Unpacking tar archives without letting them write outside their directory.

Written by hand instead of `tarfile`'s extraction filters (`extractall(filter="data")`): Debian
bookworm's Python 3.11.2, the interpreter the project runs on, has no filters (they came in
3.11.4), and one code path for every interpreter means the checks the tests make are the ones
that run. The rules are those of the "data" filter:

- a member's name is relative and has no `..` component;
- a member must land inside the destination once the links already unpacked are followed;
- a symbolic link is relative and leads inside; a hard link names a member inside;
- only regular files, directories and links: no device files, FIFOs or other kinds;
- files belong to whoever unpacks them (root here), with no set-uid, set-gid or sticky bit
  and no write permission for group or others.

Each member is checked right before it is unpacked, so a link made by an earlier member is
seen (realpath) when a later member's path goes through it.
"""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path
from typing import Any

from .errors import EngineError

# An interpreter that has the filters applies "data" as well: the members passed our checks
# already, so it changes nothing, and it silences 3.12's warning about extracting unfiltered.
_TRUSTED: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class UnsafeArchive(EngineError):
    """A member of an archive would be written outside its directory, or is of a refused kind."""


def extract(archive: Path | str, dest: Path | str) -> None:
    """Unpack ARCHIVE (any compression tarfile reads) into the existing directory DEST."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            extract_members(tar, dest)
    except (tarfile.TarError, EOFError) as exc:
        raise EngineError(f"cannot unpack {archive}: {exc}") from None


def extract_members(tar: tarfile.TarFile, dest: Path | str) -> None:
    base = os.path.realpath(dest)
    if not os.path.isdir(base):
        raise EngineError(f"cannot unpack into {dest}: not a directory")
    directories = []
    for member in tar:
        safe = checked(member, base)
        # Directories get their modes after everything inside them is written, as extractall
        # does: a read-only directory would refuse its own files.
        tar.extract(safe, base, set_attrs=not safe.isdir(), **_TRUSTED)
        if safe.isdir():
            directories.append(safe)
    for member in reversed(directories):
        path = os.path.join(base, member.name)
        os.chmod(path, member.mode)
        os.utime(path, (member.mtime, member.mtime))


def checked(member: tarfile.TarInfo, base: str) -> tarfile.TarInfo:
    """A copy of MEMBER that is safe to unpack into the directory BASE (a realpath), or
    UnsafeArchive naming the member and the rule it breaks."""
    name = member.name
    if not name or "\0" in name:
        raise UnsafeArchive(f"archive member {name!r} has no usable name")
    if os.path.isabs(name):
        raise UnsafeArchive(f"archive member {name!r} has an absolute path")
    if ".." in Path(name).parts:
        raise UnsafeArchive(f"archive member {name!r} has a '..' in its path")
    target = os.path.join(base, name)
    if not _inside(base, os.path.realpath(target)):
        raise UnsafeArchive(f"archive member {name!r} would be written outside {base} (through a link)")
    if member.issym():
        link = member.linkname
        if os.path.isabs(link):
            raise UnsafeArchive(f"archive member {name!r} is a link to the absolute path {link!r}")
        if not _inside(base, os.path.realpath(os.path.join(os.path.dirname(target), link))):
            raise UnsafeArchive(f"archive member {name!r} is a link to {link!r}, outside {base}")
    elif member.islnk():
        link = member.linkname
        if os.path.isabs(link) or not _inside(base, os.path.realpath(os.path.join(base, link))):
            raise UnsafeArchive(f"archive member {name!r} is a hard link to {link!r}, outside {base}")
    elif member.ischr() or member.isblk():
        raise UnsafeArchive(f"archive member {name!r} is a device file")
    elif member.isfifo():
        raise UnsafeArchive(f"archive member {name!r} is a FIFO")
    elif not (member.isreg() or member.isdir()):
        raise UnsafeArchive(f"archive member {name!r} is of a kind that is not unpacked ({member.type!r})")
    safe = copy.copy(member)
    safe.mode = (member.mode & 0o755) | 0o600 if not member.issym() else member.mode
    if member.isdir():
        safe.mode |= 0o700
    safe.uid, safe.gid = os.getuid(), os.getgid()
    safe.uname = safe.gname = ""  # tarfile would look names up and prefer them to the ids
    return safe


def _inside(base: str, path: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")
