"""The authorized_keys file each node keeps from the database: <VSERVER_ROOT>/ssh/authorized_keys,
one line per OTHER node's migration key (Node.ssh_public_key), each forced to rsync into this
node's incoming/ only (vservers.engine.migrate.authorized_keys_line: restrict, rrsync -wo).
deploy/sshd/vservers-migrate.conf makes sshd read it for root.

The worker writes it at start and at every reconcile run of its node, from the database (the
one thing nodes trust), atomically (a temporary file renamed over it: sshd reads either the
old file or the new one, never half of one) and only when it changed. A node whose key does
not validate is left out with a log line: one bad row must not lock every node out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..engine import migrate
from ..engine.config import EngineConfig
from ..engine.errors import InvalidInput

log = logging.getLogger(__name__)

FILE_NAME = "authorized_keys"
HEADER = "# Written by the vservers worker from the panel's database (vservers.nodes.keys); edits are lost.\n"


def path_of(config: EngineConfig) -> Path:
    return config.root / migrate.KEY_DIR / FILE_NAME


def content(config: EngineConfig, keys: Iterable[tuple[str, str]]) -> str:
    """The file for KEYS, (node name, public key) of the other nodes, in the order given."""
    lines = [HEADER]
    for name, key in keys:
        if not key.strip():
            continue
        try:
            lines.append(migrate.authorized_keys_line(key, config) + "\n")
        except InvalidInput as exc:
            log.error("node %s: its migration key is left out of %s: %s", name, path_of(config), exc)
    return "".join(lines)


def write(config: EngineConfig, text: str) -> bool:
    """TEXT into the file, if it differs from what is there; True if written."""
    path = path_of(config)
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_private(path, text)
    return True


def write_private(path: Path, text: str) -> None:
    """TEXT into PATH, readable by its owner only (0600), atomically: written beside it,
    fsync'ed and renamed over it (the keys file, the node's env file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sync(config: EngineConfig, own_node_ids: Iterable[int]) -> bool:
    """The file from the database: the keys of the active nodes other than OWN_NODE_IDS (the
    nodes this worker serves). True if it changed."""
    from ..models import Node

    others = (
        Node.objects.filter(is_active=True).exclude(pk__in=list(own_node_ids)).exclude(ssh_public_key="")
        .order_by("name").values_list("name", "ssh_public_key")
    )
    changed = write(config, content(config, others))
    if changed:
        log.info("wrote %s (%s other nodes' keys)", path_of(config), len(others))
    return changed
