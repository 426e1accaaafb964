"""The `busybox` template: one static busybox binary as the whole guest system.

The guest boots busybox init as PID 1 from /etc/inittab; init starts `runsvdir -P /etc/service`
(busybox's runit applets supervise the services; `httpd` on port 80 serves /var/www) and, on
SIGUSR2 (busybox init's "poweroff", which the engine sends to stop a VPS), runs the ::shutdown
entry /etc/init.d/rcK (TERM and CONT to every service and its supervisor, the supervisors killed, a
wait while anything still runs, then reboot(2), which inside a PID namespace ends the namespace's
init).
Accounts are managed with the guest's own adduser/deluser/addgroup/delgroup/chpasswd/passwd;
ipcs/ipcrm serve the IPC checks.

Debian 12's busybox-static lacks runsvdir, runsv, sv, adduser, deluser, chpasswd and ipcs, so
busybox is compiled here from Debian's own source tarball of the same upstream version (checked
against BUSYBOX_SHA256): `make defconfig`, the settings in CONFIG_FRAGMENT, `make oldconfig`,
`make busybox`. That needs gcc, make and the static glibc (libc6-dev's libc.a); it takes a bit
over a minute on two cores.

Cache: the tarball and the compiled binary are kept in CACHE/busybox-1.35.0/, where CACHE is
the environment variable VSERVER_CACHE_DIR if set, else STATE_ROOT/cache. The binary's name
carries a hash of the tarball's checksum and of CONFIG_FRAGMENT, so rebuilding the template
reuses it and only a change of source or configuration recompiles. Without network access,
put busybox_1.35.0.orig.tar.bz2 into that directory by hand.

Nothing in the guest mounts filesystems or sets the hostname: the engine mounts /proc, /sys,
/dev and /run, sets the hostname and configures eth0 before it starts init.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import archive
from ..config import EngineConfig
from ..errors import EngineError
from ..state import claim, locked, release, remove_abandoned
from . import TemplateInfo, discard, new_version, publish
from .guestfiles import make_dirs, write_file, write_service

log = logging.getLogger(__name__)

NAME = "busybox"
BUSYBOX_VERSION = "1.35.0"
TARBALL_NAME = f"busybox_{BUSYBOX_VERSION}.orig.tar.bz2"
TARBALL_URL = f"http://deb.debian.org/debian/pool/main/b/busybox/{TARBALL_NAME}"
BUSYBOX_SHA256 = "faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694"
SERVICE_DIR = "/etc/service"
DOWNLOAD_TIMEOUT = 120  # seconds without progress before a download is abandoned
MAKE_TIMEOUT = 1800
OUTPUT_TAIL = 30  # lines of a failed build's log quoted in the error

# Applied on top of `make defconfig`, then `make oldconfig` fills in what these expose or hide.
# Only "CONFIG_X=value" and "# CONFIG_X is not set" lines count. Part of the cache key.
CONFIG_FRAGMENT = """\
# The guest has no C library: one static binary is the whole system.
CONFIG_STATIC=y
# tc does not compile against newer kernel headers (CBQ was removed); the guest doesn't need it.
# CONFIG_TC is not set
# No initrd in a VPS: no /linuxrc link.
# CONFIG_LINUXRC is not set
# `sv httpd` without a path finds the service where the template keeps it.
CONFIG_SV_DEFAULT_SERVICE_DIR="/etc/service"
# passwd/chpasswd hash with SHA-512 instead of DES.
CONFIG_FEATURE_DEFAULT_PASSWD_ALGO="sha512"
"""
# Bump when the way the binary is built changes without the fragment changing.
RECIPE_REVISION = "1"

# Applets the engine and the guest's own setup depend on; the build fails without any of them.
REQUIRED_APPLETS = frozenset(
    {
        "sh", "ash", "init", "runsvdir", "runsv", "sv", "svlogd", "chpst", "httpd",
        "adduser", "deluser", "addgroup", "delgroup", "chpasswd", "passwd",
        "ipcs", "ipcrm", "ps", "hostname", "ip", "ping", "mkdir", "kill", "pidof", "usleep", "poweroff",
    }
)  # fmt: skip


# --- the binary -----------------------------------------------------------------------------


def cache_dir(config: EngineConfig) -> Path:
    """Where the tarball and the built binary are kept (VSERVER_CACHE_DIR or STATE_ROOT/cache)."""
    base = os.environ.get("VSERVER_CACHE_DIR") or str(config.root / "cache")
    if not os.path.isabs(base):
        raise EngineError(f"VSERVER_CACHE_DIR must be an absolute path, not {base!r}")
    return Path(base) / f"busybox-{BUSYBOX_VERSION}"


def cache_key() -> str:
    """What the compiled binary depends on: the source and our configuration of it."""
    material = "\0".join((BUSYBOX_SHA256, CONFIG_FRAGMENT, RECIPE_REVISION)).encode()
    return hashlib.sha256(material).hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_tarball(cache: Path) -> Path:
    """The verified source tarball in CACHE, downloaded from the Debian archive if missing."""
    path = cache / TARBALL_NAME
    if path.is_file():
        if _sha256_file(path) == BUSYBOX_SHA256:
            return path
        log.warning("cached %s has the wrong checksum; downloading it again", path)
        path.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{TARBALL_NAME}.", dir=cache)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(TARBALL_URL, timeout=DOWNLOAD_TIMEOUT) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                raise EngineError(
                    f"could not download the busybox source from {TARBALL_URL}: {exc} "
                    f"(without network access, put {TARBALL_NAME} into {cache} by hand)"
                ) from None
        if digest.hexdigest() != BUSYBOX_SHA256:
            raise EngineError(
                f"the busybox source downloaded from {TARBALL_URL} has SHA-256 "
                f"{digest.hexdigest()}, expected {BUSYBOX_SHA256}; refusing to build from it"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_build_tools() -> None:
    missing = [tool for tool in ("make", "gcc", "strip") if shutil.which(tool) is None]
    if missing:
        raise EngineError(
            f"building busybox needs {', '.join(missing)}, which is not installed "
            "(apt-get install build-essential)"
        )
    found = subprocess.run(
        ["gcc", "-print-file-name=libc.a"], capture_output=True, text=True, timeout=60, check=False
    ).stdout.strip()
    if not os.path.isabs(found) or not os.path.isfile(found):
        raise EngineError(
            "building a static busybox needs the static C library libc.a, which gcc cannot find "
            "(apt-get install libc6-dev)"
        )


def _parse_fragment(text: str) -> dict[str, str | None]:
    """CONFIG_X -> value ("y", '"text"', ...) or None for "is not set"."""
    settings: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            settings[line[2 : -len(" is not set")]] = None
        elif line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def _read_config(path: Path) -> dict[str, str | None]:
    return _parse_fragment(path.read_text())


def _apply_fragment(config_path: Path, settings: dict[str, str | None]) -> None:
    lines = config_path.read_text().splitlines()
    remaining = dict(settings)
    out = []
    for line in lines:
        key = None
        if line.startswith("CONFIG_") and "=" in line:
            key = line.split("=", 1)[0]
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            key = line[2 : -len(" is not set")]
        if key in remaining:
            value = remaining.pop(key)
            line = f"# {key} is not set" if value is None else f"{key}={value}"
        out.append(line)
    for key, value in remaining.items():
        out.append(f"# {key} is not set" if value is None else f"{key}={value}")
    config_path.write_text("\n".join(out) + "\n")


def _run_logged(argv: list[str], cwd: Path, logfile, what: str, log_path: Path) -> None:
    """Run ARGV (never through a shell) with output appended to LOGFILE; EngineError if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["LC_ALL"] = "C"
    logfile.write(f"$ {' '.join(argv)}\n")
    logfile.flush()
    try:
        result = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=MAKE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"{what} took longer than {MAKE_TIMEOUT} s; see {log_path}") from None
    except OSError as exc:
        raise EngineError(f"{what} could not run {argv[0]}: {exc}") from None
    if result.returncode != 0:
        logfile.flush()
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-OUTPUT_TAIL:])
        raise EngineError(f"{what} failed (exit status {result.returncode}); see {log_path}:\n{tail}")


def _is_static_elf(path: Path) -> bool:
    """True if PATH is an ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as fh:
        ident = fh.read(16)
        if ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            return False
        is64 = ident[4] == 2
        end = "<" if ident[5] == 1 else ">"
        header = fh.read(48 if is64 else 36)
        if is64:
            phoff = struct.unpack_from(end + "Q", header, 16)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", header, 38)
        else:
            phoff = struct.unpack_from(end + "I", header, 12)[0]
            phentsize, phnum = struct.unpack_from(end + "HH", header, 26)
        for index in range(phnum):
            fh.seek(phoff + index * phentsize)
            (p_type,) = struct.unpack(end + "I", fh.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader the guest doesn't have
                return False
    return True


def applets(binary: Path) -> list[str]:
    """`busybox --list-full` of BINARY: paths relative to / such as "usr/bin/runsvdir"."""
    try:
        result = subprocess.run(
            [str(binary), "--list-full"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise EngineError(f"cannot run {binary}: {exc}") from None
    listed = [line.strip().lstrip("/") for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not listed:
        raise EngineError(f"{binary} --list-full failed: {result.stderr.strip() or 'no output'}")
    return listed


def _verify_binary(binary: Path) -> list[str]:
    if not _is_static_elf(binary):
        raise EngineError(f"{binary} is not a statically linked executable; the guest has no libc")
    listed = applets(binary)
    missing = REQUIRED_APPLETS - {os.path.basename(p) for p in listed}
    if missing:
        raise EngineError(f"{binary} lacks required applets: {', '.join(sorted(missing))}")
    return listed


def _compile(tarball: Path, cache: Path, key: str) -> Path:
    """Compile busybox from TARBALL; the binary ends up as CACHE/busybox-KEY."""
    _check_build_tools()
    settings = _parse_fragment(CONFIG_FRAGMENT)
    log_path = cache / f"build-{key}.log"
    remove_abandoned(cache, ".build-")  # the trees of compiles whose process was killed
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    claim(work)
    started = time.monotonic()
    try:
        try:
            archive.extract(tarball, work)
        except OSError as exc:
            raise EngineError(f"cannot unpack {tarball}: {exc}") from None
        src = work / f"busybox-{BUSYBOX_VERSION}"
        if not (src / "Makefile").is_file():
            raise EngineError(f"{tarball} does not contain busybox-{BUSYBOX_VERSION}/Makefile")
        jobs = str(max(2, os.cpu_count() or 1))
        with open(log_path, "w") as logfile:
            _run_logged(["make", "defconfig"], src, logfile, "busybox `make defconfig`", log_path)
            _apply_fragment(src / ".config", settings)
            _run_logged(["make", "oldconfig"], src, logfile, "busybox `make oldconfig`", log_path)
            final = _read_config(src / ".config")
            wrong = [
                key
                for key, value in settings.items()
                if final.get(key) != value  # an unset option may also vanish from .config
            ]
            if wrong:
                raise EngineError(
                    "busybox's configuration did not keep these settings (unmet dependencies?): "
                    + ", ".join(f"{k}={final.get(k)} (wanted {settings[k]})" for k in wrong)
                )
            _run_logged(["make", f"-j{jobs}", "busybox"], src, logfile, "compiling busybox", log_path)
        built = src / "busybox"
        listed = _verify_binary(built)
        seconds = time.monotonic() - started
        target = cache / f"busybox-{key}"
        tmp = cache / f".busybox-{key}.{os.getpid()}"
        shutil.copyfile(built, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        info = {
            "version": BUSYBOX_VERSION,
            "tarball_sha256": BUSYBOX_SHA256,
            "build_seconds": round(seconds, 1),
            "size_bytes": target.stat().st_size,
            "applets": len(listed),
            "built_at": time.time(),
        }
        (cache / f"busybox-{key}.json").write_text(json.dumps(info, indent=2) + "\n")
        log.info("compiled busybox %s in %.1f s (%d applets)", BUSYBOX_VERSION, seconds, len(listed))
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)
        release(work)


def ensure_binary(config: EngineConfig) -> Path:
    """The static busybox for this template: from the cache, or downloaded and compiled."""
    cache = cache_dir(config)
    cache.mkdir(parents=True, exist_ok=True)
    key = cache_key()
    target = cache / f"busybox-{key}"
    with locked(cache / ".lock"):  # two builds at once must not compile twice into one place
        if target.is_file():
            try:
                _verify_binary(target)
                return target
            except EngineError as exc:
                log.warning("cached busybox unusable (%s); compiling again", exc)
                target.unlink()
        return _compile(fetch_tarball(cache), cache, key)


# --- the guest tree -------------------------------------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""

GROUP = """\
root:x:0:
daemon:x:1:
tty:x:5:
www-data:x:33:
users:x:100:
nogroup:x:65534:
"""

HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
"""

PROFILE = """\
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
if [ "$(id -u)" -eq 0 ]; then
    PS1='\\h:\\w# '
else
    PS1='\\u@\\h:\\w$ '
fi
export PS1
umask 022
"""

# init waits for ::sysinit before it starts runsvdir, so every program run here delays each
# service: the tests are the shell's own builtins, and mkdir runs only when a directory is gone.
RCS = """\
#!/bin/sh
# Run once by busybox init (::sysinit in /etc/inittab). The engine has already mounted /proc,
# /sys, /dev and /run (an empty tmpfs), set the hostname and configured the network: nothing to
# mount here.
[ -d /var/log ] || mkdir -p /var/log
[ -x /etc/rc.local ] && /etc/rc.local
exit 0
"""

HTTPD_RUN = """\
#!/bin/sh
exec httpd -f -p 80 -h /var/www
"""

INDEX_HTML = """\
<!DOCTYPE html>
<html><head><title>busybox VPS</title></head>
<body><h1>It works: busybox VPS</h1></body></html>
"""


# busybox init's own way down, after ::shutdown, sleeps a fixed second after TERM and
# another two around reboot(2): 2.4 s for every stop (and `sv -w` polls every 420 ms). This
# kills the runsv supervisors first (they have nothing to save, runsv waits out the first second
# of a service before it exits, and killed they restart nothing), then stops everything else as
# `sv down` does, with TERM and CONT, from the shell's own kill. It waits only while something
# still runs, at most about 3 s, looking every 2 ms (kill is the shell's builtin, usleep one fork
# and exec of the static busybox), then powers off at once: reboot(2) inside a PID namespace ends
# its init, and the kernel kills what is left. Should poweroff be refused, init carries on its
# own way.
# Every 100 ms of waiting the supervisors are killed and TERM sent again: a stop that comes
# while the guest still boots meets a runsvdir about to start a runsv, or a runsv about to start
# its service, after the first round; such a late one used to keep every fifth stop right after
# a start waiting out the whole bound (4.3 s instead of 20 ms; none of 75 such stops since).
# The first five looks come 0.2 ms apart, the rest 2 ms: what TERM ends is gone within a
# millisecond, and the first 2 ms sleep was most of what a clean stop took beyond a kill (a
# busybox server's stop in one engine process, medians of 15, A/B/A in one run: 18.7, 16.8,
# 19.0 ms; stop --kill 12 ms; 2026-12-07).
RCK = """\
#!/bin/sh
# Run by busybox init on poweroff, halt or reboot (::shutdown in /etc/inittab).
stop_all() {
    kill -KILL $(pidof runsvdir runsv) 2>/dev/null
    kill -TERM -1 2>/dev/null
    kill -CONT -1 2>/dev/null
}
stop_all
tries=0
while kill -0 -1 2>/dev/null && [ $tries -lt 1000 ]; do
    if [ $tries -lt 5 ]; then usleep 200; else usleep 2000; fi
    tries=$((tries + 1))
    [ $((tries % 50)) -ne 0 ] || stop_all
done
exec poweroff -f
"""


def _inittab(runsvdir: str) -> str:
    return f"""\
# busybox init. The engine stops the guest with SIGUSR2 (poweroff): init runs ::shutdown
# (/etc/init.d/rcK: services down, TERM to the rest, reboot(2), ending the PID namespace).
::sysinit:/etc/init.d/rcS
::respawn:{runsvdir} -P {SERVICE_DIR}
::shutdown:/etc/init.d/rcK
"""


DIRS = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "etc/init.d": 0o755,
    "etc/service": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "run": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "home": 0o755,
    "mnt": 0o755,
    "var": 0o755,
    "var/www": 0o755,
    "var/log": 0o755,
    "var/spool": 0o755,
    "var/lib": 0o755,
}

SYMLINKS = {
    "var/tmp": "../tmp",
    "var/run": "../run",
    "etc/mtab": "../proc/self/mounts",
}


def _applet_path(listed: list[str], name: str) -> str:
    for path in listed:
        if os.path.basename(path) == name:
            return "/" + path
    raise EngineError(f"busybox has no {name} applet")


def stage_rootfs(rootfs: Path, binary: Path, listed: list[str]) -> None:
    """Fill the empty directory ROOTFS with the guest's files."""
    for rel, mode in DIRS.items():
        path = make_dirs(rootfs, rel, mode)
        os.chmod(path, mode)  # also for directories made as parents with the default mode
    shutil.copyfile(binary, rootfs / "bin" / "busybox")
    os.chmod(rootfs / "bin" / "busybox", 0o755)
    for rel in listed:
        if rel == "bin/busybox":
            continue
        parent = os.path.dirname(rel)
        if parent:
            make_dirs(rootfs, parent)
        # Relative links resolve inside the tree on the host too, never to the host's busybox.
        os.symlink(os.path.relpath("bin/busybox", parent or "."), rootfs / rel)
    for rel, target in SYMLINKS.items():
        os.symlink(target, rootfs / rel)

    today = int(time.time() // 86400)
    shadow = "".join(
        f"{line.split(':', 1)[0]}:*:{today}:0:99999:7:::\n" for line in PASSWD.splitlines()
    )
    write_file(rootfs, "etc/passwd", PASSWD, 0o644)
    write_file(rootfs, "etc/group", GROUP, 0o644)
    write_file(rootfs, "etc/shadow", shadow, 0o600)  # every account locked until a password is set
    write_file(rootfs, "etc/hostname", "busybox\n", 0o644)
    write_file(rootfs, "etc/hosts", HOSTS, 0o644)
    write_file(rootfs, "etc/profile", PROFILE, 0o644)
    write_file(rootfs, "etc/shells", "/bin/sh\n/bin/ash\n", 0o644)
    write_file(rootfs, "etc/inittab", _inittab(_applet_path(listed, "runsvdir")))
    write_file(rootfs, "etc/init.d/rcS", RCS, 0o755)
    write_file(rootfs, "etc/init.d/rcK", RCK, 0o755)
    write_service(rootfs, SERVICE_DIR, "httpd", HTTPD_RUN)
    write_file(rootfs, "var/www/index.html", INDEX_HTML, 0o644)

    # The template belongs to host root whatever the umask, setgid parents or cache owner.
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), 0, 0)
    os.chown(rootfs, 0, 0)
    os.chmod(rootfs, 0o755)


def build_busybox(config: EngineConfig) -> TemplateInfo:
    """Build a new version of the busybox template (compiling busybox unless it is cached)."""
    if os.geteuid() != 0:
        raise EngineError("building a template needs root: its files must belong to host root")
    binary = ensure_binary(config)
    version, staging = new_version(config, NAME)
    try:
        listed = _verify_binary(binary)
        if "sbin/init" not in listed:
            raise EngineError("busybox does not install init as /sbin/init")
        stage_rootfs(staging / "rootfs", binary, listed)
        return publish(
            config,
            staging,
            TemplateInfo(
                name=NAME,
                version=version,
                init=("/sbin/init",),
                halt_signal=int(signal.SIGUSR2),
                service_dir=SERVICE_DIR,
                account_tool="busybox",
            ),
        )
    except EngineError:
        discard(staging)
        raise
    except Exception as exc:
        discard(staging)
        raise EngineError(f"building the busybox template failed: {exc}") from exc
