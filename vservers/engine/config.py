"""Where the engine keeps its state and which host objects it owns, read from the environment.

Two installations with different roots and bridges must not disturb each other, so every
host-wide name (cgroup parent, veth prefix) is derived from the state root.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput
from .state import DEFAULT_ROOT, root_from_env

DEFAULT_BRIDGE = "vsbr0"
DEFAULT_GATEWAY = "198.18.0.1/16"
DEFAULT_UID_BASE = 1_000_000


@dataclass(frozen=True)
class EngineConfig:
    """Where an installation keeps its servers and how it networks them (from_env reads it)."""

    root: Path
    bridge: str
    gateway4: ipaddress.IPv4Interface
    gateway6: ipaddress.IPv6Interface | None
    uid_base: int
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # Ports of the host the VPSs may reach at the gateway addresses, as (protocol, port):
    # VSERVER_HOST_ALLOW="tcp/53,udp/53". Default none (see firewall.py).
    host_allow: tuple[tuple[str, int], ...] = ()
    # VSERVER_BACKUP_DIR: where backup archives go (any mounted filesystem, NFS included);
    # None means <root>/backups.
    backup_dir_setting: Path | None = None
    # VSERVER_BACKUP_SSH_OPTIONS: options for ssh when a backup is pushed to USER@HOST:/PATH,
    # e.g. "-i /root/.ssh/backup -p 2222" (words without spaces or quotes).
    backup_ssh_options: tuple[str, ...] = ()
    # VSERVER_LOOP_DIRECT_IO=0 attaches servers' disks buffered; by default with direct I/O
    # where the image's filesystem takes it (see loopdev.py, bench/loopdio.py for the figures).
    loop_direct_io: bool = True
    # VSERVER_STORAGE: where a new server's own files go. "loop" (default): an ext4 image of
    # its own on a loop device; "btrfs": a subvolume with a qgroup limit on the shared btrfs
    # mounted at VSERVER_STORAGE_POOL (qgroups.py). Each server keeps the backend it was
    # created with.
    storage: str = "loop"
    storage_pool: Path | None = None

    @property
    def install_id(self) -> str:
        """Short stable id of this installation, used in host-wide names."""
        from .digest import sha256

        return sha256(str(self.root).encode()).hexdigest()[:6]

    @property
    def cgroup_parent(self) -> str:
        if str(self.root) == DEFAULT_ROOT:
            return "vservers"
        return f"vservers-{self.install_id}"

    @property
    def veth_prefix(self) -> str:
        # "vs" + install id keeps our veths recognisable and apart from another root's.
        return f"vs{self.install_id[:4]}"

    @property
    def servers_dir(self) -> Path:
        return self.root / "servers"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    def server_dir(self, name: str) -> Path:
        return self.servers_dir / name

    @property
    def backup_dir(self) -> Path:
        return self.backup_dir_setting or self.root / "backups"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> EngineConfig:
        env = dict(os.environ if env is None else env)
        root = Path(root_from_env(env))
        from .validate import bridge_name, gateway_interface

        bridge = bridge_name(env.get("VSERVER_BRIDGE", DEFAULT_BRIDGE))
        gateway4 = gateway_interface(env.get("VSERVER_GATEWAY", DEFAULT_GATEWAY), version=4)
        gw6_text = env.get("VSERVER_GATEWAY6", "")
        gateway6 = gateway_interface(gw6_text, version=6) if gw6_text else None
        try:
            uid_base = int(env.get("VSERVER_UID_BASE", DEFAULT_UID_BASE))
        except ValueError:
            raise InvalidInput("VSERVER_UID_BASE must be an integer") from None
        if not 65536 <= uid_base < 2**31:
            raise InvalidInput("VSERVER_UID_BASE must be between 65536 and 2^31")
        allow_text = env.get("VSERVER_HOST_ALLOW", "")
        host_allow: tuple[tuple[str, int], ...] = ()
        if allow_text.strip():  # firewall costs ~6 ms to import; only a setting needs its parser
            from .firewall import parse_host_allow

            host_allow = parse_host_allow(allow_text)
        backup_text = env.get("VSERVER_BACKUP_DIR", "")
        backup_dir = Path(backup_text) if backup_text else None
        if backup_dir is not None and not backup_dir.is_absolute():
            raise InvalidInput(f"VSERVER_BACKUP_DIR must be an absolute path, not {backup_text!r}")
        from .validate import ssh_options

        ssh = ssh_options(env.get("VSERVER_BACKUP_SSH_OPTIONS", "").split())
        direct_io = env.get("VSERVER_LOOP_DIRECT_IO", "1").strip().lower()
        if direct_io not in ("0", "1", "yes", "no", "on", "off", "true", "false"):
            raise InvalidInput(f"VSERVER_LOOP_DIRECT_IO must be 1 or 0, not {direct_io!r}")
        storage, pool = _storage_setting(env)
        return cls(root=root, bridge=bridge, gateway4=gateway4, gateway6=gateway6, uid_base=uid_base,
                   host_allow=host_allow, backup_dir_setting=backup_dir, backup_ssh_options=ssh,
                   loop_direct_io=direct_io in ("1", "yes", "on", "true"), storage=storage, storage_pool=pool)


def _storage_setting(env: dict[str, str]) -> tuple[str, Path | None]:
    """VSERVER_STORAGE and VSERVER_STORAGE_POOL, checked as text (the pool itself is checked
    where it is used: by create, and by `vserver doctor`)."""
    storage = env.get("VSERVER_STORAGE", "loop").strip() or "loop"
    if storage not in ("loop", "btrfs"):
        raise InvalidInput(f"VSERVER_STORAGE must be loop or btrfs, not {storage!r}")
    pool_text = env.get("VSERVER_STORAGE_POOL", "").strip()
    if storage == "loop":
        return storage, Path(pool_text) if pool_text else None
    if not pool_text or not Path(pool_text).is_absolute():
        raise InvalidInput("VSERVER_STORAGE=btrfs needs VSERVER_STORAGE_POOL, the absolute path of a directory "
                           f"on a btrfs with quotas enabled (not {pool_text!r})")
    return storage, Path(pool_text)
