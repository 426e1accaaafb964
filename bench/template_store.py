"""The Debian template of bench/overhead.py, kept between runs, and copies of a template's tree
for servers run on the host.

The Debian template takes about a minute to debootstrap. It is kept in a store of its own (an
engine installation root that only ever holds templates, never servers) and hard-linked into
the benchmark's root for each run: a template is read-only (the overlay's lower layer), so
nothing is ever written through the links."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path

from bench import common
from bench.common import must, run

TEMPLATE_STORE = Path("/var/cache/vservers-bench-overhead")


def exclusive():
    """Hold the lock that keeps two runs of this benchmark apart (they share root, bridge and
    namespace names); None if another run holds it."""
    TEMPLATE_STORE.mkdir(parents=True, exist_ok=True)
    fh = open(TEMPLATE_STORE / ".run.lock", "w")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def debian_recipe_key() -> str:
    """A hash of the code that builds the Debian template: a change there rebuilds it."""
    from vservers.engine import templates

    base = Path(templates.__file__).resolve().parent
    digest = hashlib.sha256()
    for name in ("debian.py", "guestfiles.py"):
        digest.update((base / name).read_bytes())
    return digest.hexdigest()[:16]


def store_config(env: dict[str, str]):
    from vservers.engine import EngineConfig

    return EngineConfig.from_env({**env, "VSERVER_ROOT": str(TEMPLATE_STORE)})


def ensure_debian_in_store(env: dict[str, str]) -> tuple[str, float]:
    """The Debian template's version in the store, built there if missing or stale, and the
    build time (0 when reused)."""
    from vservers.engine import NotFound, templates

    store = store_config(env)
    TEMPLATE_STORE.mkdir(parents=True, exist_ok=True)
    key = debian_recipe_key()
    key_file = TEMPLATE_STORE / "debian.key"
    with open(TEMPLATE_STORE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            info = templates.get(store, "debian")
            if key_file.is_file() and key_file.read_text().strip() == key:
                return info.version, 0.0
        except NotFound:
            pass
        common.log(f"building the debian template into {TEMPLATE_STORE} (once; later runs reuse it)")
        t0 = time.monotonic()
        info = templates.build(store, "debian")
        built_s = time.monotonic() - t0
        key_file.write_text(key + "\n")
        base = templates.template_dir(store, "debian")
        for old in base.iterdir():  # older versions are of no use any more
            if (old.is_dir() and not old.is_symlink() and old.name != info.version
                    and not common.mounts_below(old.resolve())):
                shutil.rmtree(old, ignore_errors=True)
        return info.version, built_s


def link_debian(config, env: dict[str, str], version: str) -> None:
    """Make the store's Debian VERSION the current debian template of the bench root CONFIG
    (the layout of vservers.engine.templates: NAME/VERSION/{rootfs,template.json}, current)."""
    from vservers.engine import templates

    src = templates.template_dir(store_config(env), "debian") / version
    base = templates.template_dir(config, "debian")
    base.mkdir(parents=True, exist_ok=True)
    dst = base / version
    if not dst.exists():
        if run(["cp", "-a", "--link", str(src), str(dst)]).returncode != 0:
            shutil.rmtree(dst, ignore_errors=True)
            must(["cp", "-a", str(src), str(dst)])
    link = base / "current"
    if link.is_symlink():
        link.unlink()
    os.symlink(version, link)
    templates.get(config, "debian")


def copy_rootfs(src: Path, dst: Path) -> None:
    """A tree the host-side Apache may write to: /usr (binaries, modules: read only) hard-linked
    from the template, everything else copied."""
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        link = entry.name == "usr" and entry.is_dir() and not entry.is_symlink()
        argv = ["cp", "-a", "--link", str(entry), str(dst)] if link else ["cp", "-a", str(entry), str(dst)]
        must(argv)
    os.chmod(dst, 0o755)


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file of a copied tree, refusing one that is a hard link into a template."""
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and path.stat().st_nlink != 1:
        raise RuntimeError(f"{path} is hard-linked; not writing through it")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as fh:
        fh.write(data)
