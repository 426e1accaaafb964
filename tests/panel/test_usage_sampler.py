"""The sampler against the real kernel: its figures agree with the kernel's own counters for a
real busybox server under a known load (a transfer of N MB into it over the project's bridge,
a CPU loop of N seconds in it); a stopped server gets no sample; a restart gives no rate; the
job runs through the worker's allow-list and a failing receiver of its signal does not fail it."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.engine.helpers import check_routed_to_bridge
from tests.leaks import PANEL_ENV
from vservers.actions import request_operation
from vservers.models import OperationKind, State, UsageRaw
from vservers.usage import archive, queries, sampler
from vservers.usage.signals import node_sampled

MB = 2**20
PORT = 9000


def stored(server) -> list[archive.Point]:
    """Every raw sample of SERVER, oldest first."""
    points = []
    for row in UsageRaw.objects.filter(server=server).order_by("start"):
        points += archive.unpack_points(bytes(row.data), row.start)
    return points


def veth_counter(engine, server, name: str) -> int:
    """The host veth's own counter NAME, read from sysfs: not the netlink dump the sampler uses."""
    veth = engine.host_veth(server.engine_name)
    return int(Path(f"/sys/class/net/{veth}/statistics/{name}").read_text())


def cgroup_cpu_seconds(engine, server) -> float:
    """The server's CPU counter, from its v1 cpuacct group's file (this machine: cgroups v1)."""
    return int((engine.cgroups.group("cpuacct", server.engine_name) / "cpuacct.usage").read_text()) / 1e9


def sample_quietly(world, server, read, now):
    """Sample at NOW while the kernel counters READ returns do not move (they do, a little,
    when the guest's kernel sends a neighbour probe): then what was stored must be exactly
    what the kernel said. Returns (the stored sample, the counters)."""
    for _ in range(20):
        before = read()
        sampler.sample(world.node, now=now)
        after = read()
        point = stored(server)[-1]
        if before == after and point.t == int(now):
            return point, after
        now += 1  # moved meanwhile: another sample a second later
    pytest.fail("the counters never stood still for one sample")


def send_into(address: str, size: int) -> None:
    """Send SIZE bytes to ADDRESS:PORT (the guest's nc), after checking it routes to our bridge."""
    check_routed_to_bridge(address, PANEL_ENV["VSERVER_BRIDGE"])
    deadline = time.monotonic() + 15
    while True:
        try:
            conn = socket.create_connection((address, PORT), timeout=5)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # nc is not listening yet
    with conn:
        block = bytes(64 * 1024)
        for _ in range(size // len(block)):
            conn.sendall(block)


def test_network_bytes_agree_with_the_kernel_for_a_transfer_of_n_mb(world, provision):
    server = provision("web")
    engine = world.engine
    veth = lambda: tuple(veth_counter(engine, server, n) for n in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets"))  # noqa: E731
    t0 = time.time()
    first, counters = sample_quietly(world, server, veth, t0)
    # What was stored is the host end's own counters, in = what the host end transmitted.
    assert (first.in_bytes, first.out_bytes, first.in_packets, first.out_packets) == counters
    assert stored(server)[0].net_in is None  # the first sample has no rate

    size = 8 * MB
    received = {}
    guest = threading.Thread(target=lambda: received.update(result=engine.run(
        server.engine_name, ["sh", "-c", f"nc -l -p {PORT} > /dev/null"], timeout=60)))
    guest.start()
    try:
        send_into(server.ip_list()[0], size)
    finally:
        guest.join(70)
    assert received["result"].returncode == 0, received["result"].stderr

    second, counters = sample_quietly(world, server, veth, t0 + 30)
    assert (second.in_bytes, second.out_bytes, second.in_packets, second.out_packets) == counters
    moved = second.in_bytes - first.in_bytes
    # The payload plus TCP/IP and Ethernet headers: at least N MB, at most 6 % more (66 bytes of
    # headers per 1,448-byte segment at worst, fewer when the veth carries GSO frames).
    assert size <= moved <= size * 1.06 + 64 * 1024
    prev = stored(server)[-2]  # the rate is against the sample before (first, unless one was retaken)
    assert second.net_in == pytest.approx((second.in_bytes - prev.in_bytes) / (second.t - prev.t), rel=1e-6)
    assert 0 < second.out_bytes - first.out_bytes < size * 0.05  # acknowledgements only
    assert second.net_in_packets == pytest.approx((second.in_packets - prev.in_packets) / (second.t - prev.t),
                                                  rel=1e-6)

    series = queries.server_series(server, "1h", now=second.t)
    assert series.metrics["net_in"][-1] == pytest.approx(second.net_in, rel=1e-6)


def test_cpu_seconds_agree_with_the_cgroup_for_a_loop_of_n_seconds(world, provision):
    server = provision("web", plan=world.medium)  # one whole CPU
    engine = world.engine
    t0 = time.time()
    first, cpu_before = sample_quietly(world, server, lambda: cgroup_cpu_seconds(engine, server), t0)
    assert first.cpu_seconds == cpu_before  # exactly the cgroup's counter

    seconds = 2
    # Spins until its own CPU time and its children's (fields 14-17 of /proc/self/stat, in
    # clock ticks of 1/100 s) reach N seconds: a load of N CPU seconds whatever else runs.
    loop = (f"while :; do set -- $(cat /proc/$$/stat); t=$(( ${{14}} + ${{15}} + ${{16}} + ${{17}} )); "
            f"[ $t -ge {seconds * 100} ] && break; done")
    result = engine.run(server.engine_name, ["sh", "-c", loop], timeout=60)
    assert result.returncode == 0, result.stderr

    second, cpu_after = sample_quietly(world, server, lambda: cgroup_cpu_seconds(engine, server), t0 + 30)
    assert second.cpu_seconds == cpu_after
    used = second.cpu_seconds - first.cpu_seconds
    # The loop's N seconds, plus entering the server and the idle guest's init (well under 0.5 s).
    assert seconds <= used <= seconds + 0.5
    prev = stored(server)[-2]  # the rate is against the sample before (first, unless one was retaken)
    assert second.cpu == pytest.approx((second.cpu_seconds - prev.cpu_seconds) / (second.t - prev.t), rel=1e-6)
    server.refresh_from_db()
    assert server.cpu_seconds == second.cpu_seconds and server.sampled_at == datetime.fromtimestamp(second.t, UTC)


def test_a_stopped_server_has_no_sample_and_a_restart_no_rate(world, provision, drain):
    server = provision("web")
    t0 = int(time.time())
    sampler.sample(world.node, now=t0)
    request_operation(server, OperationKind.STOP, None)
    drain()
    server.refresh_from_db()
    assert server.state == State.STOPPED
    sampler.sample(world.node, now=t0 + 30)
    assert [p.t for p in stored(server)] == [t0]  # none while stopped: a gap in the plots
    series = queries.node_series(world.node, "1h", now=t0 + 30)
    assert series.metrics["memory"][-1] == 0.0  # the node's total is there, and holds nothing
    assert queries.server_series(server, "1h", now=t0 + 30).metrics["memory"][-1] is None

    request_operation(server, OperationKind.START, None)
    drain()
    sampler.sample(world.node, now=t0 + 60)
    before, after = stored(server)
    assert after.started != before.started  # another init: the counters started again
    assert (after.cpu, after.net_in, after.net_out) == (None, None, None)  # no rate, never a spike


def test_the_job_runs_through_the_worker_and_survives_a_failing_receiver(world, provision, drain, caplog):
    from vservers.queues import get_queue

    server = provision("web")
    heard = []

    def broken(sender, node, at, **kwargs):
        heard.append((node.pk, at))
        raise RuntimeError("an alert receiver with a bug")

    node_sampled.connect(broken)
    try:
        queue = get_queue("default")
        assert sampler.queue_run(queue, world.node.pk) == "queued"
        assert sampler.queue_run(queue, world.node.pk) == "waiting"  # never two at once
        drain()
    finally:
        node_sampled.disconnect(broken)
    job = queue.fetch_job(sampler.job_id(world.node.pk))
    assert job.get_status() == "finished" and job.return_value().startswith("1 of 1 servers sampled")
    assert len(stored(server)) == 1 and heard and heard[0][0] == world.node.pk
    assert "an alert receiver with a bug" in caplog.text
    assert sampler.queue_run(queue, world.node.pk, unless_ended_within=15) == "recent"
