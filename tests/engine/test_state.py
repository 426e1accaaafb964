"""Work directories of builds (a template's staging, busybox's compile tree) are claimed with an
flock for as long as their builder lives; what a killed builder left is removed, what a living
one holds is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from vservers.engine import state, templates
from vservers.engine.config import EngineConfig

HOLDER = """
import sys, time
from pathlib import Path
from vservers.engine import state
state.claim(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def age(path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def start_holder(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_dead_builders_directory_is_removed_and_a_living_ones_kept(tmp_path):
    living, dead, fresh = (tmp_path / f".build-{n}" for n in ("living", "dead", "fresh"))
    for directory in (living, dead, fresh):
        directory.mkdir()
        (directory / "rootfs").mkdir()
    (tmp_path / ".build-file").write_text("not a directory")
    (tmp_path / ".build-link").symlink_to(dead)
    (tmp_path / "1.0").mkdir()  # a published version: not a staging directory
    holders = [start_holder(living), start_holder(dead)]
    try:
        for path in (living, dead, tmp_path / "1.0"):
            age(path)
        holders[1].send_signal(signal.SIGKILL)  # the builder dies mid-build
        holders[1].wait()

        assert state.remove_abandoned(tmp_path, ".build-") == [dead]
        assert not dead.exists()
        assert living.is_dir() and fresh.is_dir()  # held; too new to tell
        assert (tmp_path / ".build-file").is_file() and (tmp_path / "1.0").is_dir()

        age(fresh)
        assert state.remove_abandoned(tmp_path, ".build-") == [fresh]
        assert living.is_dir()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert state.remove_abandoned(tmp_path, ".build-") == [living]  # its holder is gone now


def test_a_staging_directory_is_claimed_until_published_or_discarded(tmp_path):
    config = EngineConfig.from_env({"VSERVER_ROOT": str(tmp_path)})
    fds_before = len(os.listdir("/proc/self/fd"))
    version, staging = templates.new_version(config, "busybox")
    age(staging)
    assert templates.remove_abandoned_builds(config) == []  # this process holds it
    templates.discard(staging)
    assert not staging.exists()

    version, staging = templates.new_version(config, "busybox")
    info = templates.TemplateInfo(name="busybox", version=version, init=("/sbin/init",), halt_signal=12,
                                  service_dir="/etc/service", account_tool="busybox")
    templates.publish(config, staging, info)
    assert templates.get(config, "busybox").version == version
    assert len(os.listdir("/proc/self/fd")) == fds_before  # no claim left open
    assert templates.remove_abandoned_builds(config) == []
