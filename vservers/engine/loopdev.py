"""Loop devices through their ioctls: attach an image with autoclear, so the device frees
itself as soon as the last mount of it goes away (no loop device can outlive its VPS)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_SET_CAPACITY = 0x4C07
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64


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


def attach(image: Path, attempts: int = 50) -> tuple[str, int]:
    """Attach IMAGE to a free loop device; returns (device path, open fd of the device).

    The caller mounts the device and then closes the fd; from then on the mount holds it.
    LOOP_CTL_GET_FREE creates devices on demand, so we are not limited to the 8 made at boot.
    """
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        config = _LoopConfig(fd=backing, block_size=0)
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR
        name = os.fsencode(image)[: LO_NAME_SIZE - 1]
        ctypes.memmove(config.info.lo_file_name, name, len(name))
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(attempts):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                dev_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(dev_fd, LOOP_CONFIGURE, bytes(config))
                except OSError as exc:
                    os.close(dev_fd)
                    if exc.errno == errno.EBUSY:  # another process took it between the two calls
                        continue
                    raise
                return device, dev_fd
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, "no free loop device")


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
