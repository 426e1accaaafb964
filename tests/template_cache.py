"""The Debian template, built by debootstrap once per `make test` and lent to later installations.

A Debian build is about a minute of dpkg's work, the same every time. A session with the
engine's tests builds it for real (tests/prebuild.py, in the background from the session's
start: the cold path a new machine takes) and keeps the finished version directory here, inside
the checkout's var/cache: a clean clone (CI's) starts without it, so nothing left on the machine
by an earlier run can stand in for that build. The engine's tests get it lent.
The cluster tests of the PostgreSQL pass (tests/panel/test_cluster_migrate.py) then get the
same version hard-linked into node a's installation instead of a second debootstrap; a session
that finds no kept version (those tests run alone) builds it itself.

The kept copy is keyed by the template's recipe (the engine's template modules), so a changed
recipe is built anew instead of lent. Templates are read-only to everything that uses them
(guests write into their own upper layer), which is what makes hard links safe to share.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.leaks import TEST_CACHE

NAME = "debian"
RECIPE_MODULES = ("__init__.py", "debian.py", "guestfiles.py")


def recipe_key() -> str:
    """What a built Debian template depends on in this checkout: the modules that build it."""
    from vservers.engine import templates

    source = Path(templates.__file__).parent
    digest = hashlib.sha256()
    for module in RECIPE_MODULES:
        digest.update(module.encode() + b"\0" + (source / module).read_bytes())
    return digest.hexdigest()[:16]


def kept_dir() -> Path:
    return Path(TEST_CACHE) / "templates" / f"{NAME}-{recipe_key()}"


def keep(config, info) -> None:
    """Keep INFO's version directory of CONFIG's installation for later installations."""
    from vservers.engine import templates

    kept = kept_dir()
    kept.parent.mkdir(parents=True, exist_ok=True)
    staging = kept.with_name(f".{kept.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    _link_tree(templates.template_dir(config, NAME) / info.version, staging)
    shutil.rmtree(kept, ignore_errors=True)
    os.rename(staging, kept)


def lend(config):
    """The kept Debian template in CONFIG's installation (as its current version), or None when
    none is kept for this recipe."""
    from vservers.engine import templates

    kept = kept_dir()
    try:
        info = templates.TemplateInfo.from_json(json.loads((kept / "template.json").read_text()))
    except (OSError, ValueError):
        return None
    base = templates.make_template_dir(config, NAME)
    _link_tree(kept, base / info.version)
    current = base / "current"
    if current.is_symlink():
        current.unlink()
    os.symlink(info.version, current)
    return templates.get(config, NAME)


def _link_tree(source: Path, target: Path) -> None:
    """SOURCE copied to TARGET with its regular files hard-linked (owners, modes, device
    nodes and links kept): seconds instead of the build's minute. A checkout on another
    filesystem than the installation gets a copy instead."""
    linked = subprocess.run(["cp", "-a", "--link", "--", str(source), str(target)], capture_output=True, text=True)
    if linked.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["cp", "-a", "--reflink=auto", "--", str(source), str(target)], check=True)
