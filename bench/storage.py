"""The two storage backends side by side (issue 17): busybox servers on loop images and on btrfs
subvolumes with qgroup limits, in one run, interleaved.

    .venv/bin/python bench/storage.py --quick     # about two minutes
    .venv/bin/python bench/storage.py --full      # more servers and rounds, longer wrk runs
    .venv/bin/python bench/storage.py --smoke     # checks the benchmark; writes no results

One installation (its own root, bridge, range and uids) with two engines, VSERVER_STORAGE=loop
and =btrfs; the btrfs pool is a sparse-file btrfs the benchmark makes and mounts outside the
root, quotas on, and removes at the end. Measured per backend:

- create and delete time of a server, interleaved loop/btrfs;
- disk use of an idle server: the image file's allocated blocks (loop) and the subvolume's
  qgroup referenced bytes after a sync (btrfs);
- in rounds: every server started once, the two backends' alternately (start, start to first
  HTTP 200), and stopped; then one backend's K servers started at a time (which goes first
  alternates) and the host memory they take (MemAvailable before and after, sampled, ÷ K; the
  kernel's Slab, KernelStack, PageTables and Buffers the same way), their cgroups' memory and
  the PSS of their processes, then stopped;
- with --apache (and --full) Apache's requests/s the same way, its access log on the disk;
- busybox httpd requests/s: wrk from a client network namespace on the bridge (as
  bench/loopdio.py), a 4 KB page, servers pinned to CPU 0, wrk to CPU 1, rounds rotated.

Medians throughout; load averages before and after are stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, netns, report, wrk  # noqa: E402
from bench.common import MB, log, must  # noqa: E402

ENV = {
    **common.BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-storage",
    "VSERVER_BRIDGE": "vsbenchst0",
    "VSERVER_GATEWAY": "198.18.252.1/22",
    "VSERVER_UID_BASE": "1800000000",
}
NETWORK = common.network_of(ENV)
POOL_DIR = Path("/var/lib/vservers-bench-storage-pool")  # outside the root: cleanup removes the root
POOL_BYTES = 4 * 2**30
CLIENT_NS = "vsbenchst-client"
CLIENT_VETH = "vsbenchstc0"
SIDES = ("loop", "btrfs")
PAGE_NAME = "bench.html"
CONNS = {"busybox": 8, "apache": 32}
WEB_ROOT = {"busybox": "/var/www", "apache": "/var/www/html"}
DISK_BYTES = 256 * 2**20
PROFILES = {
    "smoke": {"servers": 2, "rounds": 1, "wrk_s": 1, "wrk_rounds": 1},
    "quick": {"servers": 5, "rounds": 3, "wrk_s": 3, "wrk_rounds": 5},
    "full": {"servers": 8, "rounds": 5, "wrk_s": 10, "wrk_rounds": 7},
}


def make_pool() -> Path:
    """A sparse btrfs, loop-mounted (autoclear), quotas on."""
    unmount_pool()
    shutil.rmtree(POOL_DIR, ignore_errors=True)
    POOL_DIR.mkdir(mode=0o700)
    image, mount_point = POOL_DIR / "pool.img", POOL_DIR / "pool"
    mount_point.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(POOL_BYTES)
    must(["mkfs.btrfs", "-q", "-f", str(image)])
    must(["mount", "-o", "loop", str(image), str(mount_point)])
    must(["btrfs", "quota", "enable", str(mount_point)])
    return mount_point


def unmount_pool() -> list[str]:
    mount_point = POOL_DIR / "pool"
    if common.mounts_below(mount_point):
        result = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if result.returncode != 0:
            return [f"umount {mount_point}: {result.stderr.strip()}"]
    shutil.rmtree(POOL_DIR, ignore_errors=True)
    return []


def make_page() -> bytes:
    body = b"<!DOCTYPE html>\n<html><body>\n" + b"<p>The same page on both servers.</p>\n" * 100
    return body[:4096 - 15] + b"</body></html>\n"


def disk_use(engine, name: str) -> int:
    """Bytes the server's own files take on the host: the image's allocated blocks, or the
    subvolume's qgroup figure (after a sync: qgroups count at transaction commit)."""
    from vservers.engine import qgroups

    storage = qgroups.of_server(engine.config.server_dir(name))
    if storage is None:
        return os.stat(engine.config.server_dir(name) / "disk.img").st_blocks * 512
    os.sync()
    return qgroups.used_bytes(storage.subvolume) or 0


def cgroup_memory(engine, name: str) -> int:
    for path in engine.cgroups.paths(name):
        for filename in ("memory.usage_in_bytes", "memory.current"):
            if (path / filename).is_file():
                return int((path / filename).read_text())
    return 0


def start_all(engine, names: list[str], addresses: dict[str, str]) -> list[dict]:
    rows = []
    for name in names:
        ip = addresses[name].split("/")[0]
        t0 = time.monotonic()
        engine.start(name)
        started = time.monotonic()
        common.check_route(ip, NETWORK, ENV["VSERVER_BRIDGE"])
        answered = common.wait_http(ip, time.monotonic() + 60)
        if answered is None:
            raise RuntimeError(f"{name} does not answer HTTP")
        rows.append({"start_s": started - t0, "start_to_200_s": answered - t0})
    return rows


# The kernel's own memory a server's storage takes outside any process: slabs (ext4's and
# jbd2's, btrfs's), kernel stacks (a jbd2 thread per ext4 mount), and Buffers (the loop
# device's block cache, where ext4 keeps its metadata). Less noisy than MemAvailable, which
# moves with every other process's page cache on a shared host.
KERNEL_FIELDS = ("Slab", "KernelStack", "PageTables", "Buffers")


def kernel_memory() -> int:
    return sum(common.meminfo_sampled(field, samples=3, interval=0.1) for field in KERNEL_FIELDS)


def memory_round(engine, names: list[str], addresses: dict[str, str]) -> tuple[list[dict], dict]:
    before = common.meminfo_sampled()
    kernel_before = kernel_memory()
    starts = start_all(engine, names, addresses)
    time.sleep(1.0)  # let init's first work settle before memory is read
    after = common.meminfo_sampled()
    kernel_after = kernel_memory()
    cgroup = [cgroup_memory(engine, n) for n in names]
    pss = [common.pss_of(engine.cgroups.procs(n)) for n in names]
    engine.stop_many(names)
    return starts, {"host_mb_per_server": (before - after) / len(names) / MB,
                    "kernel_mb_per_server": (kernel_after - kernel_before) / len(names) / MB,
                    "cgroup_mb_per_server": statistics.mean(cgroup) / MB,
                    "pss_mb_per_server": statistics.mean(pss) / MB}


def measure_http(engines, http_servers: dict[str, str], addresses: dict[str, str], profile: dict, page: bytes,
                 kind: str = "busybox") -> dict:
    from bench.hostside import pin

    client = ["ip", "netns", "exec", CLIENT_NS, "taskset", "-c", str(wrk.CLIENT_CPU), "wrk"]
    targets = []
    for side, name in http_servers.items():
        ip = addresses[name].split("/")[0]
        common.check_route(ip, NETWORK, ENV["VSERVER_BRIDGE"])
        netns.check_route(CLIENT_NS, ip, NETWORK)
        status, body = common.http_get(ip, path=f"/{PAGE_NAME}")
        if status != 200 or body != page:
            raise RuntimeError(f"{name} does not serve the page ({status})")
        pin(engines[side].cgroups.procs(name), wrk.SERVER_CPU)
        targets.append(wrk.Target(side, client + wrk.wrk_args(f"http://{ip}:80/{PAGE_NAME}", profile["wrk_s"],
                                                                                CONNS[kind]),
                                  server_cpu=(lambda e=engines[side], n=name:
                                              e.status(n, with_addresses=False).usage.cpu_seconds)))
    result = wrk.compare(targets, profile["wrk_rounds"], 1, f"{kind} http")
    for side in result.values():
        side["rps_rounds"] = [sample["rps"] for sample in side.pop("samples")]
    return result


def apache_http(engines, config, env: dict[str, str], addresses: dict[str, str], profile: dict,
                page: bytes) -> dict:
    """Apache (bench/template_store.py's Debian) on each backend, wrk as for busybox (32
    connections): its access log line per request goes through the overlay to the server's
    disk, the loop image or the subvolume."""
    from bench.template_store import ensure_debian_in_store, link_debian
    from vservers.engine import Limits

    version, built = ensure_debian_in_store(env)
    link_debian(config, env, version)
    servers = {}
    for j, side in enumerate(SIDES):
        name = f"st-apache-{side}"
        addresses[name] = common.address(200 + j, NETWORK)
        engines[side].create(name, "debian", [addresses[name]], Limits(disk_bytes=512 * 2**20))
        start_all(engines[side], [name], addresses)
        common.guest_write(engines[side], name, f"{WEB_ROOT['apache']}/{PAGE_NAME}", page)
        servers[side] = name
    result = measure_http(engines, servers, addresses, profile, page, "apache")
    result["debian_template_build_s"] = round(built, 1)
    engines["loop"].stop_many(list(servers.values()))
    return result


def med(values: list[float], digits: int = 4) -> float:
    return round(statistics.median(values), digits)


def markdown(result: dict) -> str:
    m = result["medians"]
    rows = []
    labels = [("create_s", "create (ms)", 1000, 1), ("delete_s", "delete (ms)", 1000, 1),
              ("start_s", "start (ms)", 1000, 1), ("start_to_200_s", "start → first HTTP 200 (ms)", 1000, 1),
              ("host_mb_per_server", "host memory per running server, MemAvailable (MB)", 1, 2),
              ("kernel_mb_per_server", "of it the kernel's: Slab, KernelStack, PageTables, Buffers (MB)", 1, 2),
              ("cgroup_mb_per_server", "its memory cgroup (MB)", 1, 2),
              ("pss_mb_per_server", "PSS of its processes (MB)", 1, 2),
              ("disk_mb_per_server", "disk use of an idle server (MB)", 1, 2),
              ("rps", "busybox HTTP requests/s (wrk over the bridge)", 1, 0),
              ("apache_rps", "Apache HTTP requests/s (access log on the server's disk)", 1, 0)]
    for key, label, scale, digits in labels:
        if key not in m["loop"]:
            continue
        loop, btrfs = m["loop"][key] * scale, m["btrfs"][key] * scale
        rows.append([label, report.fmt(loop, digits), report.fmt(btrfs, digits),
                     f"{btrfs / loop:.3f}" if loop else "—"])
    load = result["load"]
    p = result["profile"]
    return "\n".join([
        "## Storage backends: loop images against btrfs subvolumes with qgroups (`bench/storage.py`)",
        "",
        f"{result['when']}, commit {result['host']['git_commit']}, kernel {result['host']['kernel']}; "
        f"busybox servers, {p['servers']} per backend × {p['rounds']} rounds (start, memory), wrk "
        f"{p['wrk_rounds']} × {p['wrk_s']} s; load average {load['before']} before, {load['after']} after. "
        "Medians; btrfs ÷ loop in the last column.",
        "",
        common.md_table(["what", "loop", "btrfs", "btrfs ÷ loop"], rows),
        "",
        "Loop: an ext4 image per server (mkfs at create, a loop device and an ext4 mount per "
        "start, its journal on disk). btrfs: a subvolume per server on one shared btrfs with "
        "quotas enabled (one ioctl at create, nothing to mount at start, the qgroup limit as its "
        "disk size). Host memory is MemAvailable's drop ÷ servers, so the loop device's and the "
        "ext4 mount's kernel memory count, which no cgroup sees. docs/storage.md says what each "
        "backend does and does not.",
        "",
        "![storage](storage.png)",
    ])


def plot(result: dict) -> Path:
    plt = report.pyplot()
    keys = [("create_s", "create (ms)", 1000), ("start_to_200_s", "start → 200 (ms)", 1000),
            ("host_mb_per_server", "host MB / server", 1), ("kernel_mb_per_server", "kernel MB / server", 1),
            ("disk_mb_per_server", "disk MB / server", 1),
            ("rps", "busybox HTTP req/s", 1)]
    fig, axes = plt.subplots(1, len(keys), figsize=(15, 3.4))
    for ax, (key, title, scale) in zip(axes, keys, strict=True):
        values = [result["medians"][side][key] * scale for side in SIDES]
        samples = [[v * scale for v in result["samples"][side][key]] for side in SIDES]
        ax.bar(SIDES, values, color=["C0", "C1"],
               yerr=[[max(0.0, v - min(s)) for v, s in zip(values, samples, strict=True)],
                     [max(0.0, max(s) - v) for v, s in zip(values, samples, strict=True)]], capsize=3)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return report.save(fig, common.RESULTS_DIR / "storage.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    for name in PROFILES:
        size.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    parser.add_argument("--write", action="store_true", help="write results also after --smoke")
    parser.add_argument("--apache", action="store_true",
                        help="also Apache on each backend (its access log goes to the server's disk; "
                             "on with --full; +50 s if the Debian template is built)")
    args = parser.parse_args()
    profile = PROFILES[args.profile or "quick"]
    env = common.engine_env(ENV)
    from vservers.engine import Engine, EngineConfig, Limits, templates

    config = EngineConfig.from_env(env)
    common.install_signal_handlers()
    if CLIENT_NS in netns.names():
        netns.delete(CLIENT_NS)
    common.clean_earlier_run(Engine(config), log)
    result: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": common.host_info(),
                    "profile": profile, "load": {"before": round(os.getloadavg()[0], 2)}}
    samples: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}

    def add(side: str, key: str, value: float) -> None:
        samples[side].setdefault(key, []).append(value)

    page = make_page()
    engines = {"loop": Engine(config)}
    problems: list[str] = []
    try:
        pool = make_pool()
        engines["btrfs"] = Engine(dataclasses.replace(config, storage="btrfs", storage_pool=pool))
        templates.build(config, "busybox")
        names = {side: [f"st-{side}-{i}" for i in range(profile["servers"])] for side in SIDES}
        addresses = {}
        for i in range(profile["servers"]):
            for j, side in enumerate(SIDES if i % 2 == 0 else SIDES[::-1]):
                name = names[side][i]
                addresses[name] = common.address(2 * i + j, NETWORK)
                t0 = time.monotonic()
                engines[side].create(name, "busybox", [addresses[name]], Limits(disk_bytes=DISK_BYTES))
                add(side, "create_s", time.monotonic() - t0)
        for side in SIDES:
            for name in names[side]:
                add(side, "disk_mb_per_server", disk_use(engines[side], name) / MB)
        for r in range(profile["rounds"]):
            # Start times: the two backends' servers started alternately (the first side
            # swapped each round), so drift in the host's load falls on both alike.
            order = [(side, names[side][i]) for i in range(profile["servers"])
                     for side in (SIDES if (r + i) % 2 == 0 else SIDES[::-1])]
            for side, name in order:
                for key, value in start_all(engines[side], [name], addresses)[0].items():
                    add(side, key, value)
            engines["loop"].stop_many([name for _, name in order])
            # Memory: one backend's servers running at a time.
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                for key, value in memory_round(engines[side], names[side], addresses)[1].items():
                    add(side, key, value)
            log(f"round {r + 1}/{profile['rounds']}: " + ", ".join(
                f"{side} {samples[side]['host_mb_per_server'][-1]:.2f} MB/server, start→200 "
                f"{statistics.median(samples[side]['start_to_200_s']) * 1000:.1f} ms" for side in SIDES))
        # Once the idle servers have run: what a start and a stop left on their disks.
        for side in SIDES:
            for name in names[side]:
                add(side, "disk_mb_after_run", disk_use(engines[side], name) / MB)
        http_servers = {side: names[side][0] for side in SIDES}
        for side, name in http_servers.items():
            start_all(engines[side], [name], addresses)  # answers HTTP before the page is asked for
            common.guest_write(engines[side], name, f"/var/www/{PAGE_NAME}", page)
        netns.add(CLIENT_NS)
        netns.wire(CLIENT_NS, CLIENT_VETH, ENV["VSERVER_BRIDGE"], f"{NETWORK.network_address + 2}/{NETWORK.prefixlen}")
        must([*netns.exec_argv(CLIENT_NS), "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
              "net.ipv4.ip_local_port_range=1024 65535"])
        result["background_busy"] = wrk.background_busy()
        http = measure_http(engines, http_servers, addresses, profile, page)
        result["http"] = http
        for side in SIDES:
            samples[side]["rps"] = http[side]["rps_rounds"]
        engines["loop"].stop_many([n for side in SIDES for n in names[side]])
        if args.apache or args.profile == "full":
            result["apache"] = apache_http(engines, config, env, addresses, profile, page)
            for side in SIDES:
                samples[side]["apache_rps"] = result["apache"][side]["rps_rounds"]
        for i in range(profile["servers"]):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                t0 = time.monotonic()
                engines[side].delete(names[side][i])
                add(side, "delete_s", time.monotonic() - t0)
        result["load"]["after"] = round(os.getloadavg()[0], 2)
        result["samples"] = samples
        result["medians"] = {side: {key: med(values) for key, values in samples[side].items()} for side in SIDES}
    finally:
        problems += netns.delete(CLIENT_NS)
        problems += common.cleanup_installation(engines["loop"], log)
        problems += unmount_pool()
        if netns.link_exists(CLIENT_VETH):
            problems.append(f"link {CLIENT_VETH}")
        result["leftovers"] = problems
    text = markdown(result)
    report.show(result, text)
    if args.profile != "smoke" or args.write:
        plot(result)
        common.write_results("storage", result, text)
    if problems:
        log(f"left behind: {problems}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
