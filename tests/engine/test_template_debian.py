"""The debian template (debootstrap + sysvinit + runit + Apache) and the guestfiles helpers.

The build test runs debootstrap once (about a minute, needs root and the network), checks the
tree, then boots it the way the engine would (new pid/mount/uts/ipc/net namespaces, /proc, /sys,
a minimal /dev, a tmpfs /run) with plain chroot instead of an idmapped overlay, serves a page
and stops it with SIGINT.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from vservers.engine import templates
from vservers.engine.config import EngineConfig
from vservers.engine.errors import EngineError, InvalidInput
from vservers.engine.templates import debian
from vservers.engine.templates.guestfiles import make_dirs, write_file, write_service

# ---------------------------------------------------------------------------------------------
# guestfiles


def test_write_file_creates_parents_content_and_mode(tmp_path):
    path = write_file(tmp_path, "etc/vserver/halt", "#!/bin/sh\n", mode=0o755)
    assert path == tmp_path / "etc/vserver/halt"
    assert path.read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "etc/vserver").stat().st_mode) == 0o755
    write_file(tmp_path, "etc/vserver/halt", "short", mode=0o600)  # replaces, truncates
    assert path.read_text() == "short"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_file_takes_absolute_paths_inside_the_root(tmp_path):
    write_file(tmp_path, "/etc/hostname", "guest\n")
    assert (tmp_path / "etc/hostname").read_text() == "guest\n"


@pytest.mark.parametrize("relpath", ["../escape", "etc/../../escape", "/..", "", "/", "./."])
def test_write_file_refuses_paths_leaving_or_naming_the_root(tmp_path, relpath):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(EngineError):
        write_file(root, relpath, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_write_file_does_not_follow_a_symlink_at_the_end(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/resolv.conf").symlink_to(outside)
    with pytest.raises(EngineError, match="symlink"):
        write_file(root, "etc/resolv.conf", "nameserver 192.0.2.1\n")
    assert outside.read_text() == "host file\n"


def test_write_file_does_not_follow_a_symlink_in_a_parent(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(outside)  # absolute: means the guest's view, not the host's
    with pytest.raises(EngineError, match="symlink"):
        write_file(root, "etc/passwd", "x")
    with pytest.raises(EngineError, match="symlink"):
        make_dirs(root, "etc/service")
    assert list(outside.iterdir()) == []


def test_write_file_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(EngineError, match="not a regular file"):
        write_file(tmp_path, "pipe", "x")


def test_write_service_dates_the_service_directory_a_second_back(tmp_path):
    """runsvdir waits for the next second before it starts the services of a directory
    changed within the current one: a template's must look changed in an earlier second
    than the service written into it."""
    run = write_service(tmp_path, "/etc/service", "httpd", "#!/bin/sh\nexec true\n")
    assert run.stat().st_mtime - (tmp_path / "etc/service").stat().st_mtime > 0.5


def test_write_service_makes_an_executable_run_script(tmp_path):
    run = write_service(tmp_path, "/etc/service", "apache2", "#!/bin/sh\nexec true\n")
    assert run == tmp_path / "etc/service/apache2/run"
    assert os.access(run, os.X_OK) and stat.S_IMODE(run.stat().st_mode) == 0o755
    with pytest.raises(InvalidInput):
        write_service(tmp_path, "/etc/service", "../x", "#!/bin/sh\n")


# ---------------------------------------------------------------------------------------------
# the host's mirror


def test_mirror_from_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian-security/\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb-src deb\n"
        "URIs: http://disabled.example/debian\n"
        "Suites: bookworm\n"
        "Enabled: no\n"
        "\n"
        "Types: deb-src deb\n"
        "URIs: cdrom:/media http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    (tmp_path / "sources.list.d/other.list.disabled").write_text("deb http://wrong.example/ bookworm main\n")
    assert debian.host_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_list_comes_first(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://one.example/debian bookworm main contrib\n"
    )
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/b.sources").write_text(
        "Types: deb\nURIs: http://two.example/debian\nSuites: bookworm\n"
    )
    assert debian.host_mirror("bookworm", tmp_path) == "https://one.example/debian"


def test_mirror_defaults_to_deb_debian_org(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://old.example/debian bullseye main\n")
    assert debian.host_mirror("bookworm", tmp_path) == debian.DEFAULT_MIRROR


# ---------------------------------------------------------------------------------------------
# building (root, debootstrap and the network)

needs_debootstrap = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debootstrap", path="/usr/sbin:/usr/bin") is None,
    reason="needs root and debootstrap",
)


def _mounts_under(path: Path) -> list[str]:
    base = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == base or p.startswith(base + "/")]


def _remove_tree(path: Path) -> None:
    assert _mounts_under(path) == [], "a build left mounts behind"
    shutil.rmtree(path, ignore_errors=True)


@needs_debootstrap
def test_failed_build_raises_and_leaves_nothing(tmp_path):
    config = EngineConfig.from_env({"VSERVER_ROOT": str(tmp_path / "state")})
    try:
        with pytest.raises(EngineError, match="debootstrap failed") as err:
            debian.build_debian(config, mirror="http://127.0.0.1:9/debian")  # nothing listens
        assert "127.0.0.1" in str(err.value)  # the tail of debootstrap's output is quoted
        base = templates.template_dir(config, "debian")
        assert [p.name for p in base.iterdir()] == []  # staging removed, no `current`
        assert templates.list_all(config) == []
    finally:
        _remove_tree(tmp_path)


@pytest.fixture(scope="module")
def built(debian_template, config):
    """The session's Debian template (built once, in the tests' state root)."""
    return config, debian_template, templates.rootfs_path(config, "debian", debian_template.version)


def _debian_versions(config):
    return [entry for entry in templates.list_all(config) if entry[0].name == "debian"]


def _chroot(rootfs: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chroot", str(rootfs), *argv],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_build_publishes_the_current_version(built):
    config, info, rootfs = built
    assert info.name == "debian"
    assert info.init == ("/sbin/init",)
    assert info.halt_signal == signal.SIGINT == templates.HALT_SIGNALS["debian"]
    assert info.service_dir == "/etc/service"
    assert info.account_tool == "shadow"
    assert info.size_bytes > 100 * 2**20
    assert templates.get(config, "debian") == info
    assert _debian_versions(config) == [(info, True)]
    base = templates.template_dir(config, "debian")
    assert not [p for p in base.iterdir() if p.name.startswith(".build-")]
    st = rootfs.stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert (rootfs / "etc/passwd").stat().st_uid == 0


@pytest.mark.slow
def test_init_is_sysvinit_with_our_inittab(built):
    _, _, rootfs = built
    owner = _chroot(rootfs, "dpkg-query", "-S", "/sbin/init")
    assert owner.returncode == 0 and owner.stdout.startswith("sysvinit-core:"), owner
    inittab = (rootfs / "etc/inittab").read_text()
    lines = [line for line in inittab.splitlines() if line and not line.startswith("#")]
    assert "id:2:initdefault:" in lines
    assert "si::sysinit:/etc/vserver/sysinit" in lines
    assert "sv:2345:respawn:/usr/bin/runsvdir -P /etc/service" in lines
    assert "ca::ctrlaltdel:/etc/vserver/halt" in lines
    assert not [line for line in lines if "getty" in line or "/etc/init.d/rc" in line]
    for script in ("etc/vserver/sysinit", "etc/vserver/halt"):
        assert os.access(rootfs / script, os.X_OK)
    assert "halt -f -p" in (rootfs / "etc/vserver/halt").read_text()


@pytest.mark.slow
def test_runit_and_the_apache_service(built):
    _, _, rootfs = built
    for tool in ("usr/bin/runsvdir", "usr/bin/sv"):
        assert os.access(rootfs / tool, os.X_OK), tool
    service_dir = rootfs / "etc/service"
    assert service_dir.is_dir() and not service_dir.is_symlink()
    assert sorted(p.name for p in service_dir.iterdir()) == ["apache2"]
    run = service_dir / "apache2/run"
    assert os.access(run, os.X_OK)
    assert "exec /usr/sbin/apache2 -DFOREGROUND" in run.read_text()
    # Debian's own start-up of Apache is disabled (K links only), and nothing is left from the build.
    assert not list(rootfs.glob("etc/rc[2-5].d/S*apache*"))
    assert not (rootfs / "usr/sbin/policy-rc.d").exists()
    assert "It works: Debian VPS" in (rootfs / "var/www/html/index.html").read_text()


@pytest.mark.slow
def test_apache_configuration_is_valid(built):
    _, _, rootfs = built
    null = rootfs / "dev/null"
    assert not null.exists()  # the engine supplies /dev
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        result = _chroot(rootfs, "/usr/sbin/apache2ctl", "-t")
    finally:
        null.unlink()
    assert result.returncode == 0 and "Syntax OK" in result.stderr, result
    assert "AH00558" not in result.stderr  # no "could not determine the server's name"


@pytest.mark.slow
def test_accounts_tools_and_a_clean_small_tree(built):
    _, _, rootfs = built
    for tool in ("useradd", "userdel", "chpasswd"):
        result = _chroot(rootfs, tool, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, result
    root_entry = (rootfs / "etc/shadow").read_text().splitlines()[0].split(":")
    assert root_entry[0] == "root" and root_entry[1][:1] in ("!", "*")
    assert (rootfs / "etc/hostname").read_text() == "debian\n"
    assert "localhost" in (rootfs / "etc/hosts").read_text()
    assert "nameserver" not in (rootfs / "etc/resolv.conf").read_text()
    assert [p.name for p in (rootfs / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert not list(rootfs.glob("var/cache/apt/**/*.deb")) and not list(rootfs.glob("var/cache/apt/*.bin"))
    assert sorted(p.name for p in (rootfs / "dev").iterdir()) == ["mqueue", "pts", "shm"]
    assert not (rootfs / "debootstrap").exists()


@pytest.mark.slow
def test_a_new_version_moves_current_and_keeps_the_old_one(built):
    config, info, rootfs = built
    version, staging = templates.new_version(config, "debian")
    assert version != info.version
    (staging / "rootfs/marker").write_text("new\n")
    newer = templates.publish(config, staging, dataclasses.replace(info, version=version))
    try:
        assert templates.get(config, "debian").version == version
        assert _debian_versions(config) == [(info, False), (newer, True)]
        assert templates.get(config, "debian", info.version) == info
        assert (rootfs / "usr/sbin/apache2").exists()  # the old version's files stay
    finally:
        # Leave the real build as the current version for the tests that follow.
        base = templates.template_dir(config, "debian")
        link = base / ".current.test"
        os.symlink(info.version, link)
        os.replace(link, base / "current")
        shutil.rmtree(base / version)
