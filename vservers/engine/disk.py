"""Growing a server's disk: the sparse image file, the loop device over it, the ext4 inside.

Disks only grow. A running server's ext4 is grown online: its only mount lives in the
server's own mount namespace, and after the guest's pivot_root it is not even a mount there
any more (the overlay's upper layer holds it). Mounting the same loop device again, in a
private mount namespace of the resize2fs process alone, gives that same filesystem (the kernel
shares the superblock of a device mounted twice), so resize2fs finds it mounted and resizes
it through the kernel; the extra mount ends with the process, whatever happens to the engine.
A stopped server's image is checked and grown offline.

The kernel lets only a holder of CAP_SYS_RESOURCE (in the host's user namespace) resize a
mounted ext4, on every path (the resize ioctls). A host or container that dropped it from
root's capabilities cannot grow a running server's disk: the engine then leaves the grow for
the server's next start, which needs no such capability (see can_grow_online).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import loopdev, syscalls
from .errors import EngineError
from .syscalls import CLONE_NEWNS, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC

# e2fsck -p: 0 clean, 1 errors fixed, 2 fixed and "reboot" (which concerns a mounted root
# filesystem only, never an image file); 4 and up mean errors left or e2fsck failed.
E2FSCK_FIXED = 2
CAP_SYS_RESOURCE = 24


def can_grow_online() -> bool:
    """Whether this process may resize a mounted ext4 (holds CAP_SYS_RESOURCE)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def grow_file(image: Path, size: int) -> None:
    """Make IMAGE SIZE bytes long if it is shorter (sparse: the new end takes no space)."""
    if image.stat().st_size < size:
        os.truncate(image, size)


def grow_offline(image: Path) -> None:
    """Grow the ext4 in IMAGE (attached to no loop device) to the file's size."""
    # resize2fs works only on a filesystem just checked in full; -f after that check only
    # skips its own test of the check's time stamp.
    check = _run(["e2fsck", "-f", "-p", str(image)])
    if check.returncode > E2FSCK_FIXED:
        raise EngineError(f"e2fsck found errors it could not fix in {image}: {_last_line(check)}")
    resize = _run(["resize2fs", "-f", str(image)])
    if resize.returncode != 0:
        raise EngineError(f"resize2fs of {image} failed: {_last_line(resize)}")


def grow_online(device: str, image: Path, mount_dir: Path) -> None:
    """Grow the mounted ext4 on loop DEVICE (serving IMAGE) to the image's size; MOUNT_DIR is
    an empty directory to mount it on in the private namespace."""
    try:
        with loopdev.held(device, image) as fd:
            loopdev.set_capacity(fd)
            code, output = run_where_mounted(["resize2fs", device], device, mount_dir)
    except OSError as exc:
        raise EngineError(f"cannot grow the disk on {device}: {exc.strerror or exc}") from exc
    if code != 0:
        raise EngineError(f"online resize2fs of {device} failed: {_tail(output, code)}")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]} is not installed (e2fsprogs)") from exc


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return _tail(result.stderr.strip() or result.stdout, result.returncode)


def _tail(output: str, code: int) -> str:
    """The last line a tool printed (its reason), for a one-line error message."""
    lines = output.strip().splitlines()
    return lines[-1] if lines else f"exit status {code}"


def run_where_mounted(argv: Sequence[str], device: str, mount_dir: Path) -> tuple[int, str]:
    """Run ARGV in a mount namespace of its own in which DEVICE is mounted on MOUNT_DIR;
    returns its exit status and what it wrote to stderr (its stdout is dropped)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or reports and exits
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err_w, 2)
            syscalls.unshare(CLONE_NEWNS)
            # Private first: the mount below must not propagate back into the host's namespace.
            syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
            syscalls.mount(device, mount_dir, "ext4", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            os.execvp(argv[0], list(argv))
        except BaseException as exc:  # noqa: BLE001 - everything must reach the engine
            try:
                os.write(2, f"{exc}\n".encode())
            finally:
                os._exit(127)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as fh:
        errors = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), errors
