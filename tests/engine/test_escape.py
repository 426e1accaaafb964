"""Escape and abuse attempts, each made from inside a VPS by its root, each failing harmlessly;
where it helps, a positive control shows the same thing allowed where it should be (the host,
the VPS's own namespace, an unfiltered user namespace).

The guests have no compiler: escape_probe.c is built statically on the host at test time and
copied in. The list of attempts and what stopped each is printed at the end of the session.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.engine.helpers import compile_static, http_get, install_in_guest, wait_for_http
from vservers.engine import capabilities, guest, launch, seccomp, templates

A_IP, B_IP = "198.19.20.10", "198.19.20.11"
HOG_IP, HOG_NEIGHBOUR_IP = "198.19.20.20", "198.19.20.21"
UNMASK_IP = "198.19.20.30"
PROBE = "/usr/local/bin/escape-probe"
REFUSED = seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
MACHINE = os.uname().machine

# (attack, what stopped it, test) for the summary at the end of the session.
RESULTS: list[tuple[str, str, str]] = []


def record(attack: str, outcome: str) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("::")[-1]
    RESULTS.append((attack, outcome, test))


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if not RESULTS:
            return
        terminalreporter.write_sep("-", "attacks from inside a VPS and what stopped them")
        for attack, outcome, test in RESULTS:
            terminalreporter.write_line(f"{attack}: {outcome}  [{test}]")


@pytest.fixture(scope="module", autouse=True)
def attack_summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("vservers-escape-summary"):
        manager.register(_Summary(), "vservers-escape-summary")
    yield


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_binary(tmp_path_factory) -> bytes:
    return compile_static("escape_probe.c", tmp_path_factory.mktemp("probe")).read_bytes()


def install_probe(engine, name: str, binary: bytes) -> None:
    install_in_guest(engine, name, PROBE, binary)


@pytest.fixture(scope="module")
def pair(engine, probe_binary):
    """esc-a, the attacker, and esc-b, its neighbour, both serving HTTP with the probe inside."""
    from vservers.engine import Limits

    limits = Limits(memory_bytes=64 * 2**20, pids=64, cpus=0.5, disk_bytes=64 * 2**20)
    for name, ip in (("esc-a", A_IP), ("esc-b", B_IP)):
        engine.create(name, "busybox", [f"{ip}/18"], limits)
        engine.start(name)
    wait_for_http(A_IP)
    wait_for_http(B_IP)
    for name in ("esc-a", "esc-b"):
        install_probe(engine, name, probe_binary)
    yield engine
    for name in ("esc-a", "esc-b"):
        engine.delete(name)


def inside(engine, name: str, *argv: str, input=None):
    return engine.run(name, list(argv), input=input)


def sh(engine, name: str, script: str):
    return engine.run(name, ["/bin/sh", "-c", script])


def answers(text: str) -> dict[str, tuple[str, str]]:
    """The probe's "name=ret:ERRNO [detail]" lines as {name: (ret, ERRNO)}."""
    found = {}
    for line in text.splitlines():
        name, sep, rest = line.partition("=")
        if sep and ":" in rest:
            ret, _, err = rest.partition(":")
            found[name] = (ret, err.split()[0] if err.split() else "")
    return found


def host_pids(engine, name: str) -> list[int]:
    return sorted({int(pid) for path in engine.cgroup_procs(name) for pid in path.read_text().split()})


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def status_fields(pid: int | str) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def expected_bounding_set() -> int:
    # The pair runs without "network admin inside" (the default): CAP_NET_ADMIN goes too.
    all_caps = (1 << (capabilities.last_cap() + 1)) - 1
    return all_caps & ~sum(1 << n for n in capabilities.DROPPED) & ~(1 << capabilities.CAP_NET_ADMIN)


# ptrace from the host (root of the host's namespaces) to read a guest process's filter.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SECCOMP_GET_FILTER = 16, 17, 0x420C


def dump_filters(pid: int) -> list[list[tuple[int, int, int, int]]]:
    """The seccomp programs process PID runs under, as the kernel holds them."""
    if _libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), "PTRACE_ATTACH")
    programs = []
    try:
        os.waitpid(pid, 0x40000000)  # __WALL: the tracee stopped
        for index in range(8):
            count = _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, None)
            if count < 0:
                break
            buf = ctypes.create_string_buffer(8 * count)
            _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, buf)
            raw = buf.raw
            programs.append([tuple(int(x) for x in (
                int.from_bytes(raw[i:i + 2], "little"), raw[i + 2], raw[i + 3],
                int.from_bytes(raw[i + 4:i + 8], "little"))) for i in range(0, len(raw), 8)])
    finally:
        _libc.ptrace(PTRACE_DETACH, pid, None, None)
    return programs


@pytest.fixture(scope="module")
def installed_filter(pair):
    """The filter of esc-a's httpd (started by the guest's init), dumped from the kernel."""
    httpd = next(pid for pid in host_pids(pair, "esc-a") if comm(pid) == "httpd")
    programs = dump_filters(httpd)
    assert len(programs) == 1
    return programs[0]


@pytest.fixture(scope="module")
def inside_answers(pair):
    result = inside(pair, "esc-a", PROBE, "syscalls")
    assert result.returncode == 0, result.stderr
    return answers(result.stdout)


@pytest.fixture(scope="module")
def unfiltered_answers(probe_binary, tmp_path_factory):
    """The same calls by root of a fresh user namespace on the host (no filter, no dropped
    capabilities; root there is an unprivileged host uid): what a VPS would get without them."""
    path = tmp_path_factory.mktemp("control") / "escape-probe"
    path.write_bytes(probe_binary)
    path.chmod(0o755)
    result = subprocess.run([str(path), "control"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return answers(result.stdout)


# -- system calls ----------------------------------------------------------------------------

EXTRA_CALLS = {
    "umount2_force": "forced unmount (umount2 with MNT_FORCE)",
    "i386_getpid": "the i386 system-call ABI (int 0x80 from a 64-bit process)",
    "x32_getpid": "the x32 system-call ABI",
}
CALLS = sorted(seccomp.DENIED) + sorted(EXTRA_CALLS)


def call_number(call: str) -> tuple[int | None, int, tuple[int, ...]]:
    native = {"x86_64": seccomp.AUDIT_ARCH_X86_64, "aarch64": seccomp.AUDIT_ARCH_AARCH64}[MACHINE]
    column = 0 if MACHINE == "x86_64" else 1
    if call in seccomp.DENIED:
        return seccomp.DENIED[call][column], native, ()
    if call == "umount2_force":
        return seccomp.DENIED_FLAGS["umount2"][column], native, (0, seccomp.MNT_FORCE)
    if MACHINE != "x86_64":
        return None, native, ()
    if call == "i386_getpid":
        return 20, seccomp.AUDIT_ARCH_I386, ()
    return 39 | seccomp.X32_SYSCALL_BIT, native, ()


@pytest.mark.parametrize("call", CALLS)
def test_refused_system_call(call, inside_answers, unfiltered_answers, installed_filter):
    what = seccomp.DENIED[call][2] if call in seccomp.DENIED else EXTRA_CALLS[call]
    number, arch, args = call_number(call)
    if number is None:
        pytest.skip(f"{call} does not exist on {MACHINE}")
    # The program every process of the VPS runs under refuses it...
    assert seccomp.run_filter(installed_filter, number, arch, args) == REFUSED
    if call not in inside_answers:
        record(f"{call} ({what})", "refused by the filter (read from a guest process's program)")
        return
    # ...and calling it from inside gets the filter's answer.
    assert inside_answers[call] == ("-1", "ENOSYS"), inside_answers[call]
    unfiltered = unfiltered_answers[call][1]
    if unfiltered != "ENOSYS":
        outcome = f"ENOSYS from the filter (unfiltered: {unfiltered})"
    else:
        outcome = "ENOSYS: not in this kernel, and refused by the filter"
    record(f"{call} ({what})", outcome)


def test_allowed_calls_still_work_inside(inside_answers):
    """Positive controls: the filter is a deny list; reboot(2) must pass (a VPS's halt ends its
    init with it), as must a plain umount and name_to_handle_at."""
    assert inside_answers["getpid"][1] == "OK"
    assert inside_answers["reboot_bad_magic"] == ("-1", "EINVAL")  # passed the filter and CAP_SYS_BOOT
    assert inside_answers["umount2"] == ("-1", "ENOENT")
    assert inside_answers["name_to_handle_at"][1] != "ENOSYS"


def test_every_process_of_a_vps_runs_filtered_and_bounded(pair, installed_filter):
    engine = pair
    assert installed_filter == seccomp.build()
    bounding = expected_bounding_set()
    seen = set()
    for name in ("esc-a", "esc-b"):
        for pid in host_pids(engine, name):
            status = status_fields(pid)
            assert status["Seccomp"] == "2" and status["Seccomp_filters"] == "1", (name, comm(pid))
            assert int(status["CapBnd"], 16) == bounding, (name, comm(pid))
            assert status["NoNewPrivs"] == "0"
            seen.add(comm(pid))
    assert {"init", "runsvdir", "httpd"} <= seen
    # A program started by exec, like account and service operations.
    own = dict(line.split(":\t", 1) for line in inside(engine, "esc-a", "cat", "/proc/self/status").stdout
               .splitlines() if ":\t" in line)
    assert own["Seccomp"] == "2" and own["Seccomp_filters"] == "1"
    assert int(own["CapBnd"], 16) == bounding
    assert int(own["CapEff"], 16) == bounding  # the guest's root keeps everything else
    dropped = ", ".join(name for name, _ in capabilities.DROPPED.values())
    record("use a host-wide capability", f"not in any guest process's bounding set: {dropped}")


def test_setuid_programs_work_but_never_regain_a_dropped_capability(pair):
    engine = pair
    result = sh(engine, "esc-a", f"cp {PROBE} /usr/local/bin/probe-suid && chmod 4755 /usr/local/bin/probe-suid && "
                "su -s /bin/sh nobody -c '/usr/local/bin/probe-suid whoami'")
    assert result.returncode == 0, result.stderr
    fields = dict(re.findall(r"^(\w+)[=:]\s*(\S+)$", result.stdout, re.M))
    assert fields["euid"] == "0"  # setuid root works for a guest user (no no_new_privs)...
    assert int(fields["CapEff"], 16) == expected_bounding_set()  # ...within the bounding set
    assert fields["Seccomp"] == "2"
    record("regain a dropped capability through a setuid-root program", "exec never grants beyond the bounding set")


# -- /proc, /sys, /dev -----------------------------------------------------------------------


@pytest.mark.parametrize("path", launch.MASKED_PATHS)
def test_host_state_is_masked(pair, path):
    engine = pair
    host = Path("/") / path
    if not os.path.lexists(host):
        assert inside(engine, "esc-a", "ls", "-d", f"/{path}").returncode != 0
        record(f"read /{path}", "absent on this kernel")
        return
    if host.is_dir():
        listing = inside(engine, "esc-a", "ls", "-A", f"/{path}")
        assert listing.returncode == 0 and listing.stdout == ""
        write = sh(engine, "esc-a", f"touch /{path}/x")
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        record(f"read /{path}", "masked: an empty read-only tmpfs")
    else:
        stat = inside(engine, "esc-a", "stat", "-c", "%t:%T %F", f"/{path}").stdout.strip()
        assert stat == "1:3 character special file", stat
        assert inside(engine, "esc-a", "cat", f"/{path}").stdout == ""
        record(f"read /{path}", "masked: /dev/null bound over it")


def mount_options(engine, name: str, mount_point: str) -> list[str]:
    for line in inside(engine, name, "cat", "/proc/self/mountinfo").stdout.splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            return fields[5].split(",")
    return []


@pytest.mark.parametrize("path", (*launch.READ_ONLY_PATHS, "proc/sys"))
def test_host_state_is_read_only(pair, path):
    engine = pair
    if not os.path.lexists(Path("/") / path):
        assert inside(engine, "esc-a", "ls", "-d", f"/{path}").returncode != 0
        record(f"write /{path}", "absent on this kernel")
        return
    assert "ro" in mount_options(engine, "esc-a", f"/{path}")
    if path == "proc/sys":
        # kernel.shmmni belongs to the VPS's own IPC namespace: writable but for the mount.
        result = sh(engine, "esc-a", "echo 64 > /proc/sys/kernel/shmmni")
        assert result.returncode != 0 and "Read-only file system" in result.stderr
    record(f"write /{path}", "read-only bind mount")


def test_proc_sys_net_is_the_vps_own_and_needs_network_admin(pair):
    """/proc/sys/net is mounted writable (it shows the VPS's own network namespace), but only
    CAP_NET_ADMIN there lets its root write it: without "network admin inside" it may not. The
    positive control (a VPS with network admin writes its own, the host's stays) is in
    test_walls_network.py."""
    engine = pair
    host_before = Path("/proc/sys/net/ipv4/conf/all/forwarding").read_text()
    flip = "0" if host_before.strip() == "1" else "1"
    assert "ro" not in mount_options(engine, "esc-a", "/proc/sys/net")
    result = sh(engine, "esc-a", f"echo {flip} > /proc/sys/net/ipv4/conf/all/forwarding")
    assert result.returncode != 0 and "Permission denied" in result.stderr, result
    assert inside(engine, "esc-a", "cat", "/proc/sys/net/ipv4/conf/all/forwarding").stdout.strip() != flip
    assert Path("/proc/sys/net/ipv4/conf/all/forwarding").read_text() == host_before
    record("change a network sysctl", "refused without network admin inside (with it: the VPS's own namespace only)")


def test_under_the_masks_the_host_files_stay_closed(engine, make_server):
    """The masks are mounts made by the guest's root, so it can remove them; what they cover is
    still the host's, owned by host root and guarded by capabilities of the host's namespace."""
    engine_name = make_server("esc-unmask", f"{UNMASK_IP}/18")
    removed = []
    for path, _ in launch._MASKED_PRESENT:
        if sh(engine, engine_name, f"umount /{path}").returncode == 0:
            removed.append(f"/{path}")
    if sh(engine, engine_name, "mount -o remount,rw /proc/sys").returncode == 0:
        removed.append("read-only /proc/sys")
    closed = {
        "cat /proc/timer_list": "/proc/timer_list",
        "cat /proc/kcore": "/proc/kcore",
        "cat /sys/firmware/acpi/tables/DSDT": "/sys/firmware/acpi/tables/DSDT",
        "echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern": "/proc/sys/kernel/core_pattern",
        "echo 1 > /proc/sys/vm/drop_caches": "/proc/sys/vm/drop_caches",
        "echo b > /proc/sysrq-trigger": "/proc/sysrq-trigger",
    }
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    for script, path in closed.items():
        result = sh(engine, engine_name, script + " >/dev/null")
        assert result.returncode != 0, script
        reason = "absent" if not os.path.lexists(path) else "permission denied"
        if os.path.lexists(path):
            assert "Permission denied" in result.stderr, (script, result.stderr)
        record(f"{script.split(' >')[0]} after removing the masks", reason)
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern
    record("remove the masks", f"possible for the guest's root ({', '.join(removed) or 'none'}): a first layer only")


def test_only_the_vps_own_devices_exist_and_no_new_ones_can_be_made(pair):
    engine = pair
    listing = set(inside(engine, "esc-a", "ls", "-A", "/dev").stdout.split())
    assert listing == {"null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts", "fd",
                       "stdin", "stdout", "stderr", "shm", "mqueue"}
    assert inside(engine, "esc-a", "find", "/", "-xdev", "-type", "b").stdout == ""
    assert inside(engine, "esc-a", "find", "/dev", "-type", "b").stdout == ""
    assert list(Path("/sys/class/block").iterdir()), "positive control: the host has block devices"
    made = answers(inside(engine, "esc-a", PROBE, "mknod", "/root").stdout)
    assert made["mknod_block"] == ("-1", "EPERM")
    assert made["mknod_char_mem"] == ("-1", "EPERM")
    assert made["mknod_fifo"][1] == "OK"  # positive control: a FIFO is no device
    record("make a block or memory device node", "EPERM: the kernel refuses device nodes in a user namespace")
    # The VPS's own disk image is a loop device on the host; from inside there is no node for
    # it, no loop-control to make one, and ext4 cannot be mounted from a user namespace anyway.
    mount = sh(engine, "esc-a", "dd if=/dev/zero of=/root/img bs=1k count=1024 2>/dev/null; mkdir -p /mnt/x; "
               "mount -o loop -t ext4 /root/img /mnt/x")
    assert mount.returncode != 0
    sh(engine, "esc-a", "rm -f /root/img /root/vserver-fifo")
    record("mount a disk (the host's or a loop device)", "no block device nodes, none can be made, no loop-control")


def test_nothing_writes_through_the_dev_tmpfs(pair):
    assert "nodev" in mount_options(pair, "esc-a", "/dev")


# -- processes, namespaces -------------------------------------------------------------------


def test_a_fresh_proc_shows_only_the_vps_and_host_processes_are_out_of_reach(pair):
    engine = pair
    ps = {int(line.split()[0]) for line in inside(engine, "esc-a", "ps", "-o", "pid").stdout.split("\n")[1:]
          if line.strip()}
    result = sh(engine, "esc-a", "mkdir -p /mnt/proc && mount -t proc proc /mnt/proc && "
                "ls /mnt/proc | grep '^[0-9]*$'; cat /mnt/proc/1/comm; umount /mnt/proc")
    assert result.returncode == 0, result.stderr
    numbers = {int(line) for line in result.stdout.split() if line.isdigit()}
    assert "init" in result.stdout and 1 in numbers
    assert ps - {max(ps)} <= numbers  # init and its services (not the ps that listed them)
    others = [os.getpid(), pair.status("esc-b").init_pid]
    assert not numbers & set(others)
    record("mount a fresh proc to see the host", "allowed, but it shows only the VPS's own PID namespace")
    for pid in others:
        assert pid not in ps
        assert answers(inside(engine, "esc-a", PROBE, "kill", str(pid)).stdout)["kill0"] == ("-1", "ESRCH")
    assert answers(inside(engine, "esc-a", PROBE, "kill", "1").stdout)["kill0"] == ("0", "OK")  # own init
    record("signal a host or neighbour process by its host pid", "ESRCH: not in the VPS's PID namespace")


def test_setting_the_clock_fails_and_the_hostname_is_the_vps_own(pair):
    engine = pair
    result = inside(engine, "esc-a", "date", "-s", "2001-01-01 00:00:00")
    assert "can't set date: Function not implemented" in result.stderr  # busybox still exits 0
    assert time.gmtime().tm_year >= 2024
    assert int(inside(engine, "esc-a", "date", "+%Y").stdout) >= 2024
    record("set the host's clock (date -s)", "refused (settimeofday/clock_settime: ENOSYS, no CAP_SYS_TIME)")
    host_name = socket.gethostname()
    try:
        assert inside(engine, "esc-a", "hostname", "pwned").returncode == 0
        assert inside(engine, "esc-a", "hostname").stdout.strip() == "pwned"
        assert socket.gethostname() == host_name
        assert inside(engine, "esc-b", "hostname").stdout.strip() == "esc-b"
    finally:
        inside(engine, "esc-a", "hostname", "esc-a")
    record("change the host's hostname", "changes only the VPS's own UTS namespace (positive control)")


def test_another_vps_ipc_is_out_of_reach(pair):
    engine = pair
    key = "0x56530042"
    own = answers(inside(engine, "esc-a", PROBE, "shm", key, "create").stdout)
    assert own["shmget"][1] == "OK" and own["shmat"][1] == "OK"  # positive control
    other = answers(inside(engine, "esc-b", PROBE, "shm", key, "attach").stdout)
    assert other["shmget"] == ("-1", "ENOENT")
    assert key[2:] not in inside(engine, "esc-b", "ipcs", "-m").stdout
    sh(engine, "esc-a", f"ipcrm -M {key}")
    record("attach to another VPS's shared memory", "ENOENT: each VPS has its own IPC namespace")


def test_cgroups_are_the_vps_own_and_release_agent_is_out_of_reach(pair):
    engine = pair
    release_agents = {p: p.read_text() for p in Path("/sys/fs/cgroup").glob("*/release_agent")}
    cgroup = inside(engine, "esc-a", "cat", "/proc/self/cgroup").stdout.split()
    assert all(line.endswith(":/") for line in cgroup), cgroup
    assert inside(engine, "esc-a", "ls", "-A", "/sys/fs/cgroup").stdout == ""
    script = ("mkdir -p /mnt/cg && mount -t cgroup -o memory cgroup /mnt/cg && cat /mnt/cg/cgroup.procs; "
              "cat /mnt/cg/memory.limit_in_bytes; ls /mnt/cg/release_agent; "
              "echo 1 > /mnt/cg/notify_on_release && echo notify-written; umount /mnt/cg; "
              "mount -t cgroup -o memory,release_agent=/pwn cgroup /mnt/cg && echo agent-mounted; "
              "mount -t cgroup -o devices cgroup /mnt/cg && { echo /pwn > /mnt/cg/release_agent && echo agent-written; "
              "umount /mnt/cg; }; true")
    result = sh(engine, "esc-a", script)
    lines = result.stdout.split()
    assert str(64 * 2**20) in lines  # the mounted memory hierarchy is the VPS's own group...
    guest_pids = {int(x) for x in lines if x.isdigit() and int(x) < 1000}
    assert 1 in guest_pids
    assert "notify-written" not in lines and "agent-mounted" not in lines and "agent-written" not in lines
    assert {p: p.read_text() for p in release_agents} == release_agents
    record("write a cgroup release_agent (CVE-2022-0492)",
           "refused: no release_agent in the VPS's own group, host-owned files elsewhere, "
           "and the kernel wants host CAP_SYS_ADMIN")


# -- the host's runtime and handles ----------------------------------------------------------


def test_writing_through_proc_1_exe_leaves_the_template_alone(pair, config):
    engine = pair
    spec = engine.spec("esc-a")
    template_busybox = templates.rootfs_path(config, spec.template, spec.template_version) / "bin" / "busybox"
    before = hashlib.sha256(template_busybox.read_bytes()).hexdigest()
    opened = answers(inside(engine, "esc-a", PROBE, "inspect", "1").stdout)
    assert opened["open_exe_write"] == ("-1", "ETXTBSY")
    result = sh(engine, "esc-a", "echo pwned >> /proc/1/exe")
    assert result.returncode != 0
    assert hashlib.sha256(template_busybox.read_bytes()).hexdigest() == before
    assert inside(engine, "esc-a", "true").returncode == 0
    assert http_get(B_IP)[0] == 200
    record("overwrite init's binary through /proc/1/exe", "ETXTBSY; the template below is read-only and unchanged")


def test_the_exec_helper_is_out_of_reach_while_it_enters(pair, tmp_path):
    """A deterministic CVE-2019-5736/CVE-2024-21626 check: the helper's child, a copy of the
    engine's Python, is held in the guest's namespaces and cgroups just before it execs (one of
    its "cgroup.procs" files is a full FIFO), while the guest's root goes after it."""
    engine = pair
    fifo = tmp_path / "procs.fifo"
    os.mkfifo(fifo)
    hold = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        while True:
            os.write(hold, b"x" * 4096)
    except BlockingIOError:
        pass
    init_pid = engine.init_pid("esc-a")
    late: dict = {}
    thread = threading.Thread(target=lambda: late.setdefault(
        "result", guest.run(init_pid, [PROBE, "fds"], [*engine.cgroup_procs("esc-a"), fifo], timeout=60)))
    thread.start()
    try:
        # It is a copy of this process (same comm) in the VPS's cgroups; its pid in there:
        ours = Path("/proc/self/comm").read_text().strip()
        deadline = time.monotonic() + 30
        helper_child = None
        while helper_child is None and time.monotonic() < deadline:
            held = [pid for pid in host_pids(engine, "esc-a") if comm(pid) == ours]
            if held:
                helper_child = status_fields(held[0])["NSpid"].split()[-1]
            time.sleep(0.05)
        assert helper_child, "the held helper child never showed up in the guest"
        assert helper_child in inside(engine, "esc-a", "ps", "-o", "pid").stdout.split()  # visible inside
        reach = answers(inside(engine, "esc-a", PROBE, "inspect", helper_child).stdout)
    finally:
        while True:
            try:
                if not os.read(hold, 65536):
                    break
            except BlockingIOError:
                break
        thread.join(60)
        os.close(hold)
    for what in ("readlink_exe", "open_exe_read", "open_exe_write", "readlink_cwd", "open_cwd", "readlink_root",
                 "open_root", "open_fd_dir", "open_mem", "open_environ"):
        assert reach[what] == ("-1", "EACCES"), (what, reach[what])
    assert reach["ptrace_attach"] == ("-1", "EPERM")
    record("reach the exec helper's /proc/PID/exe, cwd, root, fds, memory, or ptrace it",
           "EACCES/EPERM: it is non-dumpable and its memory belongs to the host's user namespace")
    result = late["result"]
    assert result.returncode == 0, result.stderr
    check_only_stdio(result.stdout)


def check_only_stdio(listing: str) -> None:
    fds = dict(line.split(" ", 2)[1:] for line in listing.splitlines() if line.startswith("fd "))
    assert sorted(fds, key=int) == ["0", "1", "2"], listing
    for target in fds.values():
        assert target.startswith(("pipe:", "/dev/pts/", "/dev/null")), listing
    assert "cwd /\n" in listing + "\n"


def test_programs_started_from_the_host_hold_only_their_stdio(pair):
    engine = pair
    check_only_stdio(inside(engine, "esc-a", PROBE, "fds").stdout)
    # The console's path (`vserver enter`): a terminal of the guest's own devpts.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        helper = guest.spawn(engine.init_pid("esc-a"), [PROBE, "fds"], engine.cgroup_procs("esc-a"), null, null,
                             null, pty_socket=theirs.fileno())
    finally:
        theirs.close()
        os.close(null)
    with ours:
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    output = b""
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
        helper.wait()
    check_only_stdio(output.decode().replace("\r\n", "\n"))
    record("find a host fd or cwd in a program started by exec, accounts, services or enter",
           "only fds 0-2 (pipes or the guest's own pty), cwd /")


def test_no_process_inside_holds_anything_outside(pair):
    engine = pair
    engine.accounts("esc-a").list()  # an account operation has run through the helper too
    result = sh(engine, "esc-a", "for l in /proc/[0-9]*/cwd /proc/[0-9]*/root /proc/[0-9]*/fd/*; "
                "do readlink $l; done 2>/dev/null; true")
    links = result.stdout.split()
    assert links, result.stderr
    root = str(pair.config.root)
    for link in links:
        assert "(unreachable)" not in link and not link.startswith(root), link
    record("follow a leaked cwd, root or fd of any process inside to the host",
           "every cwd, root and fd of every process inside resolves inside the VPS")


# -- resource exhaustion beside a neighbour --------------------------------------------------


@pytest.fixture(scope="module")
def hog_pair(engine, probe_binary):
    from vservers.engine import Limits

    engine.create("esc-hog", "busybox", [f"{HOG_IP}/18"],
                  Limits(memory_bytes=48 * 2**20, pids=40, cpus=0.5, disk_bytes=32 * 2**20))
    engine.create("esc-calm", "busybox", [f"{HOG_NEIGHBOUR_IP}/18"], Limits(memory_bytes=48 * 2**20, pids=64))
    for name in ("esc-hog", "esc-calm"):
        engine.start(name)
    wait_for_http(HOG_IP)
    wait_for_http(HOG_NEIGHBOUR_IP)
    install_probe(engine, "esc-hog", probe_binary)
    yield engine
    engine.delete("esc-hog")
    engine.delete("esc-calm")


def neighbour_is_fine(engine) -> None:
    assert http_get(HOG_NEIGHBOUR_IP)[0] == 200
    assert sh(engine, "esc-calm", "touch /root/ok && echo ok").stdout == "ok\n"


def test_inode_exhaustion_stays_on_the_vps_own_disk(hog_pair):
    engine = hog_pair
    result = sh(engine, "esc-hog", f"mkdir -p /root/inodes && {PROBE} fill-inodes /root/inodes")
    created, err = answers(result.stdout)["created"]
    assert err == "ENOSPC" and int(created) > 1000
    assert sh(engine, "esc-hog", "touch /root/one-more").returncode != 0
    neighbour_is_fine(engine)
    assert sh(engine, "esc-hog", "rm -rf /root/inodes && touch /root/after").returncode == 0
    record("exhaust inodes", f"ENOSPC after {created} files on the VPS's own filesystem; the neighbour is fine")


def run_open_files(engine, processes: int, hold: int):
    """The probe's open-files in esc-hog, checking the neighbour while the files are held."""
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault(
        "result", engine.run("esc-hog", [PROBE, "open-files", str(processes), str(hold)], timeout=120)))
    worker.start()
    try:
        time.sleep(1.0)
        neighbour_is_fine(engine)
        with open("/dev/null"):  # the host can still open files
            pass
    finally:
        worker.join(150)
    result = out["result"]
    lines = result.stdout.splitlines()
    hard = int(next(line for line in lines if line.startswith("rlimit_nofile=")).split("/")[1])
    assert answers(result.stdout)["raise_hard_limit"] == ("-1", "EPERM")
    opened = [answers(line)["opened"] for line in lines if line.startswith("opened=")]
    assert all(err in ("EMFILE", "ENOMEM") for _, err in opened), opened
    assert "ENFILE" not in result.stdout
    return hard, opened


def test_open_file_exhaustion_never_reaches_the_host_file_table(hog_pair):
    """Each process stops at its RLIMIT_NOFILE, whose hard limit the guest cannot raise; all of
    them together stop at the memory cgroup, which is charged for every open file. The host's
    file table (fs.file-max) is shared and not namespaced: not reached here, but see the record
    for how large a memory limit could."""
    engine = hog_pair
    in_use = int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    hard, opened = run_open_files(engine, 2, 2)
    assert len(opened) == 2 and all(int(count) >= hard - 8 and err == "EMFILE" for count, err in opened), opened
    record("open files beyond the per-process limit", f"EMFILE at RLIMIT_NOFILE {hard}; raising the hard limit: EPERM")
    _, opened = run_open_files(engine, 30, 4)
    neighbour_is_fine(engine)
    after_state = engine.status("esc-hog").state
    total = sum(int(count) for count, _ in opened)
    fate = "survived" if after_state == "running" else "lost its init"
    file_max = int(Path("/proc/sys/fs/file-max").read_text())
    per_file = 230  # bytes charged to the memory cgroup per open file, as measured on this host
    record("open files in many processes",
           f"stopped by the memory cgroup (48 MiB): {len(opened)} of 30 processes reached their limit "
           f"({total} files), the rest OOM-killed; the VPS {fate};"
           f" host file table untouched ({in_use} in use of {file_max}); a VPS allowed more than "
           f"~{file_max * per_file // 2**20} MiB of memory could fill it")
    if after_state != "running":  # the memory cgroup's OOM killer may pick init
        engine.start("esc-hog")
