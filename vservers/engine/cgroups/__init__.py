"""Resource limits for VPSs through cgroups: one interface, a v1 and a v2 backend, chosen by the host.

Each VPS is the group <root>/<parent>/<name> (v1: under each controller's hierarchy), where
<parent> belongs to one installation, so two installations never touch each other's groups.
"""

from __future__ import annotations

from ..config import EngineConfig
from ..errors import EngineError
from . import v1, v2
from .base import CgroupBackend, block_device_number, check_name
from .v1 import CgroupV1
from .v2 import CgroupV2

__all__ = [
    "CgroupBackend",
    "CgroupV1",
    "CgroupV2",
    "block_device_number",
    "check_name",
    "detect",
    "missing_controllers",
]


def _is_v2(config: EngineConfig) -> bool:
    return (config.cgroup_root / "cgroup.controllers").is_file()


def missing_controllers(config: EngineConfig) -> list[str]:
    """Required controllers the host lacks: cpu, memory, pids and the block I/O one (v1: blkio,
    v2: io), and on v1 also cpuacct."""
    if _is_v2(config):
        return v2.missing(config.cgroup_root)
    return v1.missing(config.cgroup_root)


def detect(config: EngineConfig) -> CgroupBackend:
    """The backend for this host: v2 on a unified mount, else v1; refuses a host lacking controllers."""
    root = config.cgroup_root
    backend: CgroupBackend
    if _is_v2(config):
        backend = CgroupV2(root, config.cgroup_parent)
    else:
        backend = CgroupV1(root, config.cgroup_parent)
    missing = missing_controllers(config)
    if backend.version == 1 and len(missing) == len(v1.CONTROLLERS):
        raise EngineError(
            f"no usable cgroup filesystem at {root}: neither cgroup v2 (cgroup.controllers) "
            f"nor cgroup v1 hierarchies ({', '.join(v1.CONTROLLERS)})"
        )
    if missing:
        hint = (
            "mount a v1 hierarchy for each"
            if backend.version == 1
            else "the root's cgroup.controllers must list them (a controller still used by v1 is not)"
        )
        names = ", ".join(missing)
        raise EngineError(f"cgroup v{backend.version} at {root} lacks controllers {names}: {hint}")
    return backend
