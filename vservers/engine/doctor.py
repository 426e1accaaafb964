"""`vserver doctor`: does this kernel have what the engine needs? Each check says what is
missing and how to fix it."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import EngineConfig

NAMESPACES = ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup")


@dataclass(frozen=True)
class Check:
    """One of doctor's checks: passed or not, why, and how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _filesystems() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}


def run_checks(config: EngineConfig) -> list[Check]:
    checks = [
        Check("root", os.geteuid() == 0, "running as root" if os.geteuid() == 0 else "not root",
              "run the engine as root (the panel's worker does)"),
    ]
    missing_ns = [ns for ns in NAMESPACES if not os.path.exists(f"/proc/self/ns/{ns}")]
    checks.append(Check("namespaces", not missing_ns,
                        "all of " + ", ".join(NAMESPACES) if not missing_ns else "missing: " + ", ".join(missing_ns),
                        "use a kernel built with CONFIG_*_NS"))
    try:
        max_userns = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        max_userns = 0
    checks.append(Check("user namespaces", max_userns > 0, f"user.max_user_namespaces = {max_userns}",
                        "sysctl -w user.max_user_namespaces=65536"))
    fs = _filesystems()
    for name, fix in (("overlay", "modprobe overlay"), ("ext4", "modprobe ext4")):
        checks.append(Check(f"{name} filesystem", name in fs,
                            "available" if name in fs else "not in /proc/filesystems", fix))
    checks.append(Check("mkfs.ext4", shutil.which("mkfs.ext4") is not None, "e2fsprogs",
                        "apt-get install e2fsprogs"))
    loop = os.path.exists("/dev/loop-control")
    checks.append(Check("loop devices", loop, "/dev/loop-control" if loop else "no /dev/loop-control",
                        "modprobe loop"))
    checks.append(_cgroup_check(config))
    bridge = os.path.isdir("/sys/module/bridge") or os.path.isdir(f"/sys/class/net/{config.bridge}")
    checks.append(Check("bridge", bridge, "Linux bridge support" if bridge else "bridge module not loaded",
                        "modprobe bridge"))
    checks.append(_idmapped_overlay_check(config))
    checks.append(_storage_check(config))
    return checks


def _storage_check(config: EngineConfig) -> Check:
    """The storage backend for new servers, and for btrfs whether its pool can hold them."""
    if config.storage == "loop":
        return Check("storage", True, "loop: an ext4 image per server on a loop device (VSERVER_STORAGE=loop)")
    from .qgroups import check_pool

    assert config.storage_pool is not None  # config refuses btrfs without a pool
    problem = check_pool(config.storage_pool)
    mkfs = shutil.which("mkfs.btrfs") is not None
    if problem:
        return Check("storage", False, f"btrfs pool {config.storage_pool}: {problem}",
                     "" if mkfs else "apt-get install btrfs-progs")
    return Check("storage", True, f"btrfs: a subvolume with a qgroup limit per server on {config.storage_pool}")


def _cgroup_check(config: EngineConfig) -> Check:
    from .cgroups import detect, missing_controllers
    from .errors import EngineError

    try:
        backend = detect(config)
    except EngineError as exc:
        return Check("cgroups", False, str(exc), "mount cgroup2 on /sys/fs/cgroup or the v1 controllers")
    missing = missing_controllers(config)
    detail = f"cgroup v{backend.version}" + (f", missing controllers: {', '.join(missing)}" if missing else
                                             ", controllers cpu, memory, pids")
    return Check("cgroups", not missing, detail, "enable the missing controllers (cgroup_enable=... on boot)")


def _idmapped_overlay_check(config: EngineConfig) -> Check:
    """Try the real thing in a throwaway child: an idmapped mount used as an overlay lower
    layer (Linux 5.19+). Without it every VPS would need its own chowned template copy."""
    from . import syscalls, userns

    name = "idmapped overlay lower layers"
    fix = "use Linux 5.19 or newer (open_tree, mount_setattr with MOUNT_ATTR_IDMAP, overlay on idmapped layers)"
    if os.geteuid() != 0:
        return Check(name, False, "cannot test without root", fix)
    with tempfile.TemporaryDirectory(prefix="vserver-doctor-") as tmp:
        base = Path(tmp)
        for sub in ("src", "lower", "upper", "work", "merged"):
            (base / sub).mkdir()
        (base / "src" / "file").write_text("x")
        try:
            userns_fd = userns.create(config.uid_base)
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            return Check(name, False, f"user namespace: {exc}", fix)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                syscalls.unshare(syscalls.CLONE_NEWNS)
                syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
                syscalls.idmapped_clone(base / "src", base / "lower", userns_fd)
                syscalls.mount("overlay", base / "merged", "overlay", 0,
                               f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work")
                owner = os.stat(base / "merged" / "file").st_uid
                code = 0 if owner == config.uid_base else 2
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        os.close(userns_fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return Check(name, True, "template mounted idmapped under an overlay works")
    return Check(name, False, "this kernel cannot mount an idmapped template under overlayfs", fix)
