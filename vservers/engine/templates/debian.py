"""The `debian` template: Debian bookworm (debootstrap minbase) with Apache, for system containers.

The guest boots sysvinit's /sbin/init as PID 1 with our own inittab: a tiny sysinit script
prepares /run, runit's runsvdir supervises the services in /etc/service, and SIGINT (the
"ctrl-alt-del" signal, which the engine sends to stop a VPS) shuts the guest down:

    SIGINT -> ctrlaltdel entry -> /etc/vserver/halt -> `telinit 0`
    runlevel 0: init stops runsvdir (not respawned there), then runs /etc/vserver/halt again,
    which stops every service with `sv`, sends TERM then KILL to what is left, and calls
    `halt -f -p`: reboot(2) inside a pid namespace ends the namespace's init (seen by the engine
    as init killed by SIGINT; a guest `reboot` ends it with SIGHUP instead).

Going through runlevel 0 matters: in runlevel 2 init would respawn runsvdir, and with it every
service, as soon as the shutdown killed it. `halt`, `poweroff` and `reboot` typed inside the guest
take the same path.

Nothing in the guest mounts filesystems, touches hardware or expects udev or ttys: the engine
provides /proc, /sys, /dev, /run, the hostname and the network before it starts init. The whole
shutdown takes at most about 8 s (`sv -w 7`, then 1 s for the rest), within the engine's stop
timeout.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..config import EngineConfig
from ..errors import EngineError
from . import TemplateInfo, discard, new_version, publish
from .guestfiles import make_dirs, write_file, write_service

NAME = "debian"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# minbase already has passwd (useradd/userdel/chpasswd) and login; listed so a change there
# cannot silently drop the account tools the engine relies on.
PACKAGES = ("sysvinit-core", "runit", "apache2", "passwd", "login", "procps", "iproute2")
SERVICE_DIR = "/etc/service"
DEBOOTSTRAP_TIMEOUT = 1800  # seconds; a slow mirror can take long, a hung one must not hang us
CHROOT_TIMEOUT = 300
OUTPUT_TAIL = 40  # lines of a failed program's output quoted in the error

# Files that must exist in the finished tree; the engine and the test rely on these paths.
REQUIRED = (
    "usr/sbin/init",  # /sbin is a symlink to usr/sbin (merged /usr)
    "usr/sbin/halt",
    "usr/sbin/telinit",
    "usr/bin/runsvdir",
    "usr/bin/sv",
    "usr/sbin/apache2",
    "usr/sbin/useradd",
    "usr/sbin/userdel",
    "usr/sbin/chpasswd",
    "usr/bin/hostname",
)

CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}

POLICY_RC_D = """\
#!/bin/sh
# Written by the vserver template build: no daemon may start while the template is built.
exit 101
"""

INITTAB = """\
# /etc/inittab of a vserver guest (sysvinit). The engine has already mounted /proc, /sys,
# /dev and /run and configured the network; there are no consoles, gettys or rc scripts.
id:2:initdefault:
si::sysinit:/etc/vserver/sysinit

# runit supervises the services in /etc/service (manage them with `sv`).
sv:2345:respawn:/usr/bin/runsvdir -P /etc/service

# The engine stops the VPS with SIGINT, which init treats as ctrl-alt-del.
ca::ctrlaltdel:/etc/vserver/halt
l0:0:wait:/etc/vserver/halt
l6:6:wait:/etc/vserver/halt reboot
"""

SYSINIT = """\
#!/bin/sh
# Run once by init at boot. Mount nothing and bring up no network: the engine did that, and
# set the hostname, which /etc/hostname is made to agree with (as Debian tools read it).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
name=$(hostname)
[ -n "$name" ] && [ "$(cat /etc/hostname 2>/dev/null)" != "$name" ] && echo "$name" >/etc/hostname
# /run is an empty tmpfs: recreate what Debian's boot scripts would (/var/lock -> /run/lock).
mkdir -p /run/lock && chmod 1777 /run/lock
: >>/run/utmp && chgrp utmp /run/utmp && chmod 664 /run/utmp
exit 0
"""

HALT = """\
#!/bin/sh
# Stop the VPS. Init runs this on SIGINT (ctrl-alt-del), which asks for runlevel 0 (6 with
# argument "reboot"); in that runlevel runsvdir is stopped and not respawned, and init runs
# this again to stop the services and end the guest.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$RUNLEVEL" in
0|6) ;;
*)
    if [ "$1" = reboot ]; then exec telinit 6; fi
    exec telinit 0
    ;;
esac
sv -w 7 force-stop /etc/service/* >/dev/null 2>&1
kill -TERM -1 2>/dev/null
i=0
while [ "$i" -lt 10 ] && kill -0 -1 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
kill -KILL -1 2>/dev/null
if [ "$1" = reboot ]; then exec reboot -f; fi
# -f: call reboot(2) at once, which in a pid namespace ends its init; -p: power off.
exec halt -f -p
"""

APACHE_RUN = """\
#!/bin/sh
exec 2>&1
. /etc/apache2/envvars
mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR"
exec /usr/sbin/apache2 -DFOREGROUND
"""

INDEX_HTML = """\
<!DOCTYPE html>
<html>
<head><title>Debian VPS</title></head>
<body>
<h1>It works: Debian VPS</h1>
<p>Apache on Debian bookworm, served from a vserver.</p>
</body>
</html>
"""

HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""

RESOLV_CONF = "# No name servers are configured for this VPS.\n"


def build_debian(config: EngineConfig, *, mirror: str | None = None) -> TemplateInfo:
    """Build a new version of the debian template and make it the current one."""
    if os.geteuid() != 0:
        raise EngineError("building the debian template needs root")
    debootstrap = shutil.which("debootstrap", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if debootstrap is None:
        raise EngineError("debootstrap is not installed (apt-get install debootstrap)")
    if not KEYRING.is_file():
        raise EngineError(f"{KEYRING} is missing (apt-get install debian-archive-keyring)")
    mirror = mirror or host_mirror(SUITE)
    if not _usable(mirror):
        raise EngineError(f"unusable Debian mirror {mirror!r}")

    version, staging = new_version(config, NAME)
    rootfs = staging / "rootfs"
    try:
        try:
            # debootstrap keeps daemons from starting with its own policy-rc.d while it installs,
            # and removes it when done; ours covers the steps that follow.
            _bootstrap(debootstrap, rootfs, mirror)
            write_file(rootfs, "usr/sbin/policy-rc.d", POLICY_RC_D, mode=0o755)
            _configure(rootfs)
            _verify(rootfs)
        finally:
            _release(rootfs)
        _clean(rootfs)
    except BaseException as exc:
        left = _discard(staging)
        if left:
            raise EngineError(f"{exc}\n(build directory {staging} kept: {left})") from exc
        raise
    info = TemplateInfo(
        name=NAME,
        version=version,
        init=("/sbin/init",),
        halt_signal=int(signal.SIGINT),
        service_dir=SERVICE_DIR,
        account_tool="shadow",
    )
    return publish(config, staging, info)


def host_mirror(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The first `deb` URI the host's apt configuration uses for SUITE, else deb.debian.org."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        found = _deb822_mirror(text, suite) if path.suffix == ".sources" else _one_line_mirror(text, suite)
        if found:
            return found
    return DEFAULT_MIRROR


def _usable(uri: str) -> bool:
    return re.fullmatch(r"(https?|file)://[^\s]+", uri) is not None


def _one_line_mirror(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [ option=value ... ]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == suite and _usable(words[0]):
            return words[0].rstrip("/")
    return None


def _deb822_mirror(text: str, suite: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split() or suite not in fields.get("suites", "").split():
            continue
        for uri in fields.get("uris", "").split():
            if _usable(uri):
                return uri.rstrip("/")
    return None


def _bootstrap(debootstrap: str, rootfs: Path, mirror: str) -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    env.update(CHROOT_ENV)
    argv = [
        debootstrap,
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        f"--keyring={KEYRING}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    try:
        _run(argv, env=env, timeout=DEBOOTSTRAP_TIMEOUT, what="debootstrap")
    except EngineError as exc:
        log = _tail_of(rootfs / "debootstrap" / "debootstrap.log")
        if log:
            raise EngineError(f"{exc}\n--- debootstrap.log (end) ---\n{log}") from None
        raise


def _configure(rootfs: Path) -> None:
    # Init: our inittab, no rc scripts, no gettys.
    write_file(rootfs, "etc/inittab", INITTAB)
    write_file(rootfs, "etc/vserver/sysinit", SYSINIT, mode=0o755)
    write_file(rootfs, "etc/vserver/halt", HALT, mode=0o755)

    # runit: the service directory is a plain directory that runsvdir scans; Debian's
    # /etc/runit/runsvdir machinery (runit-init) is not used.
    service_dir = rootfs / SERVICE_DIR.lstrip("/")
    if service_dir.is_symlink() or (service_dir.exists() and not service_dir.is_dir()):
        service_dir.unlink()
    if service_dir.is_dir():
        for entry in service_dir.iterdir():  # whatever packages enabled (e.g. a getty)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    make_dirs(rootfs, SERVICE_DIR)
    write_service(rootfs, SERVICE_DIR, "apache2", APACHE_RUN)

    # Apache runs under runit, never from its sysv script.
    for script in ("apache2", "apache-htcacheclean"):
        if (rootfs / "etc/init.d" / script).exists():
            _chroot(rootfs, ["update-rc.d", script, "disable"])
    write_file(rootfs, "etc/apache2/conf-available/servername.conf", "ServerName localhost\n")
    _chroot(rootfs, ["a2enconf", "-q", "servername"])
    write_file(rootfs, "var/www/html/index.html", INDEX_HTML)

    # Identity and name resolution; at boot /etc/hostname is set to the hostname the engine gave.
    write_file(rootfs, "etc/hostname", "debian\n")
    write_file(rootfs, "etc/hosts", HOSTS)
    write_file(rootfs, "etc/resolv.conf", RESOLV_CONF)
    _chroot(rootfs, ["passwd", "--lock", "root"])


def _verify(rootfs: Path) -> None:
    missing = [path for path in REQUIRED if not os.access(rootfs / path, os.X_OK)]
    if missing:
        raise EngineError(f"the debian template lacks {', '.join('/' + p for p in missing)}")
    _chroot(rootfs, ["/usr/sbin/apache2ctl", "-t"])


def _clean(rootfs: Path) -> None:
    """Remove what only the build needed and what makes the template bigger."""
    (rootfs / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for path in (rootfs / "var/cache/apt/archives/partial", rootfs / "var/lib/apt/lists/partial"):
        if path.is_dir():
            for entry in path.iterdir():
                entry.unlink()
    # debootstrap made device nodes (including a world-writable /dev/console); the engine
    # supplies /dev, so the template keeps only empty mount points.
    dev = rootfs / "dev"
    for entry in dev.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for sub in ("pts", "shm", "mqueue"):
        make_dirs(rootfs, f"dev/{sub}")
    (rootfs / "dev/shm").chmod(0o1777)


def _run(argv: list[str], *, env: dict[str, str], timeout: float, what: str) -> str:
    """Run ARGV (never through a shell); its output, or EngineError quoting its end."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # so a timeout can end the whole process group
        )
    except OSError as exc:
        raise EngineError(f"{what}: cannot run {argv[0]}: {exc}") from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise EngineError(f"{what} did not finish within {timeout} s") from None
    except BaseException:
        _kill_group(proc)
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise EngineError(f"{what} failed (exit status {proc.returncode}):\n{_tail(text)}")
    return text


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _chroot(rootfs: Path, argv: list[str]) -> str:
    return _run(
        ["chroot", str(rootfs), *argv],
        env=dict(CHROOT_ENV),
        timeout=CHROOT_TIMEOUT,
        what=" ".join(argv[:2]),
    )


def _tail(text: str, lines: int = OUTPUT_TAIL) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail_of(path: Path) -> str:
    try:
        return _tail(path.read_text(errors="replace"))
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Leftovers: debootstrap mounts /proc and /sys in the tree while it works and normally unmounts
# them, but not when it is killed. A removal must never descend into a mount (it would delete
# the host's files), and no process may keep running from the tree.

_MNT_DETACH = 2


def _mounts_below(path: Path) -> list[str]:
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


def _release(rootfs: Path) -> None:
    """Kill processes running from ROOTFS and unmount whatever is mounted in it."""
    base = os.path.realpath(rootfs)
    for _ in range(50):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    root = os.readlink(f"/proc/{entry}/root")
                except OSError:
                    continue
                if root == base or root.startswith(base + "/"):
                    pids.append(int(entry))
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted(_mounts_below(rootfs), key=len, reverse=True):
        if libc.umount2(point.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise EngineError(f"cannot unmount {point}: {os.strerror(err)}")


def _discard(staging: Path) -> str | None:
    """Remove a failed build; why not, if something is still mounted in it."""
    try:
        _release(staging / "rootfs")
    except EngineError as exc:
        return str(exc)
    left = _mounts_below(staging)
    if left:
        return f"still mounted: {', '.join(left)}"
    discard(staging)
    return None
