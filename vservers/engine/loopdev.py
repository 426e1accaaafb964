"""Loop devices through their ioctls: attach an image with autoclear, so the device frees
itself as soon as the last mount of it goes away (no loop device can outlive its VPS).

A server's disk is attached with direct I/O where the image's filesystem allows it: the loop
device then reads and writes the image with O_DIRECT, so a block of the guest's files sits in
the page cache once (the guest's ext4) and not a second time as a page of the image file.
Where it cannot work the disk is attached buffered and the reason returned (as systemd's
loop-util falls back): a filesystem that refuses O_DIRECT opens (ramfs: EINVAL; tmpfs takes
them on 6.18), a backing disk whose logical block is larger than the image's ext4 block, and
whatever the kernel decides itself: on 6.18 it keeps quiet and drops the flag (sysfs dio 0),
so that answer is read back after every attach; a LOOP_CONFIGURE refused with EINVAL is
retried buffered too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_SET_CAPACITY = 0x4C07
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64


@dataclass(frozen=True)
class Attached:
    """A loop device bound to a server's disk image."""

    device: str  # /dev/loopN
    fd: int  # open fd of the device: the caller mounts the device, then closes it
    # Why the device reads its image through the page cache although direct I/O was asked
    # for; "" when direct I/O is on or was not asked for.
    buffered_reason: str = ""


def attach(image: Path, attempts: int = 50) -> tuple[str, int]:
    """Attach IMAGE buffered to a free loop device; returns (device path, open fd of it).
    For short-lived users (a backup's mount), where a second copy in the cache does not last."""
    attached = attach_image(image, direct_io=False, attempts=attempts)
    return attached.device, attached.fd


def attach_image(image: Path, *, direct_io: bool, attempts: int = 50) -> Attached:
    """Attach IMAGE to a free loop device, with direct I/O if DIRECT_IO and the kernel can.

    The caller mounts the device and then closes the fd; from then on the mount holds it.
    LOOP_CTL_GET_FREE creates devices on demand, so we are not limited to the 8 made at boot.
    """
    reason = ""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        block_size = 0
        if direct_io:
            block_size, reason = _direct_io_block_size(backing, image)
            direct_io = not reason
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(attempts):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                dev_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(dev_fd, LOOP_CONFIGURE, _config(backing, image, direct_io, block_size))
                except OSError as exc:
                    os.close(dev_fd)
                    if exc.errno == errno.EBUSY:  # another process took it between the two calls
                        continue
                    if exc.errno == errno.EINVAL and direct_io:
                        # The failed configure leaves the device free: try again, buffered.
                        direct_io, block_size = False, 0
                        reason = f"the kernel refused direct I/O on {image} ({exc.strerror})"
                        continue
                    raise
                if direct_io and not direct_io_on(device):
                    reason = f"the kernel attached {image} to {device} without direct I/O"
                return Attached(device, dev_fd, reason)
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, "no free loop device")


def _config(backing: int, image: Path, direct_io: bool, block_size: int) -> bytes:
    """struct loop_config for LOOP_CONFIGURE. ctypes is imported here, not with the module: a
    stop imports loopdev for wait_released alone, and ctypes took it ~3 ms."""
    import ctypes

    class _LoopInfo64(ctypes.Structure):
        _fields_ = [
            ("lo_device", ctypes.c_uint64),
            ("lo_inode", ctypes.c_uint64),
            ("lo_rdevice", ctypes.c_uint64),
            ("lo_offset", ctypes.c_uint64),
            ("lo_sizelimit", ctypes.c_uint64),
            ("lo_number", ctypes.c_uint32),
            ("lo_encrypt_type", ctypes.c_uint32),
            ("lo_encrypt_key_size", ctypes.c_uint32),
            ("lo_flags", ctypes.c_uint32),
            ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
            ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
            ("lo_encrypt_key", ctypes.c_uint8 * 32),
            ("lo_init", ctypes.c_uint64 * 2),
        ]

    class _LoopConfig(ctypes.Structure):
        _fields_ = [
            ("fd", ctypes.c_uint32),
            ("block_size", ctypes.c_uint32),
            ("info", _LoopInfo64),
            ("reserved", ctypes.c_uint64 * 8),
        ]

    config = _LoopConfig(fd=backing, block_size=block_size)
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_DIRECT_IO if direct_io else 0)
    name = os.fsencode(image)[: LO_NAME_SIZE - 1]
    ctypes.memmove(config.info.lo_file_name, name, len(name))
    return bytes(config)


def _direct_io_block_size(backing: int, image: Path) -> tuple[int, str]:
    """The loop device's logical block size for direct I/O on IMAGE (open as BACKING), or
    (0, why direct I/O cannot work). Direct I/O needs the loop device's block to be at least
    the backing device's logical block; util-linux and systemd leave it at 0 on kernels
    since 6.11, which pick it themselves; setting it keeps older kernels (5.8 on) right too."""
    try:
        # The same test the kernel makes: the filesystem must take O_DIRECT opens at all.
        os.close(os.open(f"/proc/self/fd/{backing}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return 0, f"the filesystem holding {image} refuses O_DIRECT"
    size = _backing_block_size(os.fstat(backing).st_dev)
    if size is None:
        return 0, ""  # not on a block device (tmpfs, NFS, btrfs): the kernel knows better
    fs_block = _ext4_block_size(backing)
    if fs_block is not None and fs_block < size:
        return 0, f"the disk under {image} has {size}-byte blocks, larger than its ext4's {fs_block}"
    return size, ""


def _backing_block_size(dev: int) -> int | None:
    """Logical block size of the block device DEV (a whole disk or a partition of one)."""
    base = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (base / "queue", base / ".." / "queue"):  # a partition has its disk's queue
        try:
            return int((queue / "logical_block_size").read_text())
        except (OSError, ValueError):
            continue
    return None


def _ext4_block_size(fd: int) -> int | None:
    """Block size of the ext2/3/4 filesystem in the image open as FD (its superblock), if any."""
    superblock = os.pread(fd, 64, 1024)
    if len(superblock) < 64 or int.from_bytes(superblock[56:58], "little") != 0xEF53:
        return None
    return 1024 << int.from_bytes(superblock[24:28], "little")


def direct_io_on(device: str) -> bool:
    """Whether loop DEVICE reads and writes its image with direct I/O (as the kernel says)."""
    name = os.path.basename(device)
    try:
        return Path(f"/sys/block/{name}/loop/dio").read_text().strip() == "1"
    except OSError:
        return False


def backing_file(device: str) -> str | None:
    """The image a loop device is attached to, or None if it is free."""
    name = os.path.basename(device)
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except (FileNotFoundError, OSError):
        return None


def devices_for(prefix: Path) -> list[str]:
    """Every loop device whose image lies under PREFIX (for leak checks)."""
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        backing = backing_file(entry.name)
        if backing and (backing == str(prefix) or backing.startswith(str(prefix) + "/")):
            found.append(f"/dev/{entry.name}")
    return sorted(found)


def wait_released(device: str, image: Path, timeout: float = 5.0) -> bool:
    """Wait until DEVICE no longer serves IMAGE (autoclear runs when its last user goes)."""
    deadline = time.monotonic() + timeout
    while True:
        if backing_file(device) != str(image):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


@contextlib.contextmanager
def held(device: str, image: Path) -> Iterator[int]:
    """An open fd of DEVICE, checked to serve IMAGE. While it is open autoclear cannot free
    the device, so it cannot be given to another image meanwhile (the guest may halt at any
    moment); the check comes after the open for that reason."""
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        if backing_file(device) != str(image):
            raise OSError(errno.ENXIO, f"{device} no longer serves {image}")
        yield fd
    finally:
        os.close(fd)


def set_capacity(fd: int) -> None:
    """Make the loop device of FD take the current size of its image (grown while attached)."""
    fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
