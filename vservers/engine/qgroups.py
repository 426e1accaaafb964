"""The btrfs storage backend: a server's own files in a subvolume of a shared pool filesystem,
held to its disk size by the subvolume's qgroup limit, as OpenVZ's simfs with quota did. No
loop device, no image, no filesystem per server.

Why btrfs and not ext4 or XFS project quotas: this project's kernel (6.18, see docs/storage.md)
is built without CONFIG_QFMT_V2 and without CONFIG_XFS_QUOTA, so an ext4 made with
`-O quota,project` refuses to mount ("The kernel was not built with CONFIG_QUOTA and
CONFIG_QFMT_V2") and XFS ignores prjquota; btrfs and its qgroups are built in. A subvolume
gives what a project id gives, and a little more: the filesystem allocates its id (two
servers can never share one, and a deleted one is never reused), every file below it counts
against its qgroup with no flag to inherit or to clear, inodes are allocated from the same
counted metadata (there is no inode table to exhaust), and deleting it is one ioctl.

The pool is a mounted btrfs with quotas enabled (`btrfs quota enable POOL`), named by
VSERVER_STORAGE_POOL. Each server gets

    <pool>/vservers-<install id>/<name>/        a subvolume with a qgroup limit (referenced bytes)
                                     upper/     the overlay's upper layer (owned by guest root)
                                     work/      the overlay's work directory

recorded in the server's storage.json (whose presence is what makes a server a btrfs one: a
server keeps the backend it was created with whatever the setting says later).

The walls (docs/security.md, "btrfs storage"): the guest sees nothing of the pool but its own
upper layer, through overlayfs, which passes no btrfs ioctl through (a subvolume made inside
would have a qgroup of its own and escape the limit: ENOTTY); the qgroup limit holds for every
writer, host root included (btrfs makes no exception for CAP_SYS_RESOURCE), so the overlay's
writes with its mounter's credentials are held too; quotactl is refused by seccomp.

Everything goes through the ioctls themselves (ctypes, like syscalls.py) and the qgroup
figures through sysfs: one call each, no parsing of `btrfs` output, and no process per step
(btrfs-progs is needed only to make and set up the pool).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineError

# <linux/btrfs.h>
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E  # _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
BTRFS_IOC_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
BTRFS_IOC_INO_LOOKUP = 0xD0009412  # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
BTRFS_IOC_FS_INFO = 0x8400941F  # _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)
BTRFS_IOC_QGROUP_LIMIT = 0x8030942B  # _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)
BTRFS_QGROUP_LIMIT_MAX_RFER = 1
BTRFS_FIRST_FREE_OBJECTID = 256  # the root directory's inode number in every subvolume
VOL_NAME_MAX = 4087
STORAGE_FILE = "storage.json"


class _VolArgs(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int64), ("name", ctypes.c_char * (VOL_NAME_MAX + 1))]


class _InoLookupArgs(ctypes.Structure):
    _fields_ = [("treeid", ctypes.c_uint64), ("objectid", ctypes.c_uint64), ("name", ctypes.c_char * 4080)]


class _QgroupLimitArgs(ctypes.Structure):
    _fields_ = [
        ("qgroupid", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("max_rfer", ctypes.c_uint64),
        ("max_excl", ctypes.c_uint64),
        ("rsv_rfer", ctypes.c_uint64),
        ("rsv_excl", ctypes.c_uint64),
    ]


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _mount_of(path: Path) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding PATH."""
    best: tuple[str, str] | None = None
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best[0])):
                best = (point, fields[fields.index("-") + 1])
    return best


def sysfs_dir(path: Path) -> Path:
    """/sys/fs/btrfs/<fsid> of the btrfs holding PATH."""
    info = bytearray(1024)
    fd = _open_dir(path)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, info)
    finally:
        os.close(fd)
    fsid = info[16:32].hex()
    return Path("/sys/fs/btrfs") / f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}"


def check_pool(pool: Path) -> str:
    """Why POOL cannot hold servers (a sentence naming the fix), or "" when it can: a
    directory on a mounted btrfs with quotas (qgroups) enabled."""
    if not pool.is_absolute():
        return f"VSERVER_STORAGE_POOL must be an absolute path, not {str(pool)!r}"
    if not pool.is_dir():
        return f"the storage pool {pool} is not a directory: mount a btrfs there (mkfs.btrfs, mount)"
    found = _mount_of(pool)
    if found is None or found[1] != "btrfs":
        where = f"{found[1]} ({found[0]})" if found else "no mount"
        return (f"the storage pool {pool} is on {where}, not btrfs: the btrfs backend needs a mounted btrfs "
                "with quotas enabled (mkfs.btrfs DEVICE; mount DEVICE POOL; btrfs quota enable POOL)")
    try:
        enabled = (sysfs_dir(pool) / "qgroups").is_dir()
    except OSError as exc:
        return f"cannot read the btrfs of the storage pool {pool}: {exc.strerror}"
    if not enabled:
        return f"quotas are not enabled on the btrfs of the storage pool {pool}: btrfs quota enable {found[0]}"
    return ""


def require_pool(pool: Path) -> None:
    problem = check_pool(pool)
    if problem:
        raise EngineError(problem)


# -- a server's subvolume ----------------------------------------------------------------

@dataclass(frozen=True)
class ServerStorage:
    """Where a btrfs-backed server's files are (its storage.json)."""

    pool: Path
    subvolume: Path  # <pool>/vservers-<install id>/<name>

    @property
    def upper(self) -> Path:
        return self.subvolume / "upper"

    @property
    def work(self) -> Path:
        return self.subvolume / "work"

    def to_json(self) -> dict:
        return {"backend": "btrfs", "pool": str(self.pool), "subvolume": str(self.subvolume)}

    @classmethod
    def from_json(cls, data: dict) -> ServerStorage:
        try:
            storage = cls(Path(data["pool"]), Path(data["subvolume"]))
        except (KeyError, TypeError) as exc:
            raise EngineError(f"bad storage record: {data!r}") from exc
        if data.get("backend") != "btrfs" or not storage.subvolume.is_relative_to(storage.pool):
            raise EngineError(f"bad storage record: {data!r}")
        return storage


def of_server(server_dir: Path) -> ServerStorage | None:
    """The btrfs storage of the server in SERVER_DIR, or None for a loop-backed server."""
    try:
        with open(server_dir / STORAGE_FILE) as fh:
            return ServerStorage.from_json(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {server_dir / STORAGE_FILE}: {exc}") from exc


def subvolume_id(path: Path) -> int:
    args = _InoLookupArgs(0, BTRFS_FIRST_FREE_OBJECTID)
    fd = _open_dir(path)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_INO_LOOKUP, args)
    finally:
        os.close(fd)
    return int(args.treeid)


def _vol_ioctl(parent: Path, name: str, request: int) -> None:
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, request, _VolArgs(0, os.fsencode(name)))
    finally:
        os.close(fd)


def set_limit(subvolume: Path, disk_bytes: int) -> None:
    """The qgroup of SUBVOLUME may reference at most DISK_BYTES (data and metadata); 0 lifts it."""
    args = _QgroupLimitArgs(0, BTRFS_QGROUP_LIMIT_MAX_RFER, disk_bytes or 2**64 - 1)  # 0 id: this subvolume's
    fd = _open_dir(subvolume)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, args)
    except OSError as exc:
        raise EngineError(f"cannot set the qgroup limit of {subvolume}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def create(pool: Path, subvolume: Path, disk_bytes: int, uid_base: int) -> ServerStorage:
    """A fresh subvolume SUBVOLUME (below POOL) limited to DISK_BYTES, with empty upper and
    work directories owned by the guest's root (as the loop backend's image root is). A
    leftover of a crashed create or reinstall is destroyed first."""
    require_pool(pool)
    parent = subvolume.parent
    parent.mkdir(mode=0o700, exist_ok=True)
    destroy(subvolume)
    try:
        _vol_ioctl(parent, subvolume.name, BTRFS_IOC_SUBVOL_CREATE)
    except OSError as exc:
        raise EngineError(f"cannot create the btrfs subvolume {subvolume}: {exc.strerror}") from exc
    try:
        os.chmod(subvolume, 0o700)
        set_limit(subvolume, disk_bytes)
        storage = ServerStorage(pool, subvolume)
        for path in (storage.upper, storage.work):
            path.mkdir(mode=0o755)
            os.chown(path, uid_base, uid_base)
    except BaseException:
        destroy(subvolume)
        raise
    return storage


def destroy(subvolume: Path) -> None:
    """Delete SUBVOLUME and all in it (the kernel frees its blocks, and its qgroup, in the
    background); a missing one is no error."""
    try:
        _vol_ioctl(subvolume.parent, subvolume.name, BTRFS_IOC_SNAP_DESTROY)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise EngineError(f"cannot delete the btrfs subvolume {subvolume}: {exc.strerror}") from exc


def used_bytes(subvolume: Path) -> int | None:
    """Bytes the subvolume's qgroup references (data and metadata), as of the filesystem's
    last transaction commit (at most its commit interval old, 30 s by default)."""
    try:
        qgroup = sysfs_dir(subvolume) / "qgroups" / f"0_{subvolume_id(subvolume)}"
        return int((qgroup / "referenced").read_text())
    except (OSError, ValueError):
        return None


def limit_bytes(subvolume: Path) -> int | None:
    try:
        qgroup = sysfs_dir(subvolume) / "qgroups" / f"0_{subvolume_id(subvolume)}"
        return int((qgroup / "max_referenced").read_text())
    except (OSError, ValueError):
        return None


def pool_devices(pool: Path) -> list[str]:
    """"MAJOR:MINOR" of each block device the btrfs holding POOL is on (its I/O ceilings')."""
    found = []
    for device in sorted((sysfs_dir(pool) / "devices").iterdir()):
        try:
            found.append((device / "dev").read_text().strip())
        except OSError:
            continue  # a device being removed from the filesystem
    return found


def limit_io(cgroups, name: str, storage: ServerStorage, limits) -> None:
    """Server NAME's I/O ceilings on every device of its pool, in its own groups only (the
    devices are every server's; see docs/security.md, "btrfs storage")."""
    for device in pool_devices(storage.pool):
        cgroups.limit_io_in_group(name, device, limits)


def write_record(server_dir: Path, storage: ServerStorage) -> None:
    from .state import write_json

    write_json(server_dir / STORAGE_FILE, storage.to_json())


def server_subvolume(pool: Path, install_id: str, name: str) -> Path:
    return pool / f"vservers-{install_id}" / name


def make_server(config, server_dir: Path, name: str, disk_bytes: int, uid_base: int) -> ServerStorage:
    """Server NAME's subvolume on the configured pool, recorded in SERVER_DIR/storage.json."""
    if config.storage_pool is None:
        raise EngineError("VSERVER_STORAGE=btrfs needs VSERVER_STORAGE_POOL")
    storage = create(config.storage_pool, server_subvolume(config.storage_pool, config.install_id, name),
                     disk_bytes, uid_base)
    try:
        write_record(server_dir, storage)
    except BaseException:
        destroy(storage.subvolume)
        raise
    return storage


def remove_server(config, server_dir: Path, name: str) -> None:
    """Delete server NAME's subvolume: the one its storage.json names, and the one a create
    that crashed before writing storage.json may have left where the pool puts it."""
    candidates = []
    storage = of_server(server_dir)
    if storage is not None:
        candidates.append(storage.subvolume)
    if config.storage_pool is not None:
        candidates.append(server_subvolume(config.storage_pool, config.install_id, name))
    for subvolume in candidates:
        # Only a subvolume's root has inode 256 on btrfs; anything else there is not ours.
        try:
            if os.lstat(subvolume).st_ino != BTRFS_FIRST_FREE_OBJECTID:
                continue
        except FileNotFoundError:
            continue
        destroy(subvolume)
    (server_dir / STORAGE_FILE).unlink(missing_ok=True)


def refuse(what: str, name: str) -> EngineError:
    """The error for an operation this backend does not do (yet)."""
    return EngineError(f"{what} of {name!r} is not available: it is stored on the btrfs storage backend "
                       "(VSERVER_STORAGE=btrfs), which does not do it yet; loop-backed servers do")
