"""What the tests' engine installation may leave in the kernel, looked up by its names."""

from __future__ import annotations

import os
import time
from pathlib import Path

TEST_ROOT = "/var/lib/vservers-test"
# The compiled busybox and its source tarball, kept inside the checkout: a clean clone (CI's)
# starts without them, so the path that fills the cache runs there every time, and nothing
# left on the machine by an earlier run can make a test pass.
TEST_CACHE = str(Path(__file__).resolve().parent.parent / "var" / "cache")
TEST_ENV = {
    "VSERVER_ROOT": TEST_ROOT,
    "VSERVER_BRIDGE": "vstest0",
    "VSERVER_GATEWAY": "198.19.0.1/18",
    "VSERVER_GATEWAY6": "fd00:19::1/64",
    "VSERVER_UID_BASE": "5000000",
    "VSERVER_CACHE_DIR": TEST_CACHE,
}
# A second installation on the same host, to show two never disturb each other.
SECOND_ENV = {
    **TEST_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-test2",
    "VSERVER_BRIDGE": "vstest1",
    "VSERVER_GATEWAY": "198.19.64.1/18",
    "VSERVER_GATEWAY6": "fd00:1a::1/64",
    "VSERVER_UID_BASE": "300000000",
}
# The panel's tests run a real worker with the engine under this installation.
PANEL_ENV = {
    **TEST_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-paneltest",
    "VSERVER_BRIDGE": "vspanel0",
    "VSERVER_GATEWAY": "198.19.128.1/18",
    "VSERVER_GATEWAY6": "fd00:1b::1/64",
    "VSERVER_UID_BASE": "600000000",
}
# The two nodes of the cluster tests (tests/cluster_world.py, issue 16): each its own root,
# bridge, subnet and uid range (the ranges differ, so a moved server's owners are shifted).
CLUSTER_ENVS = {
    name: {
        **TEST_ENV,
        "VSERVER_ROOT": f"/var/lib/vservers-cluster-{name}",
        "VSERVER_BRIDGE": f"vsclu{name}0",
        "VSERVER_GATEWAY": f"198.19.{240 + i}.1/24",
        "VSERVER_GATEWAY6": f"fd00:1c:{i}::1/64",
        "VSERVER_UID_BASE": str(800_000_000 + i * 100_000_000),
    }
    for i, name in enumerate(("a", "b"))
}
# The uids the leak check looks at per installation: room for 1,024 servers, and no overlap
# with the next installation's or the benchmarks' ranges (bench/: 700,000,000, and 1,100,000,000
# to 2,000,000,000; the cluster's once shared 1,500,000,000 with bench/overhead.py, whose
# running servers a test session then reported as its own leaks).
UID_SPAN = 1024 * 65536
# How long a stopped server's host veth may outlive its stop (the kernel's namespace teardown).
VETH_SETTLE = 5.0


def find_leaks() -> list[str]:
    cluster = [leak for env in CLUSTER_ENVS.values() for leak in _leaks_of(env)]
    return _leaks_of(TEST_ENV) + _leaks_of(SECOND_ENV) + _leaks_of(PANEL_ENV) + cluster


def _leaks_of(env: dict[str, str]) -> list[str]:
    from vservers.engine.config import EngineConfig
    from vservers.engine.loopdev import devices_for

    config = EngineConfig.from_env(env)
    root = str(config.root)
    leaks = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(root):
            leaks.append(f"mount {mount_point}")
    leaks += [f"loop device {dev}" for dev in devices_for(config.root)]
    _wait_for_veths(config.veth_prefix)
    for link in Path("/sys/class/net").iterdir():
        if link.name.startswith(config.veth_prefix) or link.name == config.bridge:
            leaks.append(f"network interface {link.name}")
    from vservers.engine import firewall, procfs

    table = firewall.table_name(config.bridge)
    leaks += [f"nftables table {family} {table}" for family, names in firewall.tables().items() if table in names]
    for controller in Path(config.cgroup_root).iterdir():
        group = controller / config.cgroup_parent
        if group.is_dir():
            leaks.append(f"cgroup {group}")
    leaks += [f"frozen cgroup {group}" for group in frozen_cgroups(env)]
    base = config.uid_base
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            uid = os.stat(proc).st_uid
        except (FileNotFoundError, ProcessLookupError):
            continue
        stat = procfs.read_stat(int(proc.name))
        # A zombie holds nothing but its pid; ours are reaped before this check, and one
        # adopted by a PID 1 that never reaps (as on this VM) is beyond anyone's reach.
        if stat is not None and base <= uid < base + UID_SPAN and stat.state != "Z":
            leaks.append(f"process {proc.name} (uid {uid}) {_cmdline(proc)}")
    return leaks


def _wait_for_veths(prefix: str, settle: float = VETH_SETTLE) -> None:
    """Give the kernel up to SETTLE seconds to delete the installation's veths: a stop leaves
    a server's host veth to the teardown of its network namespace (Engine._clean_leftovers),
    which runs in a work queue a moment after the server's last process. One still there after
    that is a leak."""
    deadline = time.monotonic() + settle
    while any(name.startswith(prefix) for name in os.listdir("/sys/class/net")) and time.monotonic() < deadline:
        time.sleep(0.01)


def frozen_cgroups(env: dict[str, str]) -> list[Path]:
    """The installation's server groups that are frozen (v1 freezer.state, v2 cgroup.freeze):
    a snapshot must never leave one so, even when killed mid-copy."""
    from vservers.engine.config import EngineConfig

    config = EngineConfig.from_env(env)
    root = Path(config.cgroup_root)
    frozen = []
    for state in sorted((root / "freezer" / config.cgroup_parent).glob("*/freezer.state")):
        if state.read_text().strip() != "THAWED":
            frozen.append(state.parent)
    for control in sorted((root / config.cgroup_parent).glob("*/cgroup.freeze")):
        if control.read_text().strip() != "0":
            frozen.append(control.parent)
    return frozen


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
