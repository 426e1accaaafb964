"""Reinstall: a server rebuilt from a template, keeping everything but its files.

A server's own files are all in its disk image (the template below is shared and read-only),
so a reinstall is a fresh empty image in place of the old one, and the template version the
server starts from. The new image is made beside the old one and renamed over it under the
server's lock: rename is atomic, so a crash at any line leaves the old image or the new one
whole, never a half-made disk. config.json (the template and version) is written last.

What a crash leaves, and what repairs it:
 - before the rename: the old server, untouched (a stray image.reinstall is removed by the
   next reinstall, or by delete with the server's directory);
 - after the rename, before config.json: an empty disk over the server's old template
   version, which starts as a fresh server of that version; the reinstall asked again (the
   panel's operation is failed as interrupted, and the tenant reinstalls again) finishes it.
"""

from __future__ import annotations

import dataclasses
import os

from . import faults, templates
from .spec import Status
from .state import fsync_path, write_json

FRESH_IMAGE = "disk.img.reinstall"


def reinstall(engine, name: str, template: str | None = None) -> Status:
    from .lifecycle import DISK_GROW_PENDING, STOP_TIMEOUT, make_disk_image

    with engine._lock(name):
        spec = engine.spec(name)
        info = templates.get(engine.config, template or spec.template)  # its current version
        server_dir = engine._dir(name)
        image = server_dir / "disk.img"
        engine._stop_locked(name, STOP_TIMEOUT)
        faults.checkpoint("reinstall", "stopped")
        storage = engine._btrfs_storage(name)
        if storage is not None:
            # A new subvolume in place of the old (qgroups.create deletes it first): a crash
            # in between leaves no files, and the reinstall asked again makes them.
            from . import qgroups

            qgroups.create(storage.pool, storage.subvolume, spec.limits.disk_bytes, spec.uid_base)
            (server_dir / "usage.json").unlink(missing_ok=True)
            new_spec = dataclasses.replace(spec, template=info.name, template_version=info.version)
            write_json(server_dir / "config.json", new_spec.to_json())
            engine._start_locked(new_spec)
            return engine.status(name)
        fresh = server_dir / FRESH_IMAGE
        fresh.unlink(missing_ok=True)  # a crashed reinstall's, never attached to anything
        # The size the server has: its limit, or more if a grow was cut short.
        size = max(spec.limits.disk_bytes, image.stat().st_size if image.exists() else 0)
        try:
            make_disk_image(fresh, size, spec.uid_base)
            fsync_path(fresh)
        except BaseException:
            fresh.unlink(missing_ok=True)
            raise
        faults.checkpoint("reinstall", "made")
        os.replace(fresh, image)
        fsync_path(server_dir)
        faults.checkpoint("reinstall", "swapped")
        (server_dir / DISK_GROW_PENDING).unlink(missing_ok=True)  # the new image has its size
        (server_dir / "usage.json").unlink(missing_ok=True)  # the old disk's usage
        new_spec = dataclasses.replace(spec, template=info.name, template_version=info.version)
        write_json(server_dir / "config.json", new_spec.to_json())
        engine._start_locked(new_spec)
    return engine.status(name)
