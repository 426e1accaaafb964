"""Finding 9 of issue 10: disk I/O had no limit. A plan's I/O ceilings now go on each server's
loop device (blkio throttle on v1, io.max on v2), from before its init runs, live on update and
again on the new device of every start.

Every figure here is the guest's own: io_probe.c (built statically on the host, busybox guests
have no compiler) times its reads, writes and fsyncs with the guest's clock. No assertion is
on how long the test took; rates are bounded by the limit times a stated tolerance, and the
neighbour's fsync latency under a limited writer is compared with its idle figure measured in
the same run, next to a positive control (the same writer unlimited) that shows the harm.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine.helpers import compile_static, install_in_guest, vserver_cli
from tests.leaks import TEST_ENV
from vservers.engine import Limits
from vservers.engine.errors import InvalidInput

PROBE = "/usr/local/bin/io-probe"
MB = 10**6
MiB = 2**20
# blk-throttle dispatches in slices of 100 ms and lets a group start with one slice's budget:
# over seconds of I/O the rate it allows is the limit within a few percent.
RATE_TOLERANCE = 1.2


@pytest.fixture(scope="module")
def io_probe(tmp_path_factory) -> bytes:
    return compile_static("io_probe.c", tmp_path_factory.mktemp("io-probe")).read_bytes()


def install_probe(engine, name: str, binary: bytes) -> None:
    install_in_guest(engine, name, PROBE, binary)


def probe(engine, name: str, *args: str, timeout: float = 120.0) -> dict[str, float]:
    """Run io-probe in NAME; its last line's key=value figures."""
    result = engine.run(name, [PROBE, *args], timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    last = result.stdout.strip().splitlines()[-1]
    return {key: float(value) for key, _, value in (pair.partition("=") for pair in last.split())}


def write_rate(engine, name: str, total: int, block: int = MiB, path: str = "/root/data") -> float:
    """Bytes per second of O_DIRECT writes of TOTAL bytes, each fsync'ed, by the guest's clock."""
    figures = probe(engine, name, "write", path, str(total), str(block), str(total), "0", "ds")
    return figures["bytes"] / figures["seconds"]


def read_rate(engine, name: str, total: int, path: str = "/root/data") -> float:
    figures = probe(engine, name, "read", path, str(MiB), str(total), "d")
    return figures["bytes"] / figures["seconds"]


def write_ops(engine, name: str, seconds: float) -> float:
    """4 KiB O_DIRECT writes per second (no fsync: one bio each) over SECONDS of the guest's clock."""
    figures = probe(engine, name, "write", "/root/ops", str(MiB), "4096", "0", str(seconds), "d")
    return figures["ops"] / figures["seconds"]


def io_of(limits: Limits) -> tuple:
    return (limits.io_read_bps, limits.io_write_bps, limits.io_read_iops, limits.io_write_iops)


# -- ceilings on the server's own figures ---------------------------------------------------


def test_ceilings_hold_on_the_guests_own_figures_live_and_after_restart(engine, make_server, io_probe):
    name = make_server("io-lim", "198.19.41.10/18")
    install_probe(engine, name, io_probe)
    # 10 MB/s: two seconds per 20 MiB phase, and still a twentieth of an unlimited disk here
    # (the positive control below asks for three times the ceiling).
    limit = 10 * MB
    total = 20 * MiB

    # Positive control: unlimited, the same writes and reads run far faster than the ceiling.
    free_write = write_rate(engine, name, total)
    free_read = read_rate(engine, name, total)
    free_ops = write_ops(engine, name, 1.0)
    print(f"\nunlimited: write {free_write / MB:.0f} MB/s, read {free_read / MB:.0f} MB/s, {free_ops:.0f} writes/s")
    if min(free_write, free_read) < 3 * limit or free_ops < 3 * 100:
        pytest.skip(f"this disk is too slow to show a {limit / MB:.0f} MB/s or 100/s ceiling: "
                    f"{free_write / MB:.1f} MB/s, {free_read / MB:.1f} MB/s, {free_ops:.0f}/s unlimited")

    # Live: the running server's ceilings change at once, and status reads them from the kernel.
    wanted = Limits(io_read_bps=limit, io_write_bps=limit)
    status = engine.update(name, wanted)
    assert io_of(status.limits) == io_of(wanted)
    limited_write = write_rate(engine, name, total)
    limited_read = read_rate(engine, name, total)
    print(f"limited to {limit / MB:.0f} MB/s: write {limited_write / MB:.2f} MB/s, read {limited_read / MB:.2f} MB/s")
    assert limited_write <= limit * RATE_TOLERANCE
    assert limited_read <= limit * RATE_TOLERANCE

    # Buffered writes, each fsync'ed: the fsync writes the pages back in the writer's own
    # context, so its bios carry its group and meet the ceiling.
    synced = probe(engine, name, "write", "/root/buffered", str(total), str(MiB), str(total), "0", "s")
    synced_rate = synced["bytes"] / synced["seconds"]
    print(f"limited to {limit / MB:.0f} MB/s: buffered writes each fsync'ed {synced_rate / MB:.2f} MB/s")
    assert synced_rate <= limit * RATE_TOLERANCE
    print(f"buffered writes, one fsync at the end: {buffered_writeback(engine, name, total)}")
    # More than its memory, and no fsync: the kernel's flusher threads write it back, and on v1
    # their bios belong to the root group. Positive control: without the ceiling the engine
    # puts on the root group for this device, that writeback passes the server's own ceiling.
    if engine.cgroups.version == 1:
        engine.update(name, dataclasses.replace(wanted, memory_bytes=32 * MiB))
        number = Path(f"/sys/block/{Path(engine._runtime(name).loop_device).name}/dev").read_text().strip()
        engine.cgroups.release_io(number)
        bypass = flusher_rate(engine, name)
        engine.update(name, dataclasses.replace(wanted, memory_bytes=32 * MiB))  # puts it back
        paced = flusher_rate(engine, name)
        print(f"64 MiB with 32 MiB of memory, no fsync, then sync(): {bypass / MB:.1f} MB/s without the root "
              f"group's ceiling, {paced / MB:.2f} MB/s with it")
        assert bypass > 3 * limit, "the flusher's writeback did not pass the server's own ceiling"
        # Up to two shares: the server's group and the kernel's writeback on its behalf.
        assert paced <= 2 * limit * RATE_TOLERANCE
        engine.update(name, wanted)

    engine.update(name, Limits(io_write_iops=100))
    limited_ops = write_ops(engine, name, 2.0)
    print(f"limited to 100 writes/s: {limited_ops:.1f} writes/s")
    assert limited_ops <= 100 * RATE_TOLERANCE

    # A start attaches a new loop device and makes a new group: the ceilings follow.
    before = engine._runtime(name).loop_device
    engine.update(name, wanted)
    engine.restart(name)
    runtime = engine._runtime(name)
    print(f"restart: {before} -> {runtime.loop_device}")
    status = engine.status(name)
    assert io_of(status.limits) == io_of(wanted)
    after_restart = write_rate(engine, name, total)
    print(f"after restart: write {after_restart / MB:.2f} MB/s")
    assert after_restart <= limit * RATE_TOLERANCE

    # v1: the same ceiling on the root group paces the flusher's writeback of this disk, and
    # goes when the server stops (the device returns to the host's pool).
    number = Path(f"/sys/block/{Path(runtime.loop_device).name}/dev").read_text().strip()
    if engine.cgroups.version == 1:
        assert host_ceiling(engine, number) == [f"{number} {limit}"]

    # Lifted live: back to the free rate's neighbourhood (at least well past the old ceiling).
    engine.update(name, Limits())
    assert io_of(engine.status(name).limits) == (None, None, None, None)
    assert write_rate(engine, name, total) > 3 * limit
    engine.update(name, wanted)
    engine.stop(name)
    if engine.cgroups.version == 1:
        assert host_ceiling(engine, number) == []


def host_ceiling(engine, number: str) -> list[str]:
    text = (engine.cgroups.hierarchy("blkio") / "blkio.throttle.write_bps_device").read_text()
    return [line for line in text.splitlines() if line.split()[0] == number]


def flusher_rate(engine, name: str) -> float:
    """Bytes per second of 64 MiB of buffered writes and a sync() at the end, which hands the
    writeback to the kernel's flusher threads; by the guest's clock."""
    engine.run(name, ["rm", "-f", "/root/flood"])
    figures = probe(engine, name, "write", "/root/flood", str(64 * MiB), str(MiB), str(64 * MiB), "0", "y")
    return figures["bytes"] / figures["seconds"]


def buffered_writeback(engine, name: str, total: int) -> str:
    """Where buffered writes without fsync are charged: the guest's group, or (on v1, which has
    no cgroup writeback) the root group of the kernel's flusher threads. Only reported: it is
    what the kernel does, documented in docs/security.md, not something the engine decides."""
    device = Path(engine._runtime(name).loop_device)
    number = Path(f"/sys/block/{device.name}/dev").read_text().strip()

    def charged(group: Path) -> int:
        for line in (group / "blkio.throttle.io_service_bytes").read_text().splitlines():
            parts = line.split()
            if parts[:2] == [number, "Write"]:
                return int(parts[2])
        return 0

    if engine.cgroups.version != 1:
        return "(reported on v1 only)"
    group, root = engine.cgroups.group("blkio", name), engine.cgroups.hierarchy("blkio")
    before = loop_sectors_written(engine, name) * 512, charged(group), charged(root)
    figures = probe(engine, name, "write", "/root/unsynced", str(4 * total), str(MiB), str(4 * total), "0", "-")
    after = loop_sectors_written(engine, name) * 512, charged(group), charged(root)
    disk, guest, flusher = (a - b for a, b in zip(after, before, strict=True))
    return (f"{figures['bytes'] / figures['seconds'] / MB:.1f} MB/s; of {disk / MB:.0f} MB reaching the loop device "
            f"{guest / MB:.0f} MB were charged to the server's group, {flusher / MB:.0f} MB to the root group")


# -- from inside: lifting its own ceiling ----------------------------------------------------


def test_the_guests_root_cannot_lift_its_own_ceiling(engine, make_server, io_probe):
    """The guest's root mounts its blkio hierarchy (its cgroup namespace shows its own group as
    the root, with nothing above it to move to) and tries to clear the ceiling or make a child
    group of its own."""
    if engine.cgroups.version != 1:
        pytest.skip("this attack is written for a v1 host")
    name = make_server("io-self", "198.19.41.50/18")
    install_probe(engine, name, io_probe)
    limit = 5 * MB
    engine.update(name, Limits(io_write_bps=limit))
    device = Path(engine._runtime(name).loop_device)
    number = Path(f"/sys/block/{device.name}/dev").read_text().strip()
    script = (
        "mkdir -p /mnt/cg && mount -t cgroup -o blkio cgroup /mnt/cg && echo mounted; "
        "cat /mnt/cg/blkio.throttle.write_bps_device; "
        f"echo '{number} 0' > /mnt/cg/blkio.throttle.write_bps_device && echo lifted; "
        "mkdir /mnt/cg/free && echo made-child; umount /mnt/cg; true"
    )
    result = engine.run(name, ["/bin/sh", "-c", script])
    lines = result.stdout.split("\n")
    # Positive control: it is the real ceiling the guest looks at, the kernel's own file.
    assert "mounted" in lines and f"{number} {limit}" in lines, result
    assert "lifted" not in lines and "made-child" not in lines, result
    assert result.stderr.count("Permission denied") == 2, result.stderr
    assert engine.cgroups.limits(name, f"{number}").io_write_bps == limit
    rate = write_rate(engine, name, 10 * MiB)
    print(f"\nafter the guest's attempts: {rate / MB:.2f} MB/s against a {limit / MB:.0f} MB/s ceiling")
    assert rate <= limit * RATE_TOLERANCE


# -- the neighbour's fsync latency ----------------------------------------------------------


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def fsync_latencies_ms(engine, name: str, count: int) -> list[float]:
    """COUNT fsyncs of a freshly written 4 KiB block, 2 ms apart: what a small database does."""
    result = engine.run(name, [PROBE, "fsync", "/root/journal", str(count), "2000"], timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("latencies_us\n", 1)[1].splitlines()
    return [int(line) / 1000 for line in lines if line.isdigit()]


def loop_sectors_written(engine, name: str) -> int:
    device = Path(engine._runtime(name).loop_device).name
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[6])


class Writers:
    """Attackers writing flat out: 4 MiB O_DIRECT writes, each fsync'ed, round a 64 MiB file,
    until the test drops a stop file in each guest. Started through `vserver exec`, as an
    operator would, so the test's own process stays single-threaded."""

    def __init__(self, engine, names: list[str]) -> None:
        self.engine, self.names = engine, names
        for name in names:
            assert engine.run(name, ["rm", "-f", "/tmp/stop"]).returncode == 0
        start = {name: loop_sectors_written(engine, name) for name in names}
        env = {**os.environ, **TEST_ENV}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "vservers.engine.cli", "exec", name, "--", PROBE, "write", "/root/flood",
                 str(64 * MiB), str(4 * MiB), "0", "0", "ds", "/tmp/stop"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                cwd=Path(__file__).resolve().parents[2],
            )
            for name in names
        ]
        # Measure only once every writer's bios reach its disk (polls the kernel's counters).
        deadline = time.monotonic() + 30
        while not all(loop_sectors_written(engine, n) - start[n] >= 2 * MiB // 512 for n in names):
            assert time.monotonic() < deadline, "the writers did not start writing"
            assert all(p.poll() is None for p in self.procs), [p.communicate() for p in self.procs]
            time.sleep(0.05)

    def stop(self) -> list[str]:
        for name in self.names:
            self.engine.run(name, ["touch", "/tmp/stop"])
        outputs = []
        for proc in self.procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(out.strip())
        return outputs


SAMPLES = {"idle": 300, "unlimited": 100, "limited": 300}


def test_a_limited_writer_leaves_the_neighbours_fsync_latency_near_idle(engine, make_server, io_probe):
    """Idle, unlimited attack and limited attack, interleaved over three rounds so that the
    machine's own noise falls on all three alike; 300 fsyncs per phase and round, 100 for the
    unlimited attack, the positive control (each of its fsyncs waits ~20 ms, 10-20 x the bound).

    The bound: the limited figure is at most max(3 x idle, idle + 1 ms) for p50 and
    max(3 x idle, idle + 3 ms) for p90. The positive control: the unlimited attack breaks the
    p50 bound in the same run (else the test skips, saying so); where it does not also break
    the p90 bound, the p90 check proves nothing on this machine and the printed figures say so.

    Why p90 and not p99: a ceiling meters whole writes, so each limited attacker still sends
    its 4 MiB writes to the disk, about two a second, at the disk's full speed. While one is
    in flight (about 5 % of the time on a 370 MB/s disk with two attackers at 10 MB/s) the
    neighbour's fsync waits behind part of it. That tail is the disk's speed, not the ceiling:
    on one 2026-12 VM, the limited p99 read 4.4-7.8 ms against an idle 1.5-1.8 (the unlimited
    attack's 35-55), while p90 stayed at idle's (1.3-1.7 against 1.3-1.6) in every run. The
    printed figures keep p99.
    """
    attackers = [make_server(f"io-att{i}", f"198.19.41.{20 + i}/18", cpus=0.5) for i in (1, 2)]
    neighbour = make_server("io-nb", "198.19.41.30/18")
    for name in (*attackers, neighbour):
        install_probe(engine, name, io_probe)
    ceiling = Limits(cpus=0.5, io_write_bps=10 * MB, io_read_bps=10 * MB, io_write_iops=200, io_read_iops=200)
    free = Limits(cpus=0.5)
    fsync_latencies_ms(engine, neighbour, 50)  # the journal file's blocks exist from here on

    phases: dict[str, list[float]] = {"idle": [], "unlimited": [], "limited": []}
    written: dict[str, list[str]] = {"unlimited": [], "limited": []}
    for _round in range(3):
        phases["idle"] += fsync_latencies_ms(engine, neighbour, SAMPLES["idle"])
        for phase, limits in (("unlimited", free), ("limited", ceiling)):
            for name in attackers:
                engine.update(name, limits)
            writers = Writers(engine, attackers)
            try:
                phases[phase] += fsync_latencies_ms(engine, neighbour, SAMPLES[phase])
            finally:
                written[phase] += writers.stop()

    figures = {phase: [percentile(s, pct) for pct in (50, 90, 99)] for phase, s in phases.items()}
    (idle50, idle90, _), (free50, free90, _), (lim50, lim90, _) = figures.values()
    bound50, bound90 = max(3 * idle50, idle50 + 1.0), max(3 * idle90, idle90 + 3.0)
    shown = ", ".join(f"{phase} {'/'.join(f'{v:.2f}' for v in values)}" for phase, values in figures.items())
    report = (f"neighbour fsync p50/p90/p99 ms: {shown}; bounds {bound50:.2f}/{bound90:.2f} (p50/p90); "
              f"mean idle {statistics.fmean(phases['idle']):.2f}")
    print(f"\n{report}\nattackers wrote: {json.dumps(written)}")
    if free50 <= bound50:
        pytest.skip(f"the unlimited attack did not harm the neighbour on this machine: {report}")
    if free90 <= bound90:
        print("the unlimited attack stayed within the p90 bound here: the p90 check below proves nothing this run")
    assert lim50 <= bound50, report
    assert lim90 <= bound90, report


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(io_weight=0), "I/O weight"),
        (Limits(io_weight=20_000), "I/O weight"),
        (Limits(io_write_bps=0), "I/O rate"),
        (Limits(io_read_bps=1000), "I/O rate"),
        (Limits(io_write_bps=2**60), "I/O rate"),
        (Limits(io_read_iops=0), "I/O operations"),
        (Limits(io_write_iops=10**9), "I/O operations"),
        (Limits(io_write_iops="many"), "invalid I/O operations"),  # type: ignore[arg-type]
        (Limits(io_read_bps=True), "invalid I/O rate"),  # type: ignore[arg-type]
    ],
)
def test_the_engine_refuses_bad_io_limits(limits, message):
    with pytest.raises(InvalidInput, match=message):
        limits.validated()


def test_update_with_bad_io_limits_changes_nothing(engine, make_server):
    name = make_server("io-bad", "198.19.41.40/18", start=False)
    with pytest.raises(InvalidInput, match="I/O rate"):
        engine.update(name, Limits(io_write_bps=5))
    assert engine.spec(name).limits == Limits()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--io-weight", "0", "I/O weight"),
        ("--io-weight", "heavy", "invalid I/O weight"),
        ("--io-write-bps", "0", "I/O rate"),
        ("--io-write-bps", "5", "I/O rate"),
        ("--io-read-bps", "fast", "invalid I/O rate"),
        ("--io-read-iops", "1.5", "invalid I/O operations"),
        ("--io-write-iops", "0", "I/O operations"),
    ],
)
def test_the_cli_refuses_bad_io_limits_with_one_line(engine, option, value, message):
    result = vserver_cli("create", "io-cli-bad", "--template", "busybox", "--ip", "198.19.41.41/18", option, value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "io-cli-bad" not in engine.names()


def test_the_cli_sets_shows_and_lifts_io_limits(engine):
    name = "io-cli"
    try:
        vserver_cli("create", name, "--template", "busybox", "--ip", "198.19.41.42/18", "--io-weight", "300",
                    "--io-write-bps", "10M", "--io-read-bps", "20000000", "--io-write-iops", "200", check=True)
        limits = engine.spec(name).limits
        assert (limits.io_weight, *io_of(limits)) == (300, 20_000_000, 10 * MiB, None, 200)

        vserver_cli("start", name, check=True)
        shown = json.loads(vserver_cli("status", name, "--json", check=True).stdout)["limits"]
        # What the kernel holds: the ceilings on this start's loop device. This kernel has no
        # I/O weight (no BFQ on v1; io.weight needs v2), which status shows as null.
        assert (shown["io_read_bps"], shown["io_write_bps"], shown["io_read_iops"], shown["io_write_iops"]) == (
            20_000_000, 10 * MiB, None, 200)
        text = vserver_cli("status", name, check=True).stdout
        assert "write=10.0M/s" in text and "write-ops=200/s" in text

        updated = vserver_cli("update", name, "--io-write-bps", "max", "--io-read-iops", "500", check=True)
        assert "read-ops=500/s" in updated.stdout and "write=-" in updated.stdout
        limits = engine.spec(name).limits
        assert io_of(limits) == (20_000_000, None, 500, 200)
        assert io_of(engine.status(name).limits) == io_of(limits)
        assert limits.io_weight == 300
    finally:
        engine.delete(name)
