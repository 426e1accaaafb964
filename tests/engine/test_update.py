"""Engine.update and `vserver update`: new limits on the real kernel, live on a running server
and from the next start on a stopped one; the disk grows (online too) and never shrinks."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.engine.helpers import vserver_cli, wait_for_http
from vservers.engine import InvalidInput, Limits, disk, loopdev
from vservers.engine.lifecycle import DISK_GROW_PENDING
from vservers.engine.loopdev import devices_for

MiB = 2**20
# busybox dd into a file of the guest's root: larger than a 32 MiB disk, smaller than 96 MiB.
FILL = ["dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=48"]


def cgroup_files(engine, name: str) -> tuple[str, str, str]:
    """CPU quota (µs per 100 ms), memory limit and pids limit as the kernel's files say."""
    cg = engine.cgroups
    if cg.version == 1:
        cpu = (cg.group("cpu", name) / "cpu.cfs_quota_us").read_text()
        memory = (cg.group("memory", name) / "memory.limit_in_bytes").read_text()
        pids = (cg.group("pids", name) / "pids.max").read_text()
    else:
        group = cg.group(name)
        cpu = (group / "cpu.max").read_text().split()[0]
        memory = (group / "memory.max").read_text()
        pids = (group / "pids.max").read_text()
    return cpu.strip(), memory.strip(), pids.strip()


def df_total_bytes(engine, name: str) -> int:
    """The size of the guest's root filesystem as df inside the server reports it."""
    result = engine.run(name, ["df", "-P", "-k", "/"])
    assert result.returncode == 0, result.stderr
    return int(result.stdout.splitlines()[1].split()[1]) * 1024


def mounts_under(path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(str(path))]


def test_new_limits_hold_at_once_on_a_running_server(engine, make_server):
    name = make_server("upd-live", "198.19.11.10/18", cpus=1.0, memory_bytes=64 * MiB, pids=100)
    init_pid = engine.status(name).init_pid
    assert cgroup_files(engine, name) == ("100000", str(64 * MiB), "100")

    wanted = Limits(cpus=0.5, memory_bytes=48 * MiB, pids=64)
    status = engine.update(name, wanted)
    assert cgroup_files(engine, name) == ("50000", str(48 * MiB), "64")
    assert status.state == "running" and status.init_pid == init_pid  # the same boot, not restarted
    assert status.limits == wanted
    assert engine.spec(name).limits == wanted
    again = engine.update(name, wanted)  # the same update again: nothing changes
    assert (again.init_pid, again.limits) == (init_pid, wanted)
    assert cgroup_files(engine, name) == ("50000", str(48 * MiB), "64")

    engine.update(name, Limits())  # None: unlimited again
    assert engine.cgroups.limits(name) == Limits()
    wait_for_http("198.19.11.10")


def test_the_new_limits_survive_restart_and_stop_start(engine, make_server):
    name = make_server("upd-restart", "198.19.11.11/18", cpus=1.0, pids=100)
    engine.update(name, Limits(cpus=0.25, memory_bytes=32 * MiB, pids=50))
    expected = ("25000", str(32 * MiB), "50")

    old_pid = engine.status(name).init_pid
    assert engine.restart(name).init_pid != old_pid
    assert cgroup_files(engine, name) == expected
    engine.stop(name)
    engine.start(name)
    assert cgroup_files(engine, name) == expected
    wait_for_http("198.19.11.11")


def fill_fails_then_grow(engine, name: str, size: int):
    """Show the disk full for FILL, then ask for SIZE bytes of disk; returns update's status."""
    full = engine.run(name, FILL)
    assert full.returncode != 0 and "No space left on device" in full.stderr
    assert engine.run(name, ["rm", "/root/fill"]).returncode == 0
    return engine.update(name, Limits(disk_bytes=size))


def assert_fill_fits(engine, name: str) -> None:
    written = engine.run(name, FILL)
    assert written.returncode == 0, written.stderr
    assert engine.run(name, ["ls", "-l", "/root/fill"]).stdout.split()[4] == str(48 * MiB)


@pytest.mark.skipif(not disk.can_grow_online(), reason="the kernel resizes a mounted ext4 only for a holder of "
                    "CAP_SYS_RESOURCE, which this host's bounding set lacks")
def test_the_disk_grows_online_on_a_running_server(engine, config, make_server):
    name = make_server("upd-disk", "198.19.11.12/18", disk_bytes=32 * MiB)
    server_dir = config.server_dir(name)
    init_pid = engine.status(name).init_pid
    assert df_total_bytes(engine, name) <= 32 * MiB

    status = fill_fails_then_grow(engine, name, 96 * MiB)
    assert status.state == "running" and status.init_pid == init_pid
    assert status.limits.disk_bytes == 96 * MiB and "disk_grow_pending" not in status.extra
    after = df_total_bytes(engine, name)
    assert 64 * MiB < after <= 96 * MiB
    assert_fill_fits(engine, name)

    assert (server_dir / "disk.img").stat().st_size == 96 * MiB
    assert not (server_dir / DISK_GROW_PENDING).exists()
    # The resize's own mount went with its process; the server still has its one loop device.
    assert mounts_under(server_dir) == []
    assert devices_for(server_dir) == [engine._runtime(name).loop_device]

    engine.restart(name)  # and the grown filesystem is what the next start mounts
    assert df_total_bytes(engine, name) == after
    assert engine.run(name, ["ls", "/root/fill"]).returncode == 0
    wait_for_http("198.19.11.12")


def test_where_online_resize_is_not_allowed_the_disk_grows_at_the_next_start(
    engine, config, make_server, monkeypatch
):
    monkeypatch.setattr(disk, "can_grow_online", lambda: False)  # as on a host without CAP_SYS_RESOURCE
    name = make_server("upd-later", "198.19.11.18/18", pids=100, disk_bytes=32 * MiB)
    server_dir = config.server_dir(name)
    init_pid = engine.status(name).init_pid
    before = df_total_bytes(engine, name)

    status = fill_fails_then_grow(engine, name, 96 * MiB)
    # Nothing of the disk changed under the running server; everything else did.
    assert status.state == "running" and status.init_pid == init_pid
    assert status.limits.disk_bytes == 96 * MiB and status.extra == {"disk_grow_pending": True}
    assert engine.status(name).to_json()["disk_grow_pending"] is True
    assert df_total_bytes(engine, name) == before
    assert (server_dir / "disk.img").stat().st_size == 32 * MiB

    engine.restart(name)
    assert 64 * MiB < df_total_bytes(engine, name) <= 96 * MiB
    assert "disk_grow_pending" not in engine.status(name).extra
    assert_fill_fits(engine, name)
    wait_for_http("198.19.11.18")


def test_the_resize_mount_is_the_guests_own_filesystem_and_ends_with_its_process(engine, config, make_server):
    """What grow_online runs resize2fs in: the server's loop device mounted once more in a
    private mount namespace shows the guest's own files, and leaves no trace."""
    name = make_server("upd-mount", "198.19.11.19/18", disk_bytes=32 * MiB)
    server_dir = config.server_dir(name)
    assert engine.run(name, ["touch", "/root/mark"]).returncode == 0
    device = engine._runtime(name).loop_device
    mount_dir = server_dir / "disk"
    with loopdev.held(device, server_dir / "disk.img"):
        assert disk.run_where_mounted(["test", "-f", f"{mount_dir}/upper/root/mark"], device, mount_dir)[0] == 0
        assert disk.run_where_mounted(["test", "-f", f"{mount_dir}/upper/root/none"], device, mount_dir)[0] == 1
        code, errors = disk.run_where_mounted(["true"], "/dev/no-such-loop", mount_dir)
        assert code == 127 and "No such file" in errors
    assert mounts_under(server_dir) == []
    assert os.listdir(mount_dir) == []
    engine.stop(name)  # the extra mounts held nothing: the device goes with the server
    assert devices_for(server_dir) == []


def test_a_smaller_disk_is_refused(engine, config, make_server):
    name = make_server("upd-shrink", "198.19.11.13/18", start=False, disk_bytes=64 * MiB)
    with pytest.raises(InvalidInput, match="can only grow: it has 64 MiB, 32 MiB was asked for"):
        engine.update(name, Limits(pids=64, disk_bytes=32 * MiB))
    assert engine.spec(name).limits == Limits(disk_bytes=64 * MiB)  # nothing of it was taken
    assert (config.server_dir(name) / "disk.img").stat().st_size == 64 * MiB


@pytest.mark.parametrize(
    "limits, message",
    [
        (Limits(cpus=0), "CPU share"),
        (Limits(cpus=-1.0), "CPU share"),
        (Limits(cpus=5000.0), "CPU share"),
        (Limits(memory_bytes=1024), "out of range"),
        (Limits(memory_bytes=-5), "out of range"),
        (Limits(pids=0), "process limit"),
        (Limits(pids=5), "process limit"),
        (Limits(disk_bytes=MiB), "out of range"),
        (Limits(disk_bytes=2**50), "out of range"),
        (Limits(cpus="lots"), "invalid CPU share"),  # type: ignore[arg-type]
    ],
)
def test_bad_values_are_refused_before_anything_changes(engine, config, make_server, limits, message):
    name = make_server("upd-bad", "198.19.11.14/18", start=False)
    with pytest.raises(InvalidInput, match=message):
        engine.update(name, limits)
    assert engine.spec(name).limits == Limits()
    assert (config.server_dir(name) / "disk.img").stat().st_size == Limits().disk_bytes


def test_a_stopped_server_gets_its_update_at_the_next_start(engine, config, make_server):
    name = make_server("upd-stopped", "198.19.11.15/18", start=False, disk_bytes=32 * MiB)
    image = config.server_dir(name) / "disk.img"
    wanted = Limits(cpus=0.5, memory_bytes=48 * MiB, pids=64, disk_bytes=64 * MiB)
    status = engine.update(name, wanted)
    assert status.state == "stopped" and status.limits == wanted
    assert not engine.cgroups.exists(name)
    assert image.stat().st_size == 64 * MiB
    assert devices_for(config.server_dir(name)) == []
    # Grown offline: a clean filesystem of the new size (e2fsck -n only reads).
    check = subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    engine.start(name)
    assert cgroup_files(engine, name) == ("50000", str(48 * MiB), "64")
    assert 32 * MiB < df_total_bytes(engine, name) <= 64 * MiB
    wait_for_http("198.19.11.15")


def test_a_grow_cut_short_is_finished_by_the_next_start(engine, config, make_server):
    """A crash after the image grew but before resize2fs: the pending mark makes start finish it."""
    name = make_server("upd-crash", "198.19.11.16/18", start=False, disk_bytes=32 * MiB)
    server_dir = config.server_dir(name)
    engine.update(name, Limits(disk_bytes=32 * MiB))  # nothing to grow: no mark left
    assert not (server_dir / DISK_GROW_PENDING).exists()
    spec_file = server_dir / "config.json"
    spec_file.write_text(spec_file.read_text().replace(str(32 * MiB), str(64 * MiB)))
    (server_dir / DISK_GROW_PENDING).write_text("{}")
    os.truncate(server_dir / "disk.img", 64 * MiB)

    engine.start(name)
    assert 32 * MiB < df_total_bytes(engine, name) <= 64 * MiB
    assert not (server_dir / DISK_GROW_PENDING).exists()
    wait_for_http("198.19.11.16")


def test_the_cli_verb_changes_only_what_is_given(engine, make_server):
    name = make_server("upd-cli", "198.19.11.17/18", cpus=1.0, pids=100)
    result = vserver_cli("update", name, "--cpus", "0.5", "--memory", "48M")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"updated {name}: cpus=0.5 memory=48.0M pids=100 disk=256.0M")
    assert engine.spec(name).limits == Limits(cpus=0.5, memory_bytes=48 * MiB, pids=100)
    assert cgroup_files(engine, name) == ("50000", str(48 * MiB), "100")

    grown = vserver_cli("update", name, "--disk", "320M")
    assert grown.returncode == 0, grown.stderr
    assert engine.spec(name).limits.disk_bytes == 320 * MiB
    assert ("grows at its next start" in grown.stdout) is not disk.can_grow_online()
    engine.restart(name)
    assert df_total_bytes(engine, name) > 256 * MiB

    for args, code, message in (
        ([name], 2, "update needs at least one of --cpus, --memory, --pids, --disk"),
        ([name, "--disk", "128M"], 2, "can only grow"),
        ([name, "--pids", "3"], 2, "process limit"),
        ([name, "--memory", "lots"], 2, "invalid size"),
        (["nosuch", "--pids", "64"], 3, "no server named 'nosuch'"),
    ):
        result = vserver_cli("update", *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert engine.spec(name).limits == Limits(cpus=0.5, memory_bytes=48 * MiB, pids=100, disk_bytes=320 * MiB)
    wait_for_http("198.19.11.17")
