"""`vserver doctor`: does this kernel have what the engine needs? Each check says what is
missing and how to fix it."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
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
    checks.append(_migration_check(config))
    return checks


# Longer than the kernel keeps a cgroup writer's grace period (rcu_sync) after the last write.
MIGRATION_IDLE = 0.05
MIGRATION_PROBES = 3
MIGRATION_SLOW_MS = 1.0
MIGRATION_FIX = ("mount a cgroup hierarchy with the option favordynmods (cgroup v2: mount -o remount,favordynmods "
                 "/sys/fs/cgroup; or a kernel built with CONFIG_CGROUP_FAVOR_DYNMODS); on recent kernels (6.18) "
                 "it cannot be switched off again until the next boot")


def migration_latency_ms(config: EngineConfig, probes: int = MIGRATION_PROBES, idle: float = MIGRATION_IDLE) -> float:
    """The median milliseconds a write to cgroup.procs takes to move a process into a scratch
    group of this installation, after IDLE seconds without one. Without favordynmods the
    first migration after a pause waits for an RCU grace period (the kernel's
    cgroup_threadgroup_rwsem): every start pays it once (its setup child joins the server's
    groups) and every exec and console (the program joins them), whatever the machine's load."""
    from .cgroups import detect
    from .spec import Limits

    backend = detect(config)
    # Not a server's name (those start with a letter), so never one of theirs.
    name = f"_doctor-{os.getpid()}"
    backend.create(name, Limits())
    took: list[float] = []
    try:
        for _ in range(probes):
            hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:  # waits until we close our end, then goes
                os.close(hold_w)
                os.read(hold_r, 1)
                os._exit(0)
            os.close(hold_r)
            try:
                time.sleep(idle)
                fd = os.open(backend.procs_files(name)[0], os.O_WRONLY | os.O_CLOEXEC)
                try:
                    started = time.perf_counter()
                    os.write(fd, str(pid).encode())
                    took.append((time.perf_counter() - started) * 1000)
                finally:
                    os.close(fd)
            finally:
                os.close(hold_w)
                os.waitpid(pid, 0)
    finally:
        backend.destroy(name)
    return statistics.median(took)


def migration_verdict(latency_ms: float) -> Check:
    """LATENCY_MS of a migration after a pause, as a warning (the engine works either way)."""
    if latency_ms < MIGRATION_SLOW_MS:
        return Check("cgroup migration", True, f"{latency_ms:.2f} ms to move a process into a server's groups",
                     required=False)
    return Check("cgroup migration", False,
                 f"{latency_ms:.1f} ms to move a process into a server's groups after a pause (the kernel waits "
                 "for an RCU grace period): each start and each exec or console waits that long once",
                 MIGRATION_FIX, required=False)


def _migration_check(config: EngineConfig) -> Check:
    from .errors import EngineError

    if os.geteuid() != 0:
        return Check("cgroup migration", False, "cannot test without root", "run vserver doctor as root",
                     required=False)
    try:
        return migration_verdict(migration_latency_ms(config))
    except (OSError, EngineError) as exc:
        return Check("cgroup migration", False, f"could not be measured: {exc}", required=False)


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
