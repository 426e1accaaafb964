"""Issue 10, findings 8 and 5, attacked from inside real busybox VPSs.

8: a guest that replaces its /dev, /proc, /sys or /run with a link must not make the next start
   write anything on the host (the setup child mounted them while its root was the host's).
5: one guest must not take the host's whole pty pool (kernel.pty.max is shared by every devpts
   instance): neighbours and host root keep opening terminals, and `enter` keeps working.

Each attack has a positive control showing it works where the defence is absent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.engine.helpers import compile_static, install_in_guest, wait_for_http
from tests.leaks import TEST_ENV
from vservers.engine import guest, launch, ptys, syscalls
from vservers.engine.errors import EngineError

LINK_IP = "198.19.42.10"
PTY_A_IP, PTY_B_IP = "198.19.42.20", "198.19.42.21"
PTY_TOOL = "/usr/local/bin/pty-tool"
REPO = Path(__file__).resolve().parents[2]


def sh(engine, name: str, script: str, check: bool = True):
    result = engine.run(name, ["/bin/sh", "-c", script])
    if check:
        assert result.returncode == 0, f"{script}: {result.stdout}{result.stderr}"
    return result


def cli_from(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The `vserver` CLI as an operator would run it, from CWD (not from the checkout)."""
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vservers.engine.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def snapshot(path: Path) -> tuple:
    st = path.stat()
    return sorted(os.listdir(path)), st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ctime_ns


# -- 8: guest links at the guest's mount points ---------------------------------------------------

# What the start did before the fix, step for step (mount through the path, then create the
# nodes below it), in a throwaway mount namespace: the host directory that the link leads to
# gets the files.
_OLD_RESOLUTION = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from vservers.engine import syscalls
    root, victim = Path(sys.argv[1]), sys.argv[2]
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    os.chdir(victim)
    syscalls.mount("tmpfs", root / "dev", "tmpfs", syscalls.MS_NOSUID, "mode=755,size=64k")
    (root / "dev" / "null").touch(mode=0o666)
    (root / "dev" / "fd").symlink_to("/proc/self/fd")
""")


def test_positive_control_old_start_path_writes_into_the_host_directory(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o777)
    fake_root = tmp_path / "guest-root"
    fake_root.mkdir()
    (fake_root / "dev").symlink_to("/proc/self/cwd")
    result = subprocess.run([sys.executable, "-c", _OLD_RESOLUTION, str(fake_root), str(victim)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    # Seen from the host's own mount namespace: the files are in the host directory.
    assert sorted(os.listdir(victim)) == ["fd", "null"]
    # The same lookup as the engine now makes it: inside the root, no link followed.
    root_fd = os.open(fake_root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as refused:
            syscalls.openat2(root_fd, "dev/null", os.O_PATH, syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS)
        assert refused.value.errno == errno.ELOOP
        fd = launch._guest_mount_point(root_fd, "dev")  # replaced inside the root, nothing outside
        try:
            assert stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)
    assert not (fake_root / "dev").is_symlink() and (fake_root / "dev").is_dir()
    assert sorted(os.listdir(victim)) == ["fd", "null"]  # untouched by the new lookup


_CANNOT_REPLACE = textwrap.dedent("""
    import os, sys
    from vservers.engine import launch, syscalls
    from vservers.engine.errors import EngineError
    root, victim = sys.argv[1], sys.argv[2]
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(root, root, None, syscalls.MS_BIND)
    syscalls.mount(None, root, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)
    os.chdir(victim)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        launch.mount_guest_filesystems(root_fd)
    except EngineError as exc:
        print(exc)
""")


def test_a_mount_point_that_cannot_be_replaced_is_a_clear_start_error(tmp_path):
    """The guest's root is read-only (as a full or broken disk would leave it): the start stops
    with an error naming the path, before any mount, and writes nothing anywhere."""
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o777)
    fake_root = tmp_path / "guest-root"
    fake_root.mkdir()
    (fake_root / "proc").symlink_to("/proc/self/cwd")
    result = subprocess.run([sys.executable, "-c", _CANNOT_REPLACE, str(fake_root), str(victim)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cannot replace /proc of the guest (not a directory): Read-only file system"
    assert os.listdir(victim) == []
    assert (fake_root / "proc").is_symlink()


def _plant(engine, name: str, script: str) -> list[str]:
    """Unmount the engine's filesystems inside the running guest (its root may) and put
    SCRIPT's entries in their place; they stay in the upper layer after the stop. What is at
    /dev, /proc, /sys and /run then."""
    planted = sh(engine, name, "for d in /dev /run /sys /proc; do umount -l $d; done; "
                               "rm -rf /dev /run /sys /proc && " + script + " && "
                               "for d in /dev /proc /sys /run; do stat -c %F $d 2>&1; done").stdout
    engine.stop(name)
    return planted.splitlines()


def _check_guest_mounts(engine, name: str) -> None:
    kinds = sh(engine, name, "stat -c %F /dev /proc /sys /run").stdout.split("\n")
    assert kinds[:4] == ["directory"] * 4, kinds
    mounts = {line.split()[1]: line.split()[2] for line in sh(engine, name, "cat /proc/mounts").stdout.splitlines()}
    assert (mounts["/proc"], mounts["/sys"], mounts["/dev"], mounts["/run"], mounts["/dev/pts"]) == (
        "proc", "sysfs", "tmpfs", "tmpfs", "devpts")
    listing = set(sh(engine, name, "ls -A /dev").stdout.split())
    assert {"null", "zero", "urandom", "tty", "ptmx", "pts", "shm", "mqueue"} <= listing
    assert sh(engine, name, "cat /proc/1/comm").stdout.strip() == "init"
    assert "Read-only" in sh(engine, name, "touch /sys/x", check=False).stderr


def test_guest_links_at_its_mount_points_never_lead_the_start_to_the_host(engine, make_server, tmp_path):
    victim = tmp_path / "victim"  # the operator's cwd, writable by others (as /tmp would be)
    victim.mkdir()
    victim.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"  # a host directory named by absolute path
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    before = {victim: snapshot(victim), elsewhere: snapshot(elsewhere)}
    name = make_server("sp-links", f"{LINK_IP}/18")
    planted = _plant(engine, name, f"ln -s /proc/self/cwd /dev && ln -s /proc/self/cwd /proc && "
                                   f"ln -s /proc/self/cwd/. /sys && ln -s {elsewhere} /run")
    assert planted == ["symbolic link"] * 4
    started = cli_from(victim, "start", name)
    # Decided: the start replaces a non-directory at /dev, /proc, /sys or /run by an empty
    # directory inside the guest's root (all four are hidden under the engine's mounts while
    # it runs), so the server boots; the link's target is never looked at.
    assert started.returncode == 0, started.stderr
    assert {path: snapshot(path) for path in before} == before
    wait_for_http(LINK_IP)
    _check_guest_mounts(engine, name)

    # Not links but other kinds of file: a regular file, a FIFO (opening it would block), none.
    planted = _plant(engine, name, "echo x > /dev && mkfifo /run && mkdir /proc")
    assert planted[0] == "regular file" and planted[1] == "directory" and planted[3] == "fifo", planted
    assert "No such file" in planted[2], planted
    started = cli_from(victim, "start", name)
    assert started.returncode == 0, started.stderr
    assert {path: snapshot(path) for path in before} == before
    _check_guest_mounts(engine, name)


# -- 5: the pty pool -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pty_tool(tmp_path_factory) -> Path:
    return compile_static("pty_tool.c", tmp_path_factory.mktemp("pty"))


def _install(engine, name: str, tool: Path) -> None:
    install_in_guest(engine, name, PTY_TOOL, tool.read_bytes())


def _opened(text: str) -> tuple[int, str]:
    fields = dict(part.split("=", 1) for part in text.split())
    return int(fields["opened"]), fields["errno"]


def _memory_dir(engine, name: str) -> Path:
    (path,) = [p.parent for p in engine.cgroup_procs(name) if "/memory/" in str(p)]
    return path


def _meminfo() -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}


def _console(engine, name: str, script: str) -> tuple[int, bytes]:
    """Run SCRIPT on a terminal of the guest's own devpts, as `vserver enter` does."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        helper = guest.spawn(engine.init_pid(name), ["/bin/sh", "-c", script], engine.cgroup_procs(name), null, null,
                             null, pty_socket=theirs.fileno())
    finally:
        theirs.close()
        os.close(null)
    with ours:
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    output = b""
    if fds:
        try:
            while True:
                try:
                    block = os.read(fds[0], 65536)
                except OSError:  # EIO: the program and its terminal are gone
                    break
                if not block:
                    break
                output += block
        finally:
            os.close(fds[0])
    return helper.wait(timeout=60), output


def test_positive_control_a_devpts_instance_without_max_goes_past_the_cap(pty_tool, tmp_path):
    """Without max= an instance is bounded only by the host-wide pool: one more than a guest's
    cap opens (in a throwaway mount namespace on the host)."""
    pts = tmp_path / "pts"
    pts.mkdir()
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t devpts -o newinstance,ptmxmode=0666 devpts "$1" && PTMX="$1/ptmx" exec "$2" {ptys.PER_VPS + 1}',
         "sh", str(pts), str(pty_tool)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _opened(result.stdout) == (ptys.PER_VPS + 1, "0")


def test_the_host_pty_pool_is_raised_for_every_guest_and_never_lowered(engine):
    reserve = int(Path("/proc/sys/kernel/pty/reserve").read_text())
    floor = ptys.host_floor(reserve)
    assert floor == min(ptys.PER_VPS * ptys.VPS_PER_HOST + reserve + 1, ptys.CEILING)
    pty_max = Path("/proc/sys/kernel/pty/max")
    original = int(pty_max.read_text())
    assert original >= floor  # the engine's bridge set-up has run
    try:
        pty_max.write_text("4096")  # the kernel's default
        assert ptys.raise_host_limit() == floor
        assert int(pty_max.read_text()) == floor
        pty_max.write_text(str(floor + 7))  # an operator's higher value stays
        assert ptys.raise_host_limit() is None
        assert int(pty_max.read_text()) == floor + 7
    finally:
        pty_max.write_text(str(max(original, floor)))


def test_one_guest_cannot_take_the_pty_pool_from_its_neighbours_or_the_host(engine, make_server, pty_tool, capsys):
    attacker = make_server("sp-pty-a", f"{PTY_A_IP}/18", memory_bytes=256 * 2**20)
    neighbour = make_server("sp-pty-b", f"{PTY_B_IP}/18")
    for name in (attacker, neighbour):
        _install(engine, name, pty_tool)
    memory = _memory_dir(engine, attacker)
    usage = memory / "memory.usage_in_bytes"
    kmem = memory / "memory.kmem.usage_in_bytes"
    host_before = _meminfo()
    usage_before, kmem_before = int(usage.read_text()), int(kmem.read_text())
    sh(engine, attacker, f"{PTY_TOOL} 0 hold > /tmp/pty.out 2>&1 &")
    deadline = time.monotonic() + 60
    while "opened=" not in (out := sh(engine, attacker, "cat /tmp/pty.out").stdout):
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    count, why = _opened(out)
    host_after = _meminfo()
    usage_after, kmem_after = int(usage.read_text()), int(kmem.read_text())

    # The attacker stopped at its own instance's cap, far below what the host's pool allows guests.
    pool = int(Path("/proc/sys/kernel/pty/max").read_text()) - int(Path("/proc/sys/kernel/pty/reserve").read_text()) - 1
    assert (count, why) == (ptys.PER_VPS, "ENOSPC")
    assert count < pool
    # The neighbour still opens one, and its console (the path of `vserver enter`) works.
    assert _opened(sh(engine, neighbour, f"{PTY_TOOL} 1").stdout) == (1, "0")
    code, output = _console(engine, neighbour, "tty; echo marker-$((6*7))")
    assert code == 0 and b"marker-42" in output and b"/dev/pts/" in output, output
    assert sh(engine, neighbour, "echo exec-works").stdout.strip() == "exec-works"
    # And host root (the initial devpts instance) too.
    master, slave = os.openpty()
    os.close(master)
    os.close(slave)

    charged = kmem_after - kmem_before
    outside = (host_after["Slab"] - host_before["Slab"]) + (host_after["VmallocUsed"] - host_before["VmallocUsed"]) \
        - charged
    per_pty = {
        "guest cgroup memory": (usage_after - usage_before) / count,
        "guest cgroup kmem": (kmem_after - kmem_before) / count,
        "host Slab": (host_after["Slab"] - host_before["Slab"]) / count,
        "host VmallocUsed": (host_after["VmallocUsed"] - host_before["VmallocUsed"]) / count,
        "host MemAvailable drop": (host_before["MemAvailable"] - host_after["MemAvailable"]) / count,
    }
    with capsys.disabled():
        print(f"\npty pool: attacker opened {count} ({why}); per pty: "
              + ", ".join(f"{key} {value / 1024:.1f} KiB" for key, value in per_pty.items())
              + f"; outside the guest's cgroup: {outside / 2**20:.1f} MiB for the whole cap")
    # The slab part (tty_struct, inodes, files) is charged to the guest; n_tty's buffers are
    # vmalloc'd without accounting: that part is what the cap bounds, ~24 KiB a pty.
    assert charged >= count * 1024
    assert outside <= ptys.PER_VPS * ptys.UNCHARGED_BYTES_BOUND


def test_a_devpts_of_the_guests_own_is_bounded_by_its_memory_and_the_pool(engine, make_server, pty_tool, capsys):
    """The guest's root may mount a devpts instance of its own (devpts is mountable in a user
    namespace), without max=: the cap of its /dev/pts does not hold there (the control). What
    bounds it then is its memory cgroup (each pty charges its slab part, ~3 KiB) and the host's
    pool, which the engine made large enough that a small guest runs out of memory long before
    the pool. Not bounded by the cgroup: each pty's ~24 KiB of vmalloc, printed here (a known
    limit, docs/security.md)."""
    limit = 32 * 2**20
    attacker = make_server("sp-pty-c", f"{PTY_A_IP}/18", memory_bytes=limit)
    neighbour = make_server("sp-pty-d", f"{PTY_B_IP}/18")
    for name in (attacker, neighbour):
        _install(engine, name, pty_tool)
    host_before = _meminfo()
    sh(engine, attacker, f"mkdir -p /tmp/pts && mount -t devpts -o newinstance,ptmxmode=0666 none /tmp/pts && "
                         f"(PTMX=/tmp/pts/ptmx {PTY_TOOL} 0 hold > /tmp/pty.out 2>&1 &)")
    # Until the host's pty count settles (the tool prints and holds, or the guest's OOM killer
    # ends it), then what the tool said if the guest still runs.
    nr = Path("/proc/sys/kernel/pty/nr")
    deadline = time.monotonic() + 120
    seen, peak, steady, vmalloc_peak = -1, 0, 0, 0
    while steady < 10:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        now = int(nr.read_text())
        peak = max(peak, now)
        vmalloc_peak = max(vmalloc_peak, _meminfo()["VmallocUsed"] - host_before["VmallocUsed"])
        steady = steady + 1 if now == seen else 0
        seen = now
    out = None
    if engine.status(attacker).state == "running":
        with contextlib.suppress(EngineError, OSError):
            out = engine.run(attacker, ["/bin/cat", "/tmp/pty.out"])
    host_after = _meminfo()
    pool = int(Path("/proc/sys/kernel/pty/max").read_text()) - int(Path("/proc/sys/kernel/pty/reserve").read_text()) - 1
    in_use = peak
    outcome = _opened(out.stdout) if out is not None and "opened=" in out.stdout else None
    state = engine.status(attacker).state
    after = {key: host_after[key] - host_before[key] for key in ("VmallocUsed", "Slab")}
    with capsys.disabled():
        print(f"\nown devpts of a 32 MiB guest: {outcome or 'ended by its memory cgroup'} (server {state}); "
              f"most ptys in use on the host {in_use} of the guests' pool {pool}; host VmallocUsed at most "
              f"+{vmalloc_peak / 2**20:.0f} MiB meanwhile, {after['VmallocUsed'] / 2**20:+.1f} MiB after; "
              f"Slab {after['Slab'] / 2**20:+.1f} MiB after")
    # Past its /dev/pts cap (the control: the cap alone does not hold here) ...
    assert in_use > ptys.PER_VPS
    # ... but stopped by its memory (each pty charges it at least 2 KiB), far from the pool: the
    # neighbour and the host still open one.
    assert in_use <= limit // 2048 < pool
    assert _opened(sh(engine, neighbour, f"{PTY_TOOL} 1").stdout) == (1, "0")
    code, output = _console(engine, neighbour, "echo marker-$((6*7))")
    assert code == 0 and b"marker-42" in output
    master, slave = os.openpty()
    os.close(master)
    os.close(slave)
