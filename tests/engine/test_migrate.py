"""Cold migration between two installations on this machine (vservers/engine/migrate.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


# -- two installations on this machine: the tests' own (source) and the second one (target) ----

SOURCE_IP = "198.19.31.10/18"
TARGET_IP = "198.19.71.10/18"


@pytest.fixture
def target(engine):
    """The second installation (its own root, bridge vstest1 on 198.19.64.0/18, uid base
    300,000,000) as the target node, without any template: the first send ships it."""
    from tests.leaks import SECOND_ENV
    from vservers.engine import Engine, network

    config = EngineConfig.from_env(SECOND_ENV)
    other = Engine(config)
    yield other
    for name in other.names() + other.incoming():
        other.delete(name)
        other.migrate_discard(name)
    network.remove_bridge(config.bridge)
    shutil.rmtree(config.root, ignore_errors=True)


@pytest.fixture
def sshd(engine, target, tmp_path):
    """The target's sshd: it authorizes the source node's key only as migrate.authorized_keys_line
    writes it (rrsync -wo into the target's incoming/)."""
    from tests.engine.helpers import private_sshd
    from vservers.engine import migrate

    migrate.ensure_node_key(target.config)  # the target's incoming/ is made at its join
    key, public = migrate.ensure_node_key(engine.config)
    with private_sshd(tmp_path / "sshd", migrate.authorized_keys_line(public, target.config) + "\n") as info:
        info["target"] = migrate.MigrationTarget(host="127.0.0.1", port=info["port"], root=target.config.root,
                                                 identity_file=key, known_host_key=info["host_key"])
        info["public"] = public
        yield info


def _prepared(engine, make_server, name: str, ip: str = SOURCE_IP, **limits) -> str:
    from tests.engine.test_backups import PREPARE

    make_server(name, ip, **limits)
    result = engine.run(name, ["/bin/sh", "-c", PREPARE])
    assert result.returncode == 0, result.stderr
    engine.stop(name)
    return name


def _image(eng, name: str) -> Path:
    return eng.config.server_dir(name) / "disk.img"


def test_a_server_moves_with_its_files_owners_and_capabilities_and_answers_at_its_new_address(
        engine, target, sshd, make_server):
    from tests.engine.helpers import http_get, wait_for_http
    from tests.engine.test_backups import CAP_NET_RAW, comparable, file_caps_v3, set_upper_xattr, shifted, upper_tree

    name = _prepared(engine, make_server, "mig-web")
    base = engine.spec(name).uid_base
    set_upper_xattr(_image(engine, name), "root/data/a", "security.capability", file_caps_v3(1 << CAP_NET_RAW, base))
    before = upper_tree(_image(engine, name))
    calls: list[tuple[int, int]] = []

    shipped = engine.migrate_send(name, sshd["target"], ship_template=True, progress=lambda d, t: calls.append((d, t)))
    spec = engine.spec(name)
    assert shipped.bytes_total > spec.limits.disk_bytes  # image, config and the template
    assert calls[-1] == (shipped.bytes_total, shipped.bytes_total)
    assert all(done <= total == shipped.bytes_total for done, total in calls)
    incoming = target.config.root / "incoming" / name
    # --sparse: the image's holes stayed holes on the target (what it allocates is what the
    # source's allocates, give or take the blocks of a file's tail).
    source_blocks = _image(engine, name).stat().st_blocks
    assert (incoming / "disk.img").stat().st_blocks <= source_blocks + 64
    assert (incoming / "disk.img").stat().st_size == spec.limits.disk_bytes
    assert target.incoming() == [name]

    received = target.migrate_receive(name, addresses=[TARGET_IP])
    assert received.addresses == (TARGET_IP,)
    assert received.uid_base != base and received.uid_base >= target.config.uid_base  # shifted into its range
    assert target.incoming() == [] and not incoming.exists()
    assert target.status(name).state == "stopped"
    target.start(name)
    wait_for_http(TARGET_IP.split("/")[0], bridge=target.config.bridge)
    assert http_get(TARGET_IP.split("/")[0], bridge=target.config.bridge)[1] == "restored page\n"
    listed = target.run(name, ["ls", "-ln", "/var/www/index.html", "/root/data/suid"]).stdout.splitlines()
    owners = {line.split()[-1]: line.split() for line in listed}
    assert owners["/var/www/index.html"][2:4] == ["33", "33"]
    assert owners["/root/data/suid"][:4] == ["-rwsr-x---", "1", "0", "33"]  # set-uid survived the shift
    target.stop(name)
    after = upper_tree(_image(target, name))
    delta = received.uid_base - base
    assert comparable(after) == comparable(shifted(before, delta))
    assert after["root/data/a"]["xattrs"]["security.capability"] == file_caps_v3(
        1 << CAP_NET_RAW, base + delta).hex()

    # The source's copy is removed with delete once the move is done; the target's stays whole.
    engine.delete(name)
    target.start(name)
    wait_for_http(TARGET_IP.split("/")[0], bridge=target.config.bridge)
    target.delete(name)
    assert target.names() == []


def test_a_free_uid_range_on_the_targets_grid_is_kept_and_the_cli_moves_the_server(
        engine, target, sshd, make_server, tmp_path):
    """The CLI end to end, to a target whose uid grid the source's range lies on (two nodes
    with the same VSERVER_UID_BASE, as on separate machines): the range is kept, the image
    renamed, not copied, and the addresses are the server's own."""
    from tests.engine.helpers import wait_for_http
    from tests.leaks import SECOND_ENV

    name = _prepared(engine, make_server, "mig-keep", ip="198.19.31.11/18")
    base = engine.spec(name).uid_base
    # Eight ranges below the source's: on its grid, and nothing of the target's own is there.
    env = {**SECOND_ENV, "VSERVER_UID_BASE": str(base - 8 * 65536)}
    server_target = sshd["target"]
    sent = _cli(TEST_ENV_SOURCE(), "migrate", "send", name, "--to",
                f"root@127.0.0.1:{server_target.port}:{target.config.root}",
                "--host-key", sshd["host_key"], "--template")
    assert sent.returncode == 0, sent.stderr
    assert f"{name}: shipped" in sent.stdout
    # Its own address lies outside the target's network: refused, nothing installed.
    refused = _cli(env, "migrate", "receive", name)
    assert refused.returncode == 2 and "is not in the bridge network 198.19.64.0/18" in refused.stderr
    assert target.names() == []
    received = _cli(env, "migrate", "receive", name, "--ip", "198.19.71.11/18")
    assert received.returncode == 0, received.stderr
    kept = target.spec(name)
    assert kept.uid_base == base and kept.addresses == ("198.19.71.11/18",)
    target.start(name)
    wait_for_http("198.19.71.11", bridge=target.config.bridge)
    key = _cli(env, "migrate", "key")
    assert key.returncode == 0 and key.stdout.startswith("ssh-ed25519 ")
    target.delete(name)


def TEST_ENV_SOURCE() -> dict[str, str]:
    from tests.leaks import TEST_ENV

    return TEST_ENV


def _cli(env: dict[str, str], *args: str, extra: dict[str, str] | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vservers.engine.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env, **(extra or {})}, cwd=Path(__file__).resolve().parents[2],
                          **popen)
