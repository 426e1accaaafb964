"""Rescue mode: a server started from the rescue system with its own files at /mnt.

A server whose init is broken (a customer removed /sbin/init, broke inittab) cannot start its
own system. In rescue mode its root filesystem is the rescue system instead: the busybox
template's current version, idmapped like any template, with a throwaway tmpfs as the upper
layer (it lives only in the server's mount namespace, so it vanishes with the server's last
process: leaving rescue, a crash, a kill -9 of the engine all wipe it). The server's own
overlay (its template version below, its disk's upper layer on top) is mounted as usual and
bound read-write at /mnt of the rescue system, where the tenant repairs it from the console.

Everything else is a normal start's: the same user namespace and uid range, the same
namespaces, cgroups and limits, the same addresses and firewall, the same capability bounding
set and seccomp filter (launch.py makes no difference between the two but the root it pivots
into). What the tenant can do in rescue is what they can do in their server.

Root's password in rescue mode (set_root_password) is the /mnt system's: that is the password
that was lost, and the rescue system's own accounts are thrown away at leave. It is set with
the rescue system's own tools (awk, busybox), not the guest's, which may be as broken as its
init: a SHA-512 crypt hash made on the host (vservers.passwords) replaces root's field in
/mnt/etc/shadow. All of it runs inside the server, with its walls, so nothing the guest did
to /mnt (a link in place of /mnt/etc/shadow, say) reaches anything of the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import syscalls, validate
from .errors import EngineError, InvalidInput
from .syscalls import MS_NODEV, MS_NOSUID

RESCUE_TEMPLATE = "busybox"
# The rescue system's writable layer. Charged to the server's memory cgroup like any tmpfs
# page its processes write; a ceiling of its own keeps a careless `cp -a /mnt /` from filling
# memory up to the server's limit.
SCRATCH_SIZE = "64m"
SCRATCH_INODES = "16384"


@dataclass(frozen=True)
class RescueLayers:
    """Where a rescue start mounts the rescue system (mount points under the server's
    directory; every mount itself is private to the server's mount namespace)."""

    template_rootfs: Path  # the rescue template's rootfs (host root's files)
    lower_dir: Path  # mount point of the idmapped rescue template
    scratch_dir: Path  # mount point of the tmpfs holding the upper and work directories
    root_dir: Path  # mount point of the rescue system's overlay: the server's root

    @classmethod
    def under(cls, server_dir: Path, template_rootfs: Path) -> RescueLayers:
        base = server_dir / "rescue"
        return cls(template_rootfs, base / "lower", base / "scratch", base / "root")

    def make_mount_points(self) -> None:
        """The empty directories to mount on (servers created before rescue mode have none);
        search-only for others, as the guest's init-to-be must reach its root."""
        for path in (self.lower_dir, self.scratch_dir, self.root_dir):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root_dir.parent, 0o711)

    def mount(self, uid_base: int, userns_fd: int) -> None:
        """Mount the rescue system on root_dir; run by the setup child (host root) in the
        server's private mount namespace, after the server's own overlay is mounted."""
        syscalls.idmapped_clone(self.template_rootfs, self.lower_dir, userns_fd)
        syscalls.mount("tmpfs", self.scratch_dir, "tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={SCRATCH_SIZE},nr_inodes={SCRATCH_INODES},mode=0755")
        upper, work = self.scratch_dir / "upper", self.scratch_dir / "work"
        for path in (upper, work, upper / "mnt"):
            path.mkdir(mode=0o755)
        # Owned by the guest's root: the overlay's root directory is the upper one, and /mnt
        # is where the server's own files are bound.
        for path in (upper, upper / "mnt"):
            os.chown(path, uid_base, uid_base)
        syscalls.mount("overlay", self.root_dir, "overlay", 0,
                       f"lowerdir={self.lower_dir},upperdir={upper},workdir={work}")


# Replaces root's password field in the /mnt system's shadow file with the hash read on
# stdin; the file keeps its inode (owner, mode) as the guest's own passwd tools would. Exit 3:
# no shadow file; 4: no root entry in it.
_SET_HASH_SCRIPT = r"""
set -e
f=/mnt/etc/shadow
[ -f "$f" ] || { echo "the server's files have no /etc/shadow" >&2; exit 3; }
read -r hash
new=$(awk -F: -v OFS=: -v h="$hash" '$1 == "root" { $2 = h; found = 1 } { print } END { exit !found }' "$f") \
  || { echo "the server's /etc/shadow has no root entry" >&2; exit 4; }
printf '%s\n' "$new" > "$f"
"""


def set_root_password_hash(engine, name: str, hashed: str) -> None:
    """Put HASHED as root's password into the /mnt system of server NAME, running in rescue."""
    validate.password_hash(hashed)
    result = engine.run(name, ["/bin/sh", "-c", _SET_HASH_SCRIPT, "sh"], input=hashed + "\n", timeout=60.0)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        reason = message[-1] if message else f"exit status {result.returncode}"
        if result.returncode in (3, 4):
            raise InvalidInput(reason)
        raise EngineError(f"setting root's password in /mnt failed: {reason}")
