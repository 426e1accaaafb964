"""Cold migration between two installations on this machine (vservers/engine/migrate.py)."""

from __future__ import annotations

import contextlib
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


# -- what the source's key can do on the target ---------------------------------------------------


def _ssh(sshd, tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd['port']} {sshd['host_key']}\n")
    target = sshd["target"]
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(target.identity_file), "-p", str(sshd["port"]), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}", "root@127.0.0.1", *command],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


def _rsync(sshd, tmp_path: Path, *paths: str) -> subprocess.CompletedProcess:
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd['port']} {sshd['host_key']}\n")
    target = sshd["target"]
    ssh = (f"ssh -F /dev/null -i {target.identity_file} -p {sshd['port']} -o BatchMode=yes "
           f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known}")
    return subprocess.run(["rsync", "-a", "-e", ssh, *paths], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_the_sources_key_can_only_write_into_incoming(engine, target, sshd, tmp_path):
    incoming = target.config.root / "incoming"
    payload = tmp_path / "payload"
    payload.write_text("data\n")
    outside = tmp_path / "outside"
    remote = "root@127.0.0.1:"

    # Positive control: the same key without the forced command runs a shell, reads the target's
    # files and writes anywhere.
    sshd["authorized_keys"].write_text(sshd["public"] + "\n")
    assert _ssh(sshd, tmp_path, "id", "-u").stdout == "0\n"
    assert _rsync(sshd, tmp_path, f"{remote}/etc/hostname", str(tmp_path / "read")).returncode == 0
    assert (tmp_path / "read").read_text() == Path("/etc/hostname").read_text()
    assert _rsync(sshd, tmp_path, str(payload), f"{remote}{outside}/").returncode == 0
    assert (outside / "payload").read_text() == "data\n"
    shutil.rmtree(outside)
    (tmp_path / "read").unlink()

    # As a node's authorized_keys has it: rsync into incoming/ and nothing else.
    from vservers.engine import migrate

    sshd["authorized_keys"].write_text(migrate.authorized_keys_line(sshd["public"], target.config) + "\n")
    shell = _ssh(sshd, tmp_path, "touch", str(tmp_path / "pwned"))
    assert shell.returncode != 0 and not (tmp_path / "pwned").exists()
    assert _ssh(sshd, tmp_path, "id", "-u").stdout == ""
    assert _rsync(sshd, tmp_path, str(payload), f"{remote}box/").returncode == 0
    assert (incoming / "box" / "payload").read_text() == "data\n"
    read = _rsync(sshd, tmp_path, f"{remote}box/payload", str(tmp_path / "read"))
    assert read.returncode != 0 and "reading from write-only server is not allowed" in read.stderr
    assert not (tmp_path / "read").exists()
    for where in (f"{outside}/", "../outside/", "box/../../outside/"):
        assert _rsync(sshd, tmp_path, str(payload), remote + where).returncode != 0 or not outside.exists()
    assert not outside.exists() and not (target.config.root / "outside").exists()
    # rsync's own way out (a symbolic link it was sent, then a write through it) is closed too.
    link_dir = tmp_path / "linkdir"
    link_dir.mkdir()
    (link_dir / "escape").symlink_to(outside)
    _rsync(sshd, tmp_path, f"{link_dir}/", f"{remote}box/")
    _rsync(sshd, tmp_path, str(payload), f"{remote}box/escape/")
    assert not outside.exists()
    shutil.rmtree(incoming / "box")


def test_a_wrong_host_key_or_no_sshd_is_refused_in_one_sentence(engine, target, sshd, make_server, tmp_path):
    import dataclasses

    from vservers.engine import EngineError

    name = make_server("mig-key", "198.19.31.12/18", start=False)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other_key = (tmp_path / "other.pub").read_text()
    with pytest.raises(EngineError) as wrong:
        engine.migrate_send(name, dataclasses.replace(sshd["target"], known_host_key=other_key))
    assert "host key" in str(wrong.value) and "\n" not in str(wrong.value)
    assert not (target.config.root / "incoming" / name).exists()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(EngineError, match="refused the connection"):
        engine.migrate_send(name, dataclasses.replace(sshd["target"], port=closed))
    engine.start(name)  # the source is as it was
    assert engine.status(name).state == "running"
    with pytest.raises(Exception, match="is running: stop it before it is migrated"):
        engine.migrate_send(name, sshd["target"])


# -- kill -9 in the middle ----------------------------------------------------------------------


def _run_until_stopped(env: dict[str, str], fault: str, *args: str) -> None:
    """Run `vserver ARGS` (in a session of its own) until it stops itself at FAULT, then
    SIGKILL it and every process it started (rsync, ssh)."""
    import signal

    from tests.engine.test_backups import _stopped, _until

    proc = subprocess.Popen([sys.executable, "-m", "vservers.engine.cli", *args], text=True,
                            env={**os.environ, **env, "VSERVER_TEST_FAULT": fault}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    try:
        _until(lambda: _stopped(proc.pid) or proc.poll() is not None, f"vserver to reach {fault}")
        assert proc.poll() is None, f"vserver ended before {fault}: {proc.stderr.read() if proc.stderr else ''}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _sessions_ended(sshd) -> None:
    """Wait until the target's sshd has no connection left (the killed sender's rsync on the
    target sees its input end and exits)."""
    from tests.engine.test_backups import _until

    children = Path(f"/proc/{sshd['pid']}/task/{sshd['pid']}/children")
    _until(lambda: children.read_text().strip() == "", "the target's rsync to end")


def test_a_send_killed_mid_copy_leaves_the_source_startable_and_discard_removes_the_partial_copy(
        engine, target, sshd, make_server):
    from tests.engine.helpers import wait_for_http
    from tests.leaks import TEST_ENV

    # A large sparse image: rsync reads (and sends) its holes too, so the copy is under way
    # when the sender stops itself.
    name = make_server("mig-kill", "198.19.31.13/18", start=False, disk_bytes=4 * 2**30)
    _run_until_stopped(TEST_ENV, "migrate-send:copying-image", "migrate", "send", name, "--to",
                       f"root@127.0.0.1:{sshd['port']}:{target.config.root}", "--host-key", sshd["host_key"],
                       "--template")
    _sessions_ended(sshd)
    incoming = target.config.root / "incoming" / name
    # Cut mid-copy (the sender stops itself once 16 MiB are sent): the image never got its
    # name (rsync writes into a temporary file); config.json, sent first, may be there.
    assert incoming.is_dir() and not (incoming / "disk.img").exists()
    assert target.incoming() == [name]
    with pytest.raises(InvalidInput, match="has no disk.img|has no config.json"):
        target.migrate_receive(name, addresses=[TARGET_IP])
    assert target.names() == []
    target.migrate_discard(name)
    target.migrate_discard(name)  # idempotent
    assert not incoming.exists() and target.incoming() == []

    engine.start(name)
    wait_for_http("198.19.31.13")


@pytest.mark.parametrize("phase", ["planned", "moved", "installed"])
def test_a_receive_killed_at_any_phase_is_finished_by_the_next_and_delete_leaves_nothing(
        engine, target, sshd, make_server, phase):
    from tests.engine.helpers import wait_for_http
    from tests.leaks import SECOND_ENV

    name = make_server("mig-recv", "198.19.31.14/18", start=False)
    engine.migrate_send(name, sshd["target"], ship_template=True)
    _run_until_stopped(SECOND_ENV, f"migrate-receive:{phase}", "migrate", "receive", name, "--ip", TARGET_IP)
    # Never a half server that list shows: only a whole config.json makes one.
    listed = [status.name for status in target.list()]
    assert listed == ([name] if phase == "installed" else [])
    assert target.incoming() == [name]
    spec = target.migrate_receive(name)
    assert spec.addresses == (TARGET_IP,)  # the plan's, as the killed receive made it
    assert target.incoming() == [] and not (target.config.root / "receiving" / f"{name}.json").exists()
    assert target.migrate_receive(name) == spec  # again: nothing to do
    target.start(name)
    wait_for_http(TARGET_IP.split("/")[0], bridge=target.config.bridge)
    target.delete(name)
    assert not target.config.server_dir(name).exists()


def test_a_half_received_server_is_removed_by_delete_or_discard(engine, target, sshd, make_server):
    from tests.leaks import SECOND_ENV

    name = make_server("mig-half", "198.19.31.15/18", start=False)
    for remove in ("delete", "discard"):
        engine.migrate_send(name, sshd["target"], ship_template=True)
        _run_until_stopped(SECOND_ENV, "migrate-receive:moved", "migrate", "receive", name, "--ip", TARGET_IP)
        assert target.config.server_dir(name).is_dir()
        if remove == "delete":
            target.delete(name)
            target.migrate_discard(name)
        else:
            target.migrate_discard(name)
        assert not target.config.server_dir(name).exists()
        assert target.incoming() == [] and target.names() == []


# -- what a hostile source may ship -------------------------------------------------------------


def _tamper_config(incoming: Path, **changes) -> None:
    import json

    data = json.loads((incoming / "config.json").read_text())
    data.update(changes)
    (incoming / "config.json").write_text(json.dumps(data))


def _symlinked_image(incoming: Path) -> None:
    (incoming / "disk.img").unlink()
    (incoming / "disk.img").symlink_to("/etc/passwd")


def _device_in_template(incoming: Path) -> None:
    os.mknod(incoming / "template" / "rootfs" / "sda", 0o666 | 0o060000, os.makedev(8, 0))


def _foreign_base(incoming: Path) -> None:
    import json

    data = json.loads((incoming / "config.json").read_text())
    _tamper_config(incoming, uid_base=data["uid_base"] + 3 * 65536 + 100)


def _corrupt_image(incoming: Path) -> None:
    with open(incoming / "disk.img", "r+b") as fh:
        fh.seek(1024)  # the ext4 superblock
        fh.write(b"\xff" * 1024)


HOSTILE = {
    "another name": (lambda p: _tamper_config(p, name="other"), "names server 'other'"),
    "a bad name": (lambda p: _tamper_config(p, name="../x"), "names server '../x'"),
    "an address outside the network": (lambda p: _tamper_config(p, addresses=["10.1.2.3/8"]),
                                       "not in the bridge network"),
    "a hostile address": (lambda p: _tamper_config(p, addresses=["198.19.64.255/18;reboot"]), "invalid address"),
    "a template path": (lambda p: _tamper_config(p, template="../x"), "invalid template name"),
    "a template version path": (lambda p: _tamper_config(p, template_version="../../etc"),
                                "invalid template version"),
    "an unknown field": (lambda p: _tamper_config(p, evil=1), "unknown fields: evil"),
    "limits out of bounds": (lambda p: _tamper_config(p, limits={"disk_bytes": 2**60}), "out of range"),
    "a uid base out of bounds": (lambda p: _tamper_config(p, uid_base=0), "outside 65536"),
    "a uid base its files are not in": (_foreign_base, "an owner outside its range"),
    "an image that is a symlink": (_symlinked_image, "is not a regular file"),
    "a damaged filesystem": (_corrupt_image, "is not a clean ext4 filesystem"),
    "a device file in the template": (_device_in_template, "holds a device file (rootfs/sda)"),
}


@pytest.fixture(scope="module")
def sent_once(tmp_path_factory) -> dict:
    """The first hostile case's shipment as its send left it in the target's incoming/, kept
    for the other cases: each tampers with a copy of what a real send wrote."""
    return {"directory": tmp_path_factory.mktemp("shipment") / "mig-bad"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_shipment_is_refused_in_one_sentence_and_nothing_is_installed(
        engine, target, make_server, sent_once, request, case):
    tamper, words = HOSTILE[case]
    name = "mig-bad"
    incoming = target.config.root / "incoming" / name
    kept = sent_once["directory"]
    if not kept.exists():
        sshd = request.getfixturevalue("sshd")
        make_server(name, "198.19.31.16/18")  # started once: its disk has files of its own
        engine.stop(name)
        engine.migrate_send(name, sshd["target"], ship_template=True)
        subprocess.run(["cp", "-a", "--sparse=always", "--", str(incoming), str(kept)], check=True)
    else:
        from vservers.engine import migrate

        migrate.ensure_incoming(target.config)  # as the target's join made it
        subprocess.run(["cp", "-a", "--sparse=always", "--", str(kept), str(incoming)], check=True)
    tamper(incoming)
    with pytest.raises(InvalidInput) as refused:
        target.migrate_receive(name, addresses=[TARGET_IP] if "address" not in case else None)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert target.names() == [] and not target.config.server_dir(name).exists()
    assert not (target.config.root / "receiving" / f"{name}.json").exists()
    assert not (target.config.templates_dir / "busybox").exists()  # nor the template shipped with it
    target.migrate_discard(name)
    assert target.incoming() == []
