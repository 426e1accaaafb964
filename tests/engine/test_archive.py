"""Unpacking archives: every member that would leave the directory, or is a device, is refused,
on the interpreter the project runs on (Debian's 3.11.2 has no tarfile filters)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vservers.engine import archive
from vservers.engine.archive import UnsafeArchive

REPO = Path(__file__).resolve().parents[2]


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = fields.pop("mode", 0o644)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def _archive(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return path


@pytest.fixture
def layout(tmp_path):
    """dest/ to unpack into and outside/ beside it, which must stay empty."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path


def _refused(layout: Path, *members, match: str) -> None:
    tarball = _archive(layout / "evil.tar.gz", *members)
    with pytest.raises(UnsafeArchive, match=match):
        archive.extract(tarball, layout / "dest")
    assert list((layout / "outside").iterdir()) == []
    assert not (layout / "escaped").exists()


def test_a_plain_archive_is_unpacked_with_safe_modes_and_our_owner(layout):
    tarball = _archive(
        layout / "ok.tar.gz",
        _member("pkg", tarfile.DIRTYPE, mode=0o555, uid=1234, gid=1234),
        _member("pkg/run", data=b"#!/bin/sh\n", mode=0o4777, uid=1234, gid=1234, uname="nobody"),
        _member("pkg/link", tarfile.SYMTYPE, linkname="run"),
        _member("pkg/hard", tarfile.LNKTYPE, linkname="pkg/run", mode=0o4777),
    )
    archive.extract(tarball, layout / "dest")
    run = layout / "dest/pkg/run"
    assert run.read_bytes() == b"#!/bin/sh\n"
    mode = run.stat().st_mode
    assert stat.S_IMODE(mode) == 0o755  # no set-uid, no write for group and others
    assert (run.stat().st_uid, run.stat().st_gid) == (os.getuid(), os.getgid())
    assert os.readlink(layout / "dest/pkg/link") == "run"
    assert (layout / "dest/pkg/hard").stat().st_ino == run.stat().st_ino
    # The read-only directory got its mode after its files were written (plus owner write).
    assert stat.S_IMODE((layout / "dest/pkg").stat().st_mode) == 0o755


def test_an_absolute_path_is_refused(layout):
    _refused(layout, _member(str(layout / "escaped"), data=b"x"), match="absolute path")


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "a/.."])
def test_a_dot_dot_in_a_path_is_refused(layout, name):
    _refused(layout, _member(name, data=b"x"), match="'..'")


def test_an_absolute_symlink_is_refused(layout):
    _refused(layout, _member("etc", tarfile.SYMTYPE, linkname=str(layout / "outside")), match="absolute path")


def test_a_relative_symlink_leading_outside_is_refused(layout):
    _refused(layout, _member("up", tarfile.SYMTYPE, linkname="../outside"), match="outside")


def test_a_path_through_an_earlier_link_is_followed_before_writing(layout):
    # "here" -> "." is harmless alone; "here/../outside" has a '..'; but a link built from
    # an earlier link is resolved on disk, as the kernel would.
    _refused(
        layout,
        _member("deep", tarfile.DIRTYPE, mode=0o755),
        _member("deep/here", tarfile.SYMTYPE, linkname=".."),
        _member("sneaky", tarfile.SYMTYPE, linkname="deep/here/../outside"),
        match="outside",
    )


def test_a_file_written_through_a_symlinked_directory_stays_inside(layout):
    tarball = _archive(
        layout / "ok.tar.gz",
        _member("real", tarfile.DIRTYPE, mode=0o755),
        _member("alias", tarfile.SYMTYPE, linkname="real"),
        _member("alias/file", data=b"inside"),
    )
    archive.extract(tarball, layout / "dest")
    assert (layout / "dest/real/file").read_bytes() == b"inside"


def test_a_hard_link_to_a_file_outside_is_refused(layout):
    (layout / "outside/secret").write_text("host secret")
    _refused_with_outside_file = _archive(
        layout / "evil.tar.gz", _member("copy", tarfile.LNKTYPE, linkname="../outside/secret")
    )
    with pytest.raises(UnsafeArchive, match="hard link"):
        archive.extract(_refused_with_outside_file, layout / "dest")
    assert list((layout / "dest").iterdir()) == []
    assert (layout / "outside/secret").stat().st_nlink == 1


@pytest.mark.parametrize(("kind", "what"), [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                                            (tarfile.FIFOTYPE, "FIFO")])
def test_device_files_and_fifos_are_refused(layout, kind, what):
    _refused(layout, _member("dev/sda", kind, devmajor=8, devminor=0), match=what)
    assert not (layout / "dest/dev/sda").exists()


def test_without_the_interpreters_filters_the_checks_still_hold(layout, monkeypatch):
    """Simulates an interpreter without tarfile filters (bookworm's 3.11.2) on a newer one."""
    monkeypatch.setattr(archive, "_TRUSTED", {})
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    _refused(layout, _member("up", tarfile.SYMTYPE, linkname="../outside"), match="outside")


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's /usr/bin/python3")
def test_debians_own_interpreter_refuses_an_escape_for_real(layout):
    """The project's interpreter as shipped (not this venv's copy): its tarfile may lack the
    filters, and the hand-written checks must refuse on it all the same."""
    tarball = _archive(layout / "evil.tar.gz", _member("../escaped", data=b"x"))
    script = (
        "import sys, tarfile\n"
        "from vservers.engine import archive\n"
        "print('filters' if hasattr(tarfile, 'data_filter') else 'no-filters', sys.version.split()[0])\n"
        "try:\n"
        "    archive.extract(sys.argv[1], sys.argv[2])\n"
        "except archive.UnsafeArchive as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + script,
         str(tarball), str(layout / "dest")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "refused: archive member '../escaped' has a '..'" in result.stdout
    assert not (layout / "escaped").exists()
    print(result.stdout.splitlines()[0], file=sys.stderr)
