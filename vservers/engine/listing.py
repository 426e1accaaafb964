"""The servers of an installation as their files and /proc tell, read without the engine's
machinery: `vserver list` shows a stopped server from its config.json and usage.json alone.

Importing lifecycle (Engine, the spec dataclasses and what they import: dataclasses, inspect,
pathlib, ipaddress, templates) took half of a `vserver list` of stopped servers (~100 of
~180 M instructions, callgrind, 2026-12-07); this module needs os, json and procfs. What a
running server uses is the kernel's word, which Engine.status asks; this module only says
which servers run. It reads the same files as Engine (config.json, runtime.json, usage.json)
and decides "running" by the same rule (procfs.still_running), and never writes.
"""

from __future__ import annotations

import os

from .procfs import still_running
from .state import read_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~8 ms)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


def servers(root: str) -> Iterator[tuple[str, dict[str, Any], int | None]]:
    """(name, config.json, its init's pid or None if it is stopped) of each server under the
    state root ROOT, by name. One deleted meanwhile (or half created) is left out, as
    Engine.list does."""
    servers_dir = os.path.join(root, "servers")
    try:
        names = sorted(os.listdir(servers_dir))
    except FileNotFoundError:
        return
    for name in names:
        server_dir = os.path.join(servers_dir, name)
        try:
            config = read_json(os.path.join(server_dir, "config.json"))
            runtime = read_json(os.path.join(server_dir, "runtime.json"))
        except NotADirectoryError:
            continue
        if config is None:
            continue
        if runtime and still_running(runtime["init_pid"], runtime["init_start_time"], runtime.get("boot_id", "")):
            yield name, config, runtime["init_pid"]
        else:
            yield name, config, None


def disk_used(root: str, name: str) -> int:
    """The bytes a stopped server's files took on its disk when it last stopped (usage.json),
    0 if never measured: what Engine.status says of a stopped server. A stop writes it without
    fsync, so a host crash may leave it torn: that too reads as 0."""
    try:
        remembered = read_json(os.path.join(root, "servers", name, "usage.json")) or {}
        return int(remembered.get("disk_used_bytes", 0))
    except (ValueError, AttributeError):  # torn: not JSON (JSONDecodeError), or not an object
        return 0
