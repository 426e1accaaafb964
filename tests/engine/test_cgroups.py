"""cgroup layer: v1 against this machine's kernel, v2 against a directory laid out like cgroupfs v2."""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vservers.engine.cgroups import CgroupV1, CgroupV2, block_device_number, detect, missing_controllers
from vservers.engine.config import EngineConfig
from vservers.engine.errors import Conflict, EngineError, InvalidInput
from vservers.engine.spec import Limits, Usage

MiB = 1024 * 1024
SYS_CGROUP = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")


def config_with(cgroup_root: Path) -> EngineConfig:
    config = EngineConfig.from_env({"VSERVER_ROOT": "/tmp/vservers-test-cgroups"})
    return dataclasses.replace(config, cgroup_root=cgroup_root)


def host_has_v1() -> bool:
    return not (SYS_CGROUP / "cgroup.controllers").exists() and not missing_controllers(
        config_with(SYS_CGROUP)
    )


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- v1, for real ---------------------------------------------------------------------------


class Gated:
    """A child that waits on stdin before exec'ing argv, so it can join a cgroup before it runs."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["sh", "-c", 'read _ && exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()


@pytest.fixture
def v1() -> Iterator[CgroupV1]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not host_has_v1():
        pytest.skip("this host has no complete cgroup v1")
    backend = CgroupV1(SYS_CGROUP, f"vservers-test-cg-{secrets.token_hex(4)}")
    try:
        yield backend
    finally:
        for name in backend.names():
            backend.destroy(name)
        for parent in backend.parent_paths():
            if parent.is_dir():
                parent.rmdir()


@pytest.fixture
def spawn() -> Iterator[Callable[[list[str]], Gated]]:
    children: list[Gated] = []

    def start(argv: list[str]) -> Gated:
        child = Gated(argv)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()
        if child.proc.stderr is not None:
            child.proc.stderr.close()


def read(path: Path) -> str:
    return path.read_text().strip()


def test_v1_create_applies_and_reads_back_limits(v1: CgroupV1) -> None:
    v1.create("web", Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50))

    assert v1.limits("web") == Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50)
    cpu = v1.group("cpu", "web")
    assert read(cpu / "cpu.cfs_quota_us") == "50000"
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "cpu.shares") == "512"
    memsw = v1.group("memory", "web") / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert int(read(memsw)) == 64 * MiB
    paths = v1.paths("web")
    assert len(paths) == len({p.resolve() for p in paths}) == 6
    assert all(p.is_dir() for p in paths)
    assert v1.exists("web") and v1.names() == ["web"]


def test_v1_update_raises_lowers_and_unlimits(v1: CgroupV1) -> None:
    v1.create("web", Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50))
    v1.create("web", Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50))  # idempotent

    v1.update("web", Limits(cpus=2, memory_bytes=256 * MiB, pids=None))
    assert v1.limits("web") == Limits(cpus=2.0, memory_bytes=256 * MiB, pids=None)
    assert read(v1.group("cpu", "web") / "cpu.shares") == "2048"

    v1.update("web", Limits(cpus=0.01, memory_bytes=16 * MiB, pids=3))
    assert v1.limits("web") == Limits(cpus=0.01, memory_bytes=16 * MiB, pids=3)
    assert read(v1.group("cpu", "web") / "cpu.shares") == "10"

    v1.update("web", Limits())
    assert v1.limits("web") == Limits(cpus=None, memory_bytes=None, pids=None)
    assert read(v1.group("cpu", "web") / "cpu.cfs_quota_us") == "-1"
    assert read(v1.group("pids", "web") / "pids.max") == "max"


def test_v1_update_of_missing_group_fails(v1: CgroupV1) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        v1.update("ghost", Limits())
    assert v1.limits("ghost") is None
    assert v1.usage("ghost") == Usage()
    assert v1.procs("ghost") == []


def test_v1_attach_shows_process_and_usage(v1: CgroupV1, spawn: Callable[[list[str]], Gated]) -> None:
    v1.create("web", Limits(cpus=1, memory_bytes=64 * MiB, pids=20))
    child = spawn(["sleep", "30"])
    v1.attach("web", child.pid)
    child.release()

    assert v1.procs("web") == [child.pid]
    for path in v1.paths("web"):
        assert child.pid in {int(p) for p in (path / "cgroup.procs").read_text().split()}
    # exec after joining charges the new process image to the group
    wait_for(lambda: v1.usage("web").memory_bytes > 0)
    usage = v1.usage("web")
    assert usage.pids >= 1
    assert usage.cpu_seconds >= 0
    assert usage.disk_used_bytes == 0

    v1.kill("web")
    assert child.proc.wait(timeout=5) == -9
    wait_for(lambda: v1.procs("web") == [])


def test_v1_join_self_moves_the_whole_single_threaded_process(v1: CgroupV1) -> None:
    v1.create("self", Limits(pids=20))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # single-threaded, as the engine's setup child
        code = 1
        try:
            v1.join_self("self")
            os.write(ready_w, b"j")
            time.sleep(30)
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"j"
        assert v1.procs("self") == [pid]
        for path in v1.paths("self"):
            assert (path / "cgroup.procs").read_text().split() == [str(pid)]
        assert v1.usage("self").pids == 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)
    v1.destroy("self")
    with pytest.raises(EngineError, match="does not exist"):
        v1.join_self("self")


def test_v1_memory_limit_kills_a_hog(v1: CgroupV1, spawn: Callable[[list[str]], Gated]) -> None:
    v1.create("hog", Limits(memory_bytes=32 * MiB))
    child = spawn([sys.executable, "-c", "b = b'x' * (200 * 1024 * 1024)"])
    v1.attach("hog", child.pid)
    child.release()

    assert child.proc.wait(timeout=60) == -9


def test_v1_pids_limit_stops_forks(v1: CgroupV1, spawn: Callable[[list[str]], Gated]) -> None:
    v1.create("forker", Limits(pids=5))
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; echo spawned; wait"
    child = spawn(["sh", "-c", script])
    v1.attach("forker", child.pid)
    child.release()

    assert child.proc.stderr is not None
    err = child.proc.stderr.readline()  # the first failed fork
    assert b"fork" in err.lower()
    assert v1.usage("forker").pids == 5  # the shell (alive or not yet reaped) and 4 sleeps
    sleepers = v1.procs("forker")
    assert 4 <= len(sleepers) <= 5
    v1.destroy("forker")
    assert child.proc.wait(timeout=5) in (2, -9)  # gave up after the failed fork, or killed first
    assert not v1.exists("forker")
    for pid in sleepers:
        assert not Path(f"/proc/{pid}").exists() or read(Path(f"/proc/{pid}/stat")).split()[2] == "Z"


def test_v1_cpu_quota_throttles(v1: CgroupV1, spawn: Callable[[list[str]], Gated]) -> None:
    v1.create("busy", Limits(cpus=0.2))
    busy_loop = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1: pass"
    child = spawn([sys.executable, "-c", busy_loop])
    v1.attach("busy", child.pid)
    child.release()
    assert child.proc.wait(timeout=30) == 0

    # one second of wall time at a fifth of a core: about 0.2 s, far from the 1 s unthrottled
    assert 0.05 < v1.usage("busy").cpu_seconds < 0.6


def test_v1_destroy_kills_and_removes_everything(v1: CgroupV1, spawn: Callable[[list[str]], Gated]) -> None:
    v1.create("one", Limits(cpus=0.5, memory_bytes=64 * MiB, pids=20))
    v1.create("two", Limits())
    first, second = spawn(["sleep", "30"]), spawn(["sleep", "30"])
    v1.attach("one", first.pid)
    v1.attach("two", second.pid)
    first.release()
    second.release()

    v1.destroy("one")
    assert first.proc.wait(timeout=5) == -9
    assert not v1.exists("one")
    assert not any(p.exists() for p in v1.paths("one"))
    assert all(p.is_dir() for p in v1.parent_paths()), "parent still holds 'two'"
    assert second.proc.poll() is None

    v1.destroy("two")
    assert second.proc.wait(timeout=5) == -9
    assert v1.names() == []
    for controller in V1_CONTROLLERS:
        assert not (SYS_CGROUP / controller / v1.parent).exists()

    v1.destroy("two")  # idempotent
    v1.destroy("never-made")


def test_v1_attach_to_missing_group_or_process_fails(v1: CgroupV1) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        v1.attach("ghost", os.getpid())
    v1.create("web", Limits())
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(EngineError, match="cgroup.procs"):
        v1.attach("web", dead.pid)


# --- disk I/O, v1 for real --------------------------------------------------------------------

IO_LIMITS = Limits(io_read_bps=20 * MiB, io_write_bps=10 * MiB, io_read_iops=400, io_write_iops=200)


def throttle(v1: CgroupV1, name: str, what: str) -> str:
    return read(v1.group("blkio", name) / f"blkio.throttle.{what}_device")


def host_throttle(v1: CgroupV1, device: str, what: str) -> list[str]:
    """The root group's lines for DEVICE: the kernel's own writeback for the server."""
    lines = read(v1.hierarchy("blkio") / f"blkio.throttle.{what}_device").splitlines()
    return [line for line in lines if line.split()[0] == device]


@pytest.fixture
def own_loop(tmp_path: Path, v1: CgroupV1) -> Iterator[str]:
    """A loop device of the test's own (attached to a small file), so the root group's ceilings
    the engine sets for a server's device never touch a device someone else uses."""
    from vservers.engine import loopdev

    image = tmp_path / "image"
    image.write_bytes(b"\0" * MiB)
    path, fd = loopdev.attach(image)
    device = block_device_number(path)
    try:
        yield device
    finally:
        v1.release_io(device)
        os.close(fd)  # autoclear detaches it
        assert loopdev.wait_released(path, image)


def test_v1_io_ceilings_go_on_the_device_and_read_back(v1: CgroupV1, own_loop: str) -> None:
    device = own_loop
    assert device.startswith("7:")
    v1.create("disk", IO_LIMITS)
    assert throttle(v1, "disk", "write_bps") == ""  # nothing before the device is known

    v1.limit_io("disk", device, IO_LIMITS)

    assert throttle(v1, "disk", "read_bps") == f"{device} {20 * MiB}"
    assert throttle(v1, "disk", "write_bps") == f"{device} {10 * MiB}"
    assert throttle(v1, "disk", "read_iops") == f"{device} 400"
    assert throttle(v1, "disk", "write_iops") == f"{device} 200"
    weight_files = [f for f in ("blkio.bfq.weight", "blkio.weight") if (v1.group("blkio", "disk") / f).exists()]
    # This host's kernel has no BFQ: no weight file, and limits() says no weight is in force.
    expected_weight = None if not weight_files else 100
    assert v1.limits("disk") == dataclasses.replace(IO_LIMITS, io_weight=expected_weight)
    assert v1.limits("disk", device) == v1.limits("disk")
    assert v1.limits("disk", "7:9999").io_write_bps is None  # type: ignore[union-attr]
    # The same ceilings on the root group, for the flusher's writeback of this device's pages.
    assert host_throttle(v1, device, "write_bps") == [f"{device} {10 * MiB}"]
    assert host_throttle(v1, device, "read_iops") == [f"{device} 400"]

    v1.release_io(device)
    assert all(host_throttle(v1, device, what) == [] for what in ("read_bps", "write_bps", "read_iops", "write_iops"))
    assert throttle(v1, "disk", "write_bps") == f"{device} {10 * MiB}"  # the group's stay until it goes


def test_v1_io_ceilings_change_and_clear_live(v1: CgroupV1, own_loop: str) -> None:
    device = own_loop
    v1.create("disk", Limits())
    v1.limit_io("disk", device, IO_LIMITS)

    v1.update("disk", Limits(io_write_bps=5 * MiB, io_read_iops=50), device)
    limits = v1.limits("disk")
    assert limits is not None
    assert (limits.io_read_bps, limits.io_write_bps, limits.io_read_iops, limits.io_write_iops) == (
        None, 5 * MiB, 50, None)
    assert throttle(v1, "disk", "read_bps") == ""  # a cleared ceiling leaves no line
    assert host_throttle(v1, device, "write_bps") == [f"{device} {5 * MiB}"]
    assert host_throttle(v1, device, "read_bps") == []

    v1.update("disk", Limits(), device)
    assert all(throttle(v1, "disk", what) == "" for what in ("read_bps", "write_bps", "read_iops", "write_iops"))
    assert v1.limits("disk") == Limits()


def test_v1_processes_join_blkio_too(v1: CgroupV1) -> None:
    v1.create("web", Limits())
    blkio = v1.group("blkio", "web")
    assert blkio.is_dir()
    assert blkio / "cgroup.procs" in v1.procs_files("web")


def test_v1_server_started_without_a_blkio_group_is_entered_and_refuses_io_ceilings(
    v1: CgroupV1, own_loop: str
) -> None:
    # What an engine before disk I/O limits left running: the group in every hierarchy but blkio.
    v1.create("old", Limits())
    v1.group("blkio", "old").rmdir()

    files = v1.procs_files("old")
    assert len(files) == 5 and all(path.exists() for path in files)
    v1.update("old", Limits(cpus=0.5), own_loop)  # no ceiling: fine
    with pytest.raises(EngineError, match="from its next start"):
        v1.update("old", Limits(io_write_bps=10 * MiB), own_loop)


def test_block_device_numbers_only_of_block_devices(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not a block device"):
        block_device_number("/dev/null")
    with pytest.raises(EngineError, match="cannot stat"):
        block_device_number(tmp_path / "nothing")


@pytest.mark.parametrize("device", ["", "7", "7:", "a:b", "7:0 rbps=1", "7:0\n8:0 1", "-7:0"])
def test_io_ceilings_need_a_device_number(fake_root: Path, device: str) -> None:
    fake_group(fake_root / "vs")
    fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    with pytest.raises(InvalidInput, match="MAJOR:MINOR"):
        backend.limit_io("web", device, IO_LIMITS)
    with pytest.raises(InvalidInput, match="MAJOR:MINOR"):
        backend.update("web", IO_LIMITS, device)


# --- v1 layout, in a temporary directory ----------------------------------------------------


def test_v1_comounted_cpu_cpuacct_is_one_hierarchy(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    (tmp_path / "memory").mkdir()
    (tmp_path / "pids").mkdir()
    real = tmp_path.resolve()

    backend = CgroupV1(tmp_path, "vs")

    assert backend.parent_paths() == [
        real / "cpu,cpuacct" / "vs",
        real / "memory" / "vs",
        real / "pids" / "vs",
        real / "blkio" / "vs",
        real / "freezer" / "vs",
    ]
    assert backend.paths("a") == [p / "a" for p in backend.parent_paths()]


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/abs", "cpu.max", "a\0b", "x" * 200])
def test_names_must_be_simple(tmp_path: Path, bad: str) -> None:
    backend = CgroupV2(tmp_path, "vs")
    for call in (backend.exists, backend.procs, backend.limits, backend.paths, backend.destroy):
        with pytest.raises(InvalidInput):
            call(bad)
    with pytest.raises(InvalidInput):
        backend.create(bad, Limits())
    with pytest.raises(InvalidInput):
        CgroupV1(tmp_path, bad)


def test_limits_must_be_positive(tmp_path: Path) -> None:
    backend = CgroupV2(tmp_path, "vs")
    for limits in (
        Limits(cpus=0),
        Limits(memory_bytes=-1),
        Limits(pids=0),
        Limits(io_weight=0),
        Limits(io_weight=10_001),
        Limits(io_read_bps=0),
        Limits(io_write_bps=-1),
        Limits(io_read_iops=0),
        Limits(io_write_iops=1.5),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInput):
            backend.create("a", limits)
    assert not (tmp_path / "vs").exists()


def _counter(path: Path) -> int:
    text = path.read_text() if path.exists() else ""
    return int(text) if text.isdigit() else 0


def _advances(path: Path, timeout: float = 10.0) -> bool:
    """Whether the counter in PATH moves on within TIMEOUT (polls, returns at the first step)."""
    first = _counter(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _counter(path) > first:
            return True
        time.sleep(0.01)
    return False


def test_v1_freezer_stops_every_process_until_thawed(
    v1: CgroupV1, spawn: Callable[[list[str]], Gated], tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    # Counts as fast as it can, each value written whole (rename), so a read never sees half.
    loop = (
        "import os, sys\n"
        "p = sys.argv[1]; i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    open(p + '.t', 'w').write(str(i)); os.replace(p + '.t', p)\n"
    )
    v1.create("frost", Limits())
    assert (SYS_CGROUP / "freezer" / v1.parent / "frost").is_dir()
    assert not v1.frozen("frost")
    child = spawn([sys.executable, "-c", loop, str(counter)])
    v1.attach("frost", child.pid)
    child.release()
    # Positive control: unfrozen, the counter runs.
    wait_for(lambda: _counter(counter) > 0)
    assert _advances(counter)

    v1.freeze("frost")
    assert v1.frozen("frost")
    assert (SYS_CGROUP / "freezer" / v1.parent / "frost" / "freezer.state").read_text().strip() == "FROZEN"
    held = _counter(counter)
    assert not _advances(counter, timeout=0.5)
    assert _counter(counter) == held

    v1.thaw("frost")
    assert not v1.frozen("frost")
    assert _advances(counter)

    # A frozen group is still destroyed: its processes are thawed to die.
    v1.freeze("frost")
    v1.destroy("frost")
    assert child.proc.wait(timeout=5) == -9
    assert not (SYS_CGROUP / "freezer" / v1.parent / "frost").exists()


def test_v1_freeze_of_a_group_without_freezer_is_refused(v1: CgroupV1) -> None:
    v1.create("old", Limits())
    v1.group("freezer", "old").rmdir()  # as made by an engine before servers had a freezer group
    with pytest.raises(Conflict, match="no freezer"):
        v1.freeze("old")
    v1.thaw("old")  # nothing to thaw: no error
    assert not v1.frozen("old")

# --- v2, against a fake cgroupfs ------------------------------------------------------------

V2_GROUP_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": "cpu memory pids",
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.current": "0\n",
    "pids.max": "max\n",
    "pids.current": "0\n",
}


class FakeV2(CgroupV2):
    def _rmdir(self, path: Path) -> None:
        # cgroupfs drops a group's interface files itself on rmdir; a plain directory needs help.
        if any(entry.is_dir() for entry in path.iterdir()):
            raise OSError(16, "Device or resource busy")
        for entry in path.iterdir():
            entry.unlink()
        path.rmdir()


def fake_group(path: Path, *, kill_file: bool = True, skip: tuple[str, ...] = ()) -> Path:
    """What the kernel creates on mkdir in a v2 tree (controllers enabled in the parent)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in V2_GROUP_FILES.items():
        if name not in skip:
            (path / name).write_text(content)
    if kill_file:
        (path / "cgroup.kill").write_text("")
    return path


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")
    return root


def test_v2_create_enables_controllers_and_writes_limits(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")

    backend.create("web", Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50))

    assert read(fake_root / "cgroup.subtree_control") == "+cpu +io +memory +pids"
    assert read(fake_root / "vs" / "cgroup.subtree_control") == "+cpu +io +memory +pids"
    assert read(group / "cpu.max") == "50000 100000"
    assert read(group / "cpu.weight") == "50"
    assert read(group / "memory.max") == str(64 * MiB)
    assert read(group / "memory.swap.max") == "0"
    assert read(group / "pids.max") == "50"
    assert backend.limits("web") == Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50)
    assert backend.paths("web") == [group]
    assert backend.names() == ["web"] and backend.exists("web")


def test_v2_update_and_unlimited(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50))

    backend.update("web", Limits(cpus=200, memory_bytes=None, pids=None))

    assert read(group / "cpu.max") == "20000000 100000"
    assert read(group / "cpu.weight") == "10000"
    assert read(group / "memory.max") == "max"
    assert read(group / "memory.swap.max") == "max"
    assert read(group / "pids.max") == "max"
    assert backend.limits("web") == Limits(cpus=200.0, memory_bytes=None, pids=None)

    backend.update("web", Limits(cpus=0.001))
    assert read(group / "cpu.max") == "1000 100000"
    assert read(group / "cpu.weight") == "1"

    backend.update("web", Limits())
    assert read(group / "cpu.max") == "max 100000"
    assert read(group / "cpu.weight") == "100"
    assert backend.limits("web") == Limits()


def test_v2_leaves_already_enabled_controllers_alone(fake_root: Path) -> None:
    (fake_root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    parent = fake_group(fake_root / "vs")
    (parent / "cgroup.subtree_control").write_text("memory\n")
    fake_group(parent / "web")

    FakeV2(fake_root, "vs").create("web", Limits())

    assert read(fake_root / "cgroup.subtree_control") == "cpu io memory pids"
    assert read(parent / "cgroup.subtree_control") == "+cpu +io +pids"


def test_v2_without_swap_file(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web", skip=("memory.swap.max",))
    FakeV2(fake_root, "vs").create("web", Limits(memory_bytes=32 * MiB))
    assert read(group / "memory.max") == str(32 * MiB)
    assert not (group / "memory.swap.max").exists()


def test_v2_missing_interface_file_is_an_error_not_a_new_file(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web", skip=("pids.max",))
    with pytest.raises(EngineError, match="pids.max does not exist"):
        FakeV2(fake_root, "vs").create("web", Limits(pids=10))
    assert not (group / "pids.max").exists()


def io_group(path: Path, weight_file: str | None = "io.weight") -> Path:
    group = fake_group(path)
    (group / "io.max").write_text("")
    if weight_file:
        (group / weight_file).write_text("default 100\n")
    return group


def test_v2_io_weight_and_ceilings_on_the_device(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = io_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")

    backend.create("web", Limits(io_weight=500))
    assert read(group / "io.weight") == "default 500"
    assert read(group / "io.max") == ""  # ceilings wait for the device

    backend.limit_io("web", "7:3", Limits(io_read_bps=20 * MiB, io_write_iops=200))
    assert read(group / "io.max") == f"7:3 rbps={20 * MiB} wbps=max riops=max wiops=200"
    assert backend.limits("web") == Limits(io_weight=500, io_read_bps=20 * MiB, io_write_iops=200)
    assert backend.limits("web", "7:3") == backend.limits("web")
    assert backend.limits("web", "7:4") == Limits(io_weight=500)

    backend.update("web", Limits(), "7:3")
    assert read(group / "io.weight") == "default 100"
    assert read(group / "io.max") == "7:3 rbps=max wbps=max riops=max wiops=max"
    assert backend.limits("web") == Limits(io_weight=100)


def test_v2_reads_the_kernels_io_max_lines(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = io_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    (group / "io.max").write_text("7:5 rbps=max wbps=5000000 riops=max wiops=max\n")
    (group / "io.weight").write_text("default 250\n7:5 300\n")

    assert backend.limits("web") == Limits(io_weight=250, io_write_bps=5_000_000)

    (group / "io.max").write_text("7:5 rbps=max wbps=lots\n")
    with pytest.raises(EngineError, match="unexpected entry 'wbps=lots'"):
        backend.limits("web")


def test_v2_bfq_weight_is_clamped_to_its_range(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = io_group(fake_root / "vs" / "web", weight_file="io.bfq.weight")
    FakeV2(fake_root, "vs").create("web", Limits(io_weight=5000))
    assert read(group / "io.bfq.weight") == "default 1000"
    assert not (group / "io.weight").exists()


def test_v2_without_a_weight_file_has_no_weight(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = io_group(fake_root / "vs" / "web", weight_file=None)
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits(io_weight=300))
    assert not (group / "io.weight").exists() and not (group / "io.bfq.weight").exists()
    assert backend.limits("web") == Limits()


def test_v2_usage_parses_kernel_files(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    (group / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
        "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
    )
    (group / "memory.current").write_text("1048576\n")
    (group / "pids.current").write_text("3\n")
    (group / "cgroup.procs").write_text("101\n102\n103\n")

    assert backend.usage("web") == Usage(cpu_seconds=2.5, memory_bytes=1048576, pids=3)
    assert backend.procs("web") == [101, 102, 103]
    assert backend.usage("ghost") == Usage()
    assert backend.limits("ghost") is None


def test_v2_attach_writes_pid(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    backend.attach("web", 4242)
    assert read(group / "cgroup.procs") == "4242"
    with pytest.raises(EngineError, match="does not exist"):
        backend.attach("ghost", 4242)
    backend.join_self("web")
    assert read(group / "cgroup.procs") == "0"  # "0": the writer itself


def test_v2_kill_uses_cgroup_kill(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    backend.kill("web")
    assert read(group / "cgroup.kill") == "1"


def test_v2_kill_without_cgroup_kill_signals_each_process(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web", kill_file=False)
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    child = subprocess.Popen(["sleep", "30"])
    try:
        (group / "cgroup.procs").write_text(f"{child.pid}\n")
        backend.kill("web")
        assert child.wait(timeout=5) == -9
    finally:
        child.kill()
        child.wait()


def test_v2_destroy_removes_group_then_parent(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    fake_group(fake_root / "vs" / "one")
    fake_group(fake_root / "vs" / "two")
    backend = FakeV2(fake_root, "vs")
    backend.create("one", Limits())
    backend.create("two", Limits())

    backend.destroy("one")
    assert not (fake_root / "vs" / "one").exists()
    assert (fake_root / "vs").is_dir()
    assert backend.names() == ["two"]

    backend.destroy("two")
    assert not (fake_root / "vs").exists()
    assert (fake_root / "cgroup.controllers").exists()

    backend.destroy("two")
    backend.destroy("never-made")


def test_v2_destroy_times_out_on_a_group_that_stays_busy(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "stuck")
    backend = FakeV2(fake_root, "vs")
    backend.create("stuck", Limits())
    (group / "cgroup.procs").write_text("777777\n")  # cgroup.kill is a plain file: nobody dies

    with pytest.raises(EngineError, match="vs/stuck"):
        backend.destroy("stuck", timeout=0.2)
    assert group.is_dir()


def test_v2_freeze_waits_for_the_kernels_frozen_event(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    (group / "cgroup.freeze").write_text("0\n")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    (group / "cgroup.events").write_text("populated 1\nfrozen 1\n")  # what the kernel says once done

    backend.freeze("web")
    assert (group / "cgroup.freeze").read_text() == "1"
    assert backend.frozen("web")
    backend.thaw("web")
    assert (group / "cgroup.freeze").read_text() == "0"
    assert not backend.frozen("web")


def test_v2_freeze_that_never_completes_is_thawed_and_fails(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    group = fake_group(fake_root / "vs" / "web")
    (group / "cgroup.freeze").write_text("0\n")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    # cgroup.events keeps "frozen 0": a task that cannot stop (uninterruptible sleep)
    with pytest.raises(EngineError, match="did not all freeze"):
        backend.freeze("web", timeout=0.05)
    assert (group / "cgroup.freeze").read_text() == "0"


def test_v2_group_without_cgroup_freeze_cannot_be_frozen(fake_root: Path) -> None:
    fake_group(fake_root / "vs")
    fake_group(fake_root / "vs" / "web")
    backend = FakeV2(fake_root, "vs")
    backend.create("web", Limits())
    with pytest.raises(Conflict, match="no freezer"):
        backend.freeze("web")
    assert not backend.frozen("web")

# --- detection ------------------------------------------------------------------------------


def test_detect_picks_v1_on_this_host() -> None:
    if not host_has_v1():
        pytest.skip("this host has no complete cgroup v1")
    config = config_with(SYS_CGROUP)
    backend = detect(config)
    assert isinstance(backend, CgroupV1) and backend.version == 1
    assert backend.parent == config.cgroup_parent
    assert missing_controllers(config) == []


def test_detect_picks_v2_on_a_unified_root(fake_root: Path) -> None:
    config = config_with(fake_root)
    backend = detect(config)
    assert isinstance(backend, CgroupV2) and backend.version == 2
    assert backend.root == fake_root and backend.parent == config.cgroup_parent
    assert missing_controllers(config) == []


def test_detect_refuses_v2_without_required_controllers(fake_root: Path) -> None:
    (fake_root / "cgroup.controllers").write_text("cpuset io\n")
    config = config_with(fake_root)
    assert missing_controllers(config) == ["cpu", "memory", "pids"]
    with pytest.raises(EngineError, match="cpu, memory, pids"):
        detect(config)


def test_detect_refuses_partial_v1(tmp_path: Path) -> None:
    for controller in ("cpu", "memory"):
        (tmp_path / controller).mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    config = config_with(tmp_path)
    assert missing_controllers(config) == ["cpuacct", "pids", "blkio", "freezer"]
    with pytest.raises(EngineError, match="cgroup v1 .* lacks controllers cpuacct, pids, blkio, freezer"):
        detect(config)


def test_detect_refuses_a_directory_without_cgroups(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no usable cgroup filesystem"):
        detect(config_with(tmp_path / "nothing"))


def test_no_test_groups_left_behind() -> None:
    leftovers = [p for c in V1_CONTROLLERS for p in (SYS_CGROUP / c).glob("vservers-test-cg-*")]
    assert leftovers == []
