"""Faults of the guests and the host, and what the node's reconcile job makes of them, with the
real engine: a guest's init killed from the host (autostart brings it back, within a bound),
a host reboot (every autostart server comes back with its files), and a template rebuilt
under a running server (its files never change)."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.models import AuditEntry
from tests.leaks import PANEL_ENV, _leaks_of
from tests.panel import faults
from tests.panel.faults import kernel_state, wait_gone, wait_until
from vservers import reconcile
from vservers.actions import approve, request_operation
from vservers.engine import templates
from vservers.models import Node, Operation, OperationKind, OperationStatus, State
from vservers.reconcile import CRASH_LIMIT, reconcile_node

pytestmark = pytest.mark.django_db(transaction=True)

# The shared fixtures (tests/panel/faults.py).
file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers


def kill_init(engine, server) -> None:
    """What a crash inside the guest looks like from outside: its init is gone."""
    pid = engine.status(server.engine_name, with_addresses=False).init_pid
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    wait_until(lambda: kernel_state(engine, server) == "stopped", f"init {pid} of {server} to die")


def autostarts(server):
    return Operation.objects.filter(server=server, kind=OperationKind.START, params__autostart=True)


def guest_read(engine, server, path: str) -> str:
    result = engine.run(server.engine_name, ["cat", path])
    assert result.returncode == 0, result
    return result.stdout


# --- 2. a guest's init dies --------------------------------------------------------------------


def test_a_killed_init_comes_back_until_it_died_ten_times_within_the_window(
    world, provision, drain, http, monkeypatch
):
    # Ten deaths must fall in the window however slow this machine is today: the test widens
    # the window, and checks it by moving the earlier deaths out of it.
    monkeypatch.setattr(reconcile, "CRASH_WINDOW", timedelta(minutes=10))
    engine = world.engine
    server = provision("web")
    address = server.ip_list()[0]

    def die() -> None:
        kill_init(engine, server)
        reconcile_node(world.node.pk)
        server.refresh_from_db()

    def dies_and_comes_back() -> None:
        queued_before = autostarts(server).count()
        die()
        assert server.state == State.STOPPED
        assert server.state_reason == "the server's init exited"
        assert autostarts(server).count() == queued_before + 1
        assert autostarts(server).order_by("-pk").first().status == OperationStatus.QUEUED
        drain()
        server.refresh_from_db()
        assert server.state == State.RUNNING
        assert kernel_state(engine, server) == "running"

    for _ in range(CRASH_LIMIT - 1):
        dies_and_comes_back()
    http.wait(address)

    # Deaths before the window do not count: moved out of it, the next death starts over.
    autostarts(server).update(created=timezone.now() - timedelta(minutes=11))
    dies_and_comes_back()
    for _ in range(CRASH_LIMIT - 2):
        dies_and_comes_back()

    # The tenth death within the window: it stays stopped, and says so.
    die()
    assert server.state == State.STOPPED
    assert kernel_state(engine, server) == "stopped"
    assert server.state_reason == (
        f"autostart paused: its init died {CRASH_LIMIT} times within 600 seconds; "
        "start it by hand once the cause is fixed"
    )
    assert not Operation.objects.filter(server=server, status=OperationStatus.QUEUED).exists()
    paused = Operation.objects.filter(server=server).order_by("-pk").first()
    assert (paused.kind, paused.status, paused.error) == (OperationKind.START, OperationStatus.FAILED,
                                                          server.state_reason)
    entry = AuditEntry.objects.get(action="server.autostart_paused")
    assert entry.object_id == str(server.uuid)
    assert entry.details == {"deaths": CRASH_LIMIT, "window_seconds": 600}
    # Later runs leave it alone, without saying it again.
    reconcile_node(world.node.pk)
    server.refresh_from_db()
    assert server.state == State.STOPPED
    assert Operation.objects.filter(server=server).order_by("-pk").first() == paused
    assert AuditEntry.objects.filter(action="server.autostart_paused").count() == 1

    # A start by hand brings it back, and autostart watches it again from nought.
    request_operation(server, OperationKind.START, world.alice)
    drain()
    server.refresh_from_db()
    assert server.state == State.RUNNING
    assert server.state_reason == ""
    http.wait(address)
    dies_and_comes_back()


def test_the_worker_sees_a_crashed_guest_at_once_and_brings_it_back(fault_world, make_server, workers):
    """Not at the next periodic run: the worker's watch sees the init it started exit, reaps
    it and has the node reconciled right then. The periodic run is an hour away here, so only
    that can do it."""
    world, engine = fault_world, fault_world.engine
    worker = workers(env={"PANEL_RECONCILE_SECONDS": "3600"})
    server = make_server("web")
    provisioning = approve(server, world.operator)
    wait_until(lambda: Operation.objects.get(pk=provisioning.pk).status == OperationStatus.SUCCEEDED,
               lambda: f"the provisioning:\n{worker.log_tail()}")
    # Its first periodic run, at start-up, is behind it.
    wait_until(lambda: Node.objects.get(pk=world.node.pk).last_seen is not None, "the first reconcile run")

    for deaths in (1, 2):
        kill_init(engine, server)
        wait_until(lambda n=deaths: autostarts(server).filter(status=OperationStatus.SUCCEEDED).count() == n,
                   lambda: f"the worker to start it again:\n{worker.log_tail()}")
        server.refresh_from_db()
        assert server.state == State.RUNNING
        assert kernel_state(engine, server) == "running"
    worker.stop()


# --- 3. the host reboots -------------------------------------------------------------------------


def reboot(engine) -> None:
    """What a reboot does to the tests' installation, and only to it (by its names): every
    guest process dies, and the kernel forgets its mounts, loop devices, interfaces, firewall
    tables and cgroups. The files under its root stay, as on a disk."""
    from vservers.engine import firewall, network
    from vservers.engine.loopdev import devices_for

    config = engine.config
    for name in engine.names():
        status = engine.status(name, with_addresses=False)
        if status.init_pid:
            os.kill(status.init_pid, signal.SIGKILL)  # its PID namespace dies with it
            assert wait_gone(status.init_pid)
    root = str(config.root)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount_point in sorted((m for m in mounts if m.startswith(root)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=True)
    for device in devices_for(config.root):
        subprocess.run(["losetup", "-d", device], check=False)  # autoclear may beat us to it
    for link in Path("/sys/class/net").iterdir():
        if link.name.startswith(config.veth_prefix):
            subprocess.run(["ip", "link", "del", link.name], check=False)
    firewall.remove(config.bridge)
    network.remove_bridge(config.bridge)
    for controller in Path(config.cgroup_root).iterdir():
        group = controller / config.cgroup_parent
        if group.is_dir():
            for path in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                path.rmdir()
            group.rmdir()


def test_after_a_host_reboot_one_reconcile_starts_every_autostart_server_with_its_files(
    world, provision, drain, http
):
    engine = world.engine
    web1, web2, manual, parked = provision("web1", "web2", "manual", "parked")
    manual.autostart = False
    manual.save(update_fields=["autostart"])
    request_operation(parked, OperationKind.STOP, world.alice)  # stopped on purpose
    drain()
    running = [web1, web2, manual]
    for server in running:
        result = engine.run(server.engine_name, ["sh", "-c", f"echo 'before the reboot: {server.name}' > /root/note"])
        assert result.returncode == 0, result
    uid_bases = [engine.spec(s.engine_name).uid_base for s in running]

    reboot(engine)
    # The kernel holds nothing of the installation any more; the panel does not know yet.
    assert _leaks_of(PANEL_ENV) == []
    assert {kernel_state(engine, s) for s in running} == {"stopped"}
    web1.refresh_from_db()
    assert web1.state == State.RUNNING

    reconcile_node(world.node.pk)

    for server in (web1, web2, manual, parked):
        server.refresh_from_db()
        assert server.state == State.STOPPED
    assert [autostarts(s).count() for s in (web1, web2, manual, parked)] == [1, 1, 0, 0]

    drain()

    for server in (web1, web2):
        server.refresh_from_db()
        assert server.state == State.RUNNING
        assert kernel_state(engine, server) == "running"
        http.wait(server.ip_list()[0])
        assert guest_read(engine, server, "/root/note") == f"before the reboot: {server.name}\n"
    for server in (manual, parked):
        server.refresh_from_db()
        assert server.state == State.STOPPED
        assert kernel_state(engine, server) == "stopped"
    # The one without autostart keeps its files too.
    request_operation(manual, OperationKind.START, world.alice)
    drain()
    assert guest_read(engine, manual, "/root/note") == "before the reboot: manual\n"
    assert len({engine.spec(s.engine_name).uid_base for s in running}) == 3
    assert sorted(uid_bases) == sorted(engine.spec(s.engine_name).uid_base for s in running)


# --- 6. a template is rebuilt ------------------------------------------------------------------


def guest_files(engine, server) -> str:
    """Checksums of the template's files as the guest sees them."""
    paths = ["/bin/busybox", "/etc/inittab", "/etc/passwd", "/etc/init.d/rcS", "/var/www/index.html"]
    result = engine.run(server.engine_name, ["md5sum", *paths])
    assert result.returncode == 0, result
    return result.stdout


def test_rebuilding_a_template_never_changes_the_files_of_a_running_server(world, provision, drain, http):
    engine = world.engine
    server = provision("old")
    spec = engine.spec(server.engine_name)
    old_version = spec.template_version
    assert engine.status(server.engine_name).template == f"busybox:{old_version}"
    files = guest_files(engine, server)

    info = templates.build(engine.config, "busybox")  # a new version, and now the current one
    assert info.version != old_version
    assert templates.get(engine.config, "busybox").version == info.version
    # Only the new version has this file: whoever sees it sees the new version's files.
    marker = templates.rootfs_path(engine.config, "busybox", info.version) / "etc" / "template-version"
    marker.write_text(f"{info.version}\n")

    def unchanged() -> None:
        assert engine.spec(server.engine_name).template_version == old_version
        assert engine.status(server.engine_name).template == f"busybox:{old_version}"
        assert guest_files(engine, server) == files
        assert engine.run(server.engine_name, ["test", "-e", "/etc/template-version"]).returncode == 1
        assert templates.get(engine.config, "busybox", old_version).version == old_version  # still there

    unchanged()
    # Neither does a restart through the panel move it to the new version.
    request_operation(server, OperationKind.RESTART, world.alice)
    drain()
    server.refresh_from_db()
    assert server.state == State.RUNNING
    http.wait(server.ip_list()[0])
    unchanged()

    # A server made now is built on the new version.
    new = provision("new")
    assert engine.status(new.engine_name).template == f"busybox:{info.version}"
    assert guest_read(engine, new, "/etc/template-version") == f"{info.version}\n"
