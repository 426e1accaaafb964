"""The authorized_keys file a node keeps from the database (vservers.nodes.keys): one forced
rrsync line per OTHER node's key, written atomically and only when it changed, a bad key left
out without locking the others out; written by the worker's reconcile run too."""

from __future__ import annotations

import os
import subprocess

import pytest

from vservers.engine import migrate
from vservers.engine.config import EngineConfig
from vservers.models import Node
from vservers.nodes import keys

pytestmark = pytest.mark.django_db


def make_key(directory, name: str) -> str:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vservers-migrate@{name}", "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)
    return (directory / f"{name}.pub").read_text().strip()


def test_the_file_holds_the_other_nodes_keys_and_is_rewritten_only_when_they_change(tmp_path):
    config = EngineConfig.from_env({"VSERVER_ROOT": str(tmp_path / "root")})
    key_a, key_b, key_c = (make_key(tmp_path, name) for name in ("a", "b", "c"))
    me = Node.objects.create(name="a", queue_name="node-a", ssh_public_key=key_a)
    Node.objects.create(name="b", queue_name="node-b", ssh_public_key=key_b)
    Node.objects.create(name="c", queue_name="node-c", ssh_public_key=key_c)
    Node.objects.create(name="gone", queue_name="node-gone", ssh_public_key=key_c, is_active=False)
    Node.objects.create(name="new", queue_name="node-new")  # not joined yet: no key

    assert keys.sync(config, [me.pk])
    path = keys.path_of(config)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == [migrate.authorized_keys_line(key_b, config), migrate.authorized_keys_line(key_c, config)]
    assert all(line.startswith('restrict,command="/usr/bin/rrsync -wo ') for line in lines)
    assert key_a.split()[1] not in path.read_text()  # never its own key
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)

    # Unchanged: not written again (same inode, no temporary file left).
    inode = path.stat().st_ino
    assert not keys.sync(config, [me.pk])
    assert path.stat().st_ino == inode
    assert sorted(os.listdir(path.parent)) == ["authorized_keys"]

    # A node's key changes, another's is garbage: rewritten (renamed over), the garbage left out.
    key_d = make_key(tmp_path, "d")
    Node.objects.filter(name="b").update(ssh_public_key=key_d)
    Node.objects.filter(name="c").update(ssh_public_key='ssh-ed25519 AAAA" ; rm -rf / #')
    assert keys.sync(config, [me.pk])
    assert path.stat().st_ino != inode
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == [migrate.authorized_keys_line(key_d, config)]
    assert "rm -rf" not in path.read_text()


def test_the_reconcile_run_writes_it(world, tmp_path):
    from vservers.reconcile import reconcile_node

    config = world.engine.config
    path = keys.path_of(config)
    other = Node.objects.create(name="other", queue_name="node-other", ssh_public_key=make_key(tmp_path, "o"))
    try:
        path.unlink(missing_ok=True)
        reconcile_node(world.node.pk)
        assert path.read_text().count("\n") == 2  # the header and the other node's line
        assert migrate.authorized_keys_line(other.ssh_public_key, config) in path.read_text()
    finally:
        path.unlink(missing_ok=True)
