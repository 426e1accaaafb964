"""The busybox template: a static busybox compiled from Debian's source, staged as a guest tree.

Compiling busybox takes one to three minutes, so the binary is cached across test sessions in
VSERVER_CACHE_DIR (the tests set it to var/cache inside the checkout, so a clean clone starts
without it). test_a_cold_cache_downloads_and_compiles makes sure every run compiles once from
an empty cache all the same. Needs root.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests import coldpath
from tests.leaks import TEST_CACHE
from vservers.engine import templates
from vservers.engine.config import EngineConfig
from vservers.engine.templates import busybox

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="building a template needs root"),
    pytest.mark.slow,
]

CACHE_DIR = os.environ.get("VSERVER_CACHE_DIR") or TEST_CACHE
# Whether the session found a compiled busybox in the shared cache when it began.
CACHE_WAS_WARM = (Path(CACHE_DIR) / f"busybox-{busybox.BUSYBOX_VERSION}" / f"busybox-{busybox.cache_key()}").is_file()


def _build(root: Path) -> tuple[EngineConfig, templates.TemplateInfo, float]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSERVER_CACHE_DIR", CACHE_DIR)
        config = EngineConfig.from_env({"VSERVER_ROOT": str(root)})
        started = time.monotonic()
        info = busybox.build_busybox(config)
        return config, info, time.monotonic() - started


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config, info, _ = _build(tmp_path_factory.mktemp("vsroot"))
    return config, info


@pytest.fixture
def rootfs(built) -> Path:
    config, info = built
    return templates.rootfs_path(config, "busybox", info.version)


def _copy(rootfs: Path, dest: Path) -> Path:
    shutil.copytree(rootfs, dest, symlinks=True)
    return dest


def test_binary_is_static_and_has_the_required_applets(rootfs):
    binary = rootfs / "bin" / "busybox"
    mode = binary.lstat().st_mode
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o755
    assert busybox._is_static_elf(binary)
    listed = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True)
    names = set(listed.stdout.split())
    wanted = {
        "runsvdir", "runsv", "sv", "svlogd", "chpst", "init", "httpd", "adduser", "deluser",
        "addgroup", "delgroup", "chpasswd", "passwd", "ipcs", "ipcrm", "ps", "hostname", "ip",
        "ping", "sh",
    }  # fmt: skip
    assert wanted <= names
    assert "tc" not in names and "linuxrc" not in names


def test_every_applet_is_a_link_to_busybox_inside_the_tree(rootfs):
    listed = busybox.applets(rootfs / "bin" / "busybox")
    assert len(listed) > 300
    for rel in listed:
        link = rootfs / rel
        assert link.is_symlink(), rel
        target = os.readlink(link)
        assert not target.startswith("/"), rel  # never resolves to the host's files
        assert os.path.normpath(os.path.join(os.path.dirname(rel), target)) == "bin/busybox", rel
    assert os.readlink(rootfs / "sbin" / "init") == "../bin/busybox"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_layout_and_boot_files(rootfs):
    for rel, mode in busybox.DIRS.items():
        assert (rootfs / rel).is_dir() and not (rootfs / rel).is_symlink(), rel
        assert _mode(rootfs / rel) == mode, rel
    assert _mode(rootfs / "tmp") == 0o1777
    assert _mode(rootfs / "root") == 0o700
    assert os.readlink(rootfs / "var" / "tmp") == "../tmp"

    inittab = (rootfs / "etc" / "inittab").read_text().splitlines()
    assert "::sysinit:/etc/init.d/rcS" in inittab
    assert "::respawn:/usr/bin/runsvdir -P /etc/service" in inittab
    assert "::shutdown:/etc/init.d/rcK" in inittab
    rck = rootfs / "etc" / "init.d" / "rcK"
    assert _mode(rck) == 0o755
    shutdown = rck.read_text()
    assert "kill -TERM -1" in shutdown and "exec poweroff -f" in shutdown

    rcs = rootfs / "etc" / "init.d" / "rcS"
    assert _mode(rcs) == 0o755
    commands = [line for line in rcs.read_text().splitlines()[1:] if not line.startswith("#")]
    assert not [line for line in commands if "mount" in line or "hostname" in line]

    assert commands[0] == "[ -d /var/log ] || mkdir -p /var/log"  # a shell builtin's test: no fork

    run = rootfs / "etc" / "service" / "httpd" / "run"
    assert _mode(run) == 0o755
    assert run.read_text() == "#!/bin/sh\nexec httpd -f -p 80 -h /var/www\n"
    assert "<h1>It works: busybox VPS</h1>" in (rootfs / "var" / "www" / "index.html").read_text()

    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    assert passwd[0] == "root:x:0:0:root:/root:/bin/sh"
    assert {line.split(":")[0]: line.split(":")[2] for line in passwd} == {
        "root": "0", "daemon": "1", "www-data": "33", "nobody": "65534",
    }  # fmt: skip
    groups = {line.split(":")[0]: line.split(":")[2] for line in (rootfs / "etc/group").read_text().split()}
    assert groups == {"root": "0", "daemon": "1", "tty": "5", "www-data": "33", "users": "100",
                      "nogroup": "65534"}  # fmt: skip
    shadow = rootfs / "etc" / "shadow"
    assert _mode(shadow) == 0o600
    assert shadow.read_text().startswith("root:*:")
    assert (rootfs / "etc" / "hostname").read_text() == "busybox\n"
    assert (rootfs / "etc" / "shells").read_text().split() == ["/bin/sh", "/bin/ash"]
    assert "PATH=" in (rootfs / "etc" / "profile").read_text()

    owners = {(st.st_uid, st.st_gid) for st in (p.lstat() for p in [rootfs, *rootfs.rglob("*")])}
    assert owners == {(0, 0)}


def test_template_info_and_listing(built):
    config, info = built
    assert info.name == "busybox"
    assert info.init == ("/sbin/init",)
    assert info.halt_signal == signal.SIGUSR2
    assert info.service_dir == "/etc/service"
    assert info.account_tool == "busybox"
    assert info.size_bytes > 2_000_000
    assert templates.get(config, "busybox") == info
    assert (info, True) in templates.list_all(config)
    assert not list(templates.template_dir(config, "busybox").glob(".build-*"))


def test_busybox_runs_in_a_chroot(rootfs):
    result = subprocess.run(
        ["chroot", str(rootfs), "/bin/busybox", "--list"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "runsvdir" in result.stdout.split()


def test_accounts_with_the_guests_own_tools(rootfs, tmp_path):
    before = (rootfs / "etc" / "passwd").read_text()
    copy = _copy(rootfs, tmp_path / "rootfs")

    def sh(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["chroot", str(copy), "/bin/sh", "-c", script], capture_output=True, text=True, timeout=30
        )

    result = sh("adduser -D u1 && grep u1 /etc/passwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("u1:x:")
    assert (copy / "home" / "u1").is_dir()
    result = sh("echo u1:secret | chpasswd && grep '^u1:' /etc/shadow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("u1:$6$")  # SHA-512, not DES
    result = sh("addgroup g1 && addgroup u1 g1 && grep '^g1:' /etc/group && deluser u1 && delgroup g1")
    assert result.returncode == 0, result.stderr
    assert "u1" not in (copy / "etc" / "passwd").read_text()
    assert (rootfs / "etc" / "passwd").read_text() == before  # the template is untouched


BOOT_SCRIPT = """
set -e
mount --make-rprivate /
mount -t proc proc "$1/proc"
mount -t tmpfs tmpfs "$1/run"
mount --bind /dev "$1/dev"
"$1/bin/busybox" ip link set lo up
exec chroot "$1" /sbin/init
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_boots_serves_http_and_powers_off_on_sigusr2(rootfs, tmp_path):
    """busybox init as PID 1 of fresh namespaces (net: loopback only, nothing leaves the host):
    runsvdir starts httpd, which serves the page; SIGUSR2 ends the namespace."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs util-linux unshare and nsenter")
    copy = _copy(rootfs, tmp_path / "rootfs")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc",
         "/bin/sh", "-c", BOOT_SCRIPT, "sh", str(copy)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    init = None
    try:
        deadline = time.monotonic() + 10
        page = ""
        while time.monotonic() < deadline and "It works" not in page:
            time.sleep(0.1)
            if init is None:
                kids = _children(proc.pid)
                init = kids[0] if kids else None
                continue
            fetch = subprocess.run(
                ["nsenter", f"--target={init}", "--net", "--mount", "--pid", "--root", "--wd",
                 "/usr/bin/wget", "-q", "-T", "2", "-O", "-", "http://127.0.0.1/"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            page = fetch.stdout
        assert "<h1>It works: busybox VPS</h1>" in page
        os.kill(init, signal.SIGUSR2)
        proc.wait(timeout=20)
        # rcK's `poweroff -f` is reboot(2) inside the PID namespace: the kernel ends its init
        # as if by SIGINT, and unshare passes that on.
        assert proc.returncode == -signal.SIGINT, proc.stdout.read()
    finally:
        if proc.poll() is None:
            if init is not None:
                os.kill(init, signal.SIGKILL)  # ends every process of the namespace
            proc.kill()
            proc.wait(timeout=10)


def test_rebuild_reuses_the_binary_and_moves_current(tmp_path):
    config, first, _ = _build(tmp_path / "root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSERVER_CACHE_DIR", CACHE_DIR)
        cached = os.stat(busybox.ensure_binary(config))
        _, second, _ = _build(tmp_path / "root")
        again = os.stat(busybox.ensure_binary(config))
    # Not compiled again: the very same cached file.
    assert (again.st_ino, again.st_mtime_ns) == (cached.st_ino, cached.st_mtime_ns)
    assert second.version != first.version
    assert templates.get(config, "busybox").version == second.version
    listing = {info.version: current for info, current in templates.list_all(config)}
    assert listing == {first.version: False, second.version: True}
    old = templates.rootfs_path(config, "busybox", first.version)
    assert (old / "bin" / "busybox").is_file()
    assert (old / "etc" / "inittab").is_file()


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    import io

    (tmp_path / busybox.TARBALL_NAME).write_bytes(b"stale")  # a bad cached copy is replaced
    monkeypatch.setattr(busybox.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"junk"))
    with pytest.raises(busybox.EngineError, match="SHA-256"):
        busybox.fetch_tarball(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_config_fragment_is_applied_over_defconfig(tmp_path):
    config = tmp_path / ".config"
    config.write_text("# CONFIG_STATIC is not set\nCONFIG_TC=y\nCONFIG_SV_DEFAULT_SERVICE_DIR=\"/var/service\"\n")
    busybox._apply_fragment(config, busybox._parse_fragment(busybox.CONFIG_FRAGMENT))
    settings = busybox._read_config(config)
    assert settings["CONFIG_STATIC"] == "y"
    assert settings["CONFIG_TC"] is None
    assert settings["CONFIG_SV_DEFAULT_SERVICE_DIR"] == '"/etc/service"'
    assert settings["CONFIG_FEATURE_DEFAULT_PASSWD_ALGO"] == '"sha512"'  # appended when missing


def test_a_dynamically_linked_binary_is_not_static():
    assert not busybox._is_static_elf(Path(shutil.which("ls")))


def test_a_cold_cache_downloads_and_compiles(tmp_path):
    """The path a new machine takes: no tarball, no binary. If the session's shared cache was
    empty when it began, its first build took that path (or this test makes it take it now);
    otherwise the compile runs here into an empty cache of its own."""
    cache = Path(CACHE_DIR) if not CACHE_WAS_WARM else tmp_path / "cache"
    if CACHE_WAS_WARM:
        assert not cache.exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSERVER_CACHE_DIR", str(cache))
        config = EngineConfig.from_env({"VSERVER_ROOT": str(tmp_path / "root")})
        started = time.monotonic()
        binary = busybox.ensure_binary(config)
        seconds = time.monotonic() - started
    record = coldpath.busybox_compiled_this_session(cache)
    assert record is not None, "no busybox was compiled from an empty cache in this session"
    assert record["tarball_sha256"] == busybox.BUSYBOX_SHA256
    assert (binary.parent / busybox.TARBALL_NAME).is_file()  # downloaded, checked, kept
    assert busybox._is_static_elf(binary)
    where = "the session's empty cache" if not CACHE_WAS_WARM else "an empty cache of this test"
    coldpath.note(
        "busybox",
        f"downloaded {busybox.TARBALL_NAME} and compiled it in {record['build_seconds']} s into {where}"
        + (f" (this test waited {seconds:.0f} s)" if seconds > 1 else ""),
    )
