"""The worker's watch (vservers.worker.Watch): it reaps exactly the guests' inits that its
process registered, when they exit, and has the node reconciled at once; any other child is
left to whoever waits for it."""

from __future__ import annotations

import os
import time

import pytest

from vservers.queues import get_queue
from vservers.worker import Watch

NODE = 7  # the watch knows nodes by pk and queue only: no database row is needed


def child() -> tuple[int, int]:
    """A child process that exits when the returned pipe end is closed: (pid, write end)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    return pid, write


def exited_unreaped(pid: int) -> bool:
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


def reaped(pid: int) -> bool:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def reconciles(queue) -> list[str]:
    """The reconcile jobs queued (the watch also queues the usage sampler and pruning)."""
    return [job_id for job_id in queue.get_job_ids() if job_id.startswith("reconcile-")]


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def watch(rq_redis, settings):
    settings.PANEL_RECONCILE_SECONDS = 3600
    renewals: list[float] = []
    watch = Watch(["default"], renewals.append)
    watch.nodes = [(NODE, "default")]
    watch.renewals = renewals
    watch.start()
    yield watch
    watch.stop()


def test_an_exited_init_is_reaped_and_reconciles_the_node_once_others_are_left_alone(watch):
    queue = get_queue("default")
    job_id = f"reconcile-{NODE}"
    # At start-up: the periodic run, at once.
    wait_for(lambda: reconciles(queue) == [job_id], "the start-up reconcile job")
    queue.fetch_job(job_id).delete()  # as if a worker had run it (a run ends the same way)

    init, init_end = child()
    other, other_end = child()
    watch.add("vs-web", init)
    try:
        os.close(init_end)
        os.close(other_end)
        wait_for(lambda: reaped(init), "the watch to reap the init")
        wait_for(lambda: reconciles(queue) == [job_id], "the reconcile job")
        # Once: the death is handed to the one job, and the periodic run is an hour away.
        time.sleep(2.5)
        assert reconciles(queue) == [job_id]
        # A child nobody registered is not the watch's: its exit status is still there.
        wait_for(lambda: exited_unreaped(other), "the other child to exit")
        assert not reaped(other)
        assert watch.renewals == []  # Redis never went away
    finally:
        os.waitpid(other, 0)


def test_an_init_the_process_ends_itself_is_forgotten_first(watch):
    queue = get_queue("default")
    wait_for(lambda: reconciles(queue) == [f"reconcile-{NODE}"], "the start-up reconcile job")
    queue.fetch_job(f"reconcile-{NODE}").delete()

    init, init_end = child()
    watch.add("vs-web", init)
    watch.discard("vs-web")  # a stop: the engine waits for it
    os.close(init_end)
    wait_for(lambda: exited_unreaped(init), "the init to exit")
    time.sleep(2.5)
    assert not reaped(init)
    assert reconciles(queue) == []
    os.waitpid(init, 0)


def test_the_usage_sampler_and_pruning_are_queued_from_start_up_once_per_period(watch):
    queue = get_queue("default")
    wanted = {f"sample-{NODE}", f"usage-prune-{NODE}", f"backup-schedule-{NODE}"}
    wait_for(lambda: wanted <= set(queue.get_job_ids()), "the sampler, prune and backup schedule jobs")
    time.sleep(2.5)  # ticks meanwhile: still queued, so not queued again
    assert sorted(queue.get_job_ids()) == sorted([*wanted, f"reconcile-{NODE}"])
