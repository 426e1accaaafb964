"""Templates: read-only guest root filesystems shared by every VPS built on them.

Layout under the state root::

    templates/NAME/VERSION/rootfs/        the guest's files, owned by host root
    templates/NAME/VERSION/template.json  TemplateInfo
    templates/NAME/current                symlink to the newest VERSION

A rebuild makes a new VERSION and moves `current`; servers keep the version they were
created from, so a rebuild never changes the files of an existing server.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import validate
from ..config import EngineConfig
from ..errors import NotFound
from ..state import claim, locked, read_json, release, remove_abandoned, write_json


@dataclass(frozen=True)
class TemplateInfo:
    """One built version of a template: how its guest boots and stops."""

    name: str
    version: str
    init: tuple[str, ...]  # argv of the guest's PID 1
    halt_signal: int  # what asks that init to shut down cleanly
    service_dir: str  # runit service directory inside the guest
    account_tool: str  # "busybox" (adduser/deluser) or "shadow" (useradd/userdel)
    built_at: float = 0.0
    size_bytes: int = 0

    def to_json(self) -> dict:
        data = asdict(self)
        data["init"] = list(self.init)
        return data

    @classmethod
    def from_json(cls, data: dict) -> TemplateInfo:
        data = dict(data)
        data["init"] = tuple(data["init"])
        return cls(**data)


def template_dir(config: EngineConfig, name: str) -> Path:
    return config.templates_dir / validate.template_name(name)


def make_template_dir(config: EngineConfig, name: str) -> Path:
    """NAME's directory, made if missing, in a templates directory only root may enter.

    A template's tree holds set-uid files owned by host root (su, passwd, mount of a Debian
    guest), which are host root's to run for anyone who can reach them: as LXC's container
    directories, the tree must be out of reach of the host's other users. Guests never walk
    this path: the setup child (host root) clones the tree onto their own mount.
    """
    config.templates_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(config.templates_dir, 0o700)  # one made 0755 by an older version
    base = template_dir(config, name)
    base.mkdir(exist_ok=True)
    return base


def rootfs_path(config: EngineConfig, name: str, version: str) -> Path:
    return template_dir(config, name) / version / "rootfs"


def get(config: EngineConfig, name: str, version: str | None = None) -> TemplateInfo:
    """The template's info; the current version unless VERSION is given."""
    base = template_dir(config, name)
    if version is None:
        link = base / "current"
        if not link.is_symlink():
            raise NotFound(f"template {name!r} is not built (run: vserver template build {name})")
        version = os.readlink(link)
    data = read_json(base / version / "template.json")
    if data is None:
        raise NotFound(f"template {name!r} version {version!r} does not exist")
    return TemplateInfo.from_json(data)


def list_all(config: EngineConfig) -> list[tuple[TemplateInfo, bool]]:
    """Every built version of every template, with whether it is the current one."""
    found: list[tuple[TemplateInfo, bool]] = []
    if not config.templates_dir.is_dir():
        return found
    for base in sorted(config.templates_dir.iterdir()):
        link = base / "current"
        current = os.readlink(link) if link.is_symlink() else None
        for version_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
            data = read_json(version_dir / "template.json")
            if data is not None:
                found.append((TemplateInfo.from_json(data), version_dir.name == current))
    return found


def new_version(config: EngineConfig, name: str) -> tuple[str, Path]:
    """A fresh, empty staging directory for building a new version of NAME."""
    base = make_template_dir(config, name)
    while True:
        import secrets  # random, hmac, hashlib: only a build needs them, not every CLI start

        # Sortable by time, unique by the random tail even for builds within one second.
        version = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        staging = base / f".build-{version}"
        if not (base / version).exists():
            try:
                staging.mkdir()
                break
            except FileExistsError:
                continue
    claim(staging)
    (staging / "rootfs").mkdir()
    return version, staging


def publish(config: EngineConfig, staging: Path, info: TemplateInfo) -> TemplateInfo:
    """Move a finished build into place and point `current` at it (atomic rename)."""
    size = sum(
        entry.stat(follow_symlinks=False).st_blocks * 512
        for entry in (staging / "rootfs").rglob("*")
    )
    info = TemplateInfo(**{**asdict(info), "built_at": time.time(), "size_bytes": size})
    write_json(staging / "template.json", info.to_json())
    base = template_dir(config, info.name)
    with locked(base / ".lock"):
        final = base / info.version
        os.rename(staging, final)
        release(staging)
        tmp_link = base / f".current.{os.getpid()}"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(info.version, tmp_link)
        os.replace(tmp_link, base / "current")
    return info


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    release(staging)


def remove_abandoned_builds(config: EngineConfig) -> list[Path]:
    """The staging directories of builds whose process died (a worker killed mid-build):
    removed, so they do not hold disk space for ever. Builds in progress are left alone."""
    removed: list[Path] = []
    if config.templates_dir.is_dir():
        for base in sorted(config.templates_dir.iterdir()):
            if base.is_dir() and not base.is_symlink():
                removed += remove_abandoned(base, ".build-")
    return removed


def build(config: EngineConfig, name: str) -> TemplateInfo:
    """Build a new version of a known template."""
    if name == "busybox":
        from .busybox import build_busybox

        return build_busybox(config)
    if name == "debian":
        from .debian import build_debian

        return build_debian(config)
    raise NotFound(f"unknown template {name!r} (known: busybox, debian)")


HALT_SIGNALS = {"busybox": signal.SIGUSR2, "debian": signal.SIGINT}
