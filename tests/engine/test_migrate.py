"""Cold migration between two installations on this machine (vservers/engine/migrate.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vservers.engine import InvalidInput
from vservers.engine.config import EngineConfig


def _config(root: Path) -> EngineConfig:
    return EngineConfig.from_env({"VSERVER_ROOT": str(root), "VSERVER_BRIDGE": "vsmigk0",
                                  "VSERVER_GATEWAY": "198.19.250.1/24", "VSERVER_UID_BASE": "60000000"})


def test_the_node_key_is_made_once_and_its_line_forces_rrsync_into_incoming(tmp_path):
    from vservers.engine import migrate

    config = _config(tmp_path / "root")
    private, public = migrate.ensure_node_key(config)
    assert private == tmp_path / "root" / "ssh" / "id_ed25519"
    assert public.startswith("ssh-ed25519 ")
    assert (private.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "root" / "incoming").stat().st_mode & 0o777) == 0o700
    # The same pair on the next call, and ssh-keygen agrees the two halves belong together.
    assert migrate.ensure_node_key(config) == (private, public)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == public.split()[:2]

    line = migrate.authorized_keys_line(public, config)
    options, key = line.split('" ', 1)
    assert options == f'restrict,command="/usr/bin/rrsync -wo -no-lock -no-del {tmp_path}/root/incoming'
    assert key.split()[:2] == public.split()[:2]


@pytest.mark.parametrize("bad", [
    "",
    "ssh-ed25519",
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
    "ssh-ed25519 not-base64!!",
    "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ",  # an RSA blob under the ed25519 name
    'command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP',
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP",
])
def test_authorized_keys_line_refuses_anything_but_one_public_key(tmp_path, bad):
    from vservers.engine import migrate

    with pytest.raises(InvalidInput):
        migrate.authorized_keys_line(bad, _config(tmp_path / "root"))


def test_a_comment_that_is_not_plain_is_dropped(tmp_path):
    from vservers.engine import migrate

    config = _config(tmp_path / "root")
    _, public = migrate.ensure_node_key(config)
    key = " ".join(public.split()[:2])
    assert migrate.authorized_keys_line(key + ' x" y', config).endswith(key)
    assert migrate.authorized_keys_line(key + " node-b@host", config).endswith(key + " node-b@host")
