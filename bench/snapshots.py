"""Snapshot and restore of a running busybox and a running Apache (Debian) server: how long
the server is frozen, how long the copy and the whole snapshot take, how long a restore
(stop, swap, start) takes until the server answers HTTP again, and the space a snapshot takes
against its image's apparent size; side by side, in the same run, a plain
`cp --sparse=always` of the same image.

Each server is measured idle and again with DATA MiB of random data written inside it.

    .venv/bin/python bench/snapshots.py [--reps 5] [--data 64] [--no-apache]

Writes bench/results/snapshots.json and its section of bench/results/SUMMARY.md. Uses an
installation of its own (root, bridge, addresses, uids) and removes it at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.template_store import ensure_debian_in_store, link_debian  # noqa: E402

SNAPSHOTS_ENV = {
    **common.BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-snapshots",
    "VSERVER_BRIDGE": "vsbenchsn0",
    "VSERVER_GATEWAY": "198.18.232.1/21",
    "VSERVER_UID_BASE": "1230000000",
}
NETWORK = ipaddress.ip_network("198.18.232.0/21")
MIB = 2**20


def wait_answer(ip: str, timeout: float = 60.0) -> float:
    common.check_route(ip, NETWORK, SNAPSHOTS_ENV["VSERVER_BRIDGE"])
    waited = common.wait_http(ip, time.monotonic() + timeout)
    if waited is None:
        raise RuntimeError(f"{ip} did not answer HTTP within {timeout:.0f} s")
    return waited


def plain_copy(image: Path, target: Path) -> tuple[float, int]:
    """`cp --sparse=always` of IMAGE (what a snapshot would be without the freeze): seconds, bytes
    allocated."""
    target.unlink(missing_ok=True)
    started = time.monotonic()
    common.must(["cp", "--sparse=always", str(image), str(target)])
    seconds = time.monotonic() - started
    size = os.stat(target).st_blocks * 512
    target.unlink()
    return seconds, size


def measure(engine, name: str, ip: str, reps: int) -> dict:
    image = engine.config.server_dir(name) / "disk.img"
    rows: dict[str, list[float]] = {k: [] for k in (
        "freeze_ms", "copy_ms", "snapshot_ms", "restore_ms", "restore_to_http_ms", "plain_cp_ms")}
    sizes = {}
    for rep in range(reps):
        snap = f"b{rep}"
        started = time.monotonic()
        info = engine.snapshot_create(name, snap)
        rows["snapshot_ms"].append(common.ms(time.monotonic() - started))
        rows["freeze_ms"].append(common.ms(info.freeze_seconds or 0.0))
        rows["copy_ms"].append(common.ms(info.copy_seconds))
        sizes = {"snapshot_bytes": info.size_bytes, "apparent_bytes": info.apparent_bytes,
                 "image_bytes": os.stat(image).st_blocks * 512}
        seconds, plain_size = plain_copy(image, image.with_name("bench-plain-copy.img"))
        rows["plain_cp_ms"].append(common.ms(seconds))
        sizes["plain_cp_bytes"] = plain_size
        started = time.monotonic()
        engine.snapshot_restore(name, snap)
        rows["restore_ms"].append(common.ms(time.monotonic() - started))
        wait_answer(ip)
        rows["restore_to_http_ms"].append(common.ms(time.monotonic() - started))
        engine.snapshot_delete(name, snap)
    return {**{k: common.summary(v) for k, v in rows.items()}, **sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--data", type=int, default=64, help="MiB of random data written for the second round")
    parser.add_argument("--no-apache", action="store_true", help="busybox only (no Debian template)")
    args = parser.parse_args()

    env = common.engine_env(SNAPSHOTS_ENV)
    from vservers.engine import Engine, EngineConfig, templates

    config = EngineConfig.from_env(env)
    engine = Engine(config)
    common.install_signal_handlers()
    common.clean_earlier_run(engine, common.log)
    result: dict = {"host": common.host_info(), "reps": args.reps, "data_mib": args.data, "servers": {}}
    try:
        templates.build(config, "busybox")
        kinds = [("busybox", "busybox", 1)]
        if not args.no_apache:
            version, built_s = ensure_debian_in_store(env)
            link_debian(config, env, version)
            result["debian_template"] = {"version": version, "built_s": round(built_s, 1)}
            kinds.append(("apache", "debian", 2))
        for label, template, index in kinds:
            name = f"sn-{label}"
            ip = common.address(index, NETWORK)
            engine.create(name, template, [ip], None)
            engine.start(name)
            bare = ip.split("/")[0]
            wait_answer(bare)
            common.log(f"{label}: idle")
            result["servers"][f"{label} idle"] = measure(engine, name, bare, args.reps)
            common.guest_write(engine, name, "/root/bench-data", os.urandom(args.data * MIB))
            common.log(f"{label}: with {args.data} MiB of data")
            result["servers"][f"{label} +{args.data} MiB"] = measure(engine, name, bare, args.reps)
    finally:
        left = common.cleanup_installation(engine, common.log)
        if left:
            common.log(f"left behind: {left}")
    rows = []
    for label, r in result["servers"].items():
        rows.append([
            label,
            f"{r['freeze_ms']['median']:.0f}",
            f"{r['copy_ms']['median']:.0f}",
            f"{r['snapshot_ms']['median']:.0f}",
            f"{r['plain_cp_ms']['median']:.0f}",
            f"{r['restore_ms']['median']:.0f}",
            f"{r['restore_to_http_ms']['median']:.0f}",
            f"{r['snapshot_bytes'] / MIB:.1f}",
            f"{r['plain_cp_bytes'] / MIB:.1f}",
            f"{r['apparent_bytes'] / MIB:.0f}",
        ])
    table = common.md_table(
        ["server", "frozen ms", "copy ms", "snapshot ms", "plain cp ms", "restore ms", "restore→HTTP ms",
         "snapshot MiB", "plain cp MiB", "disk MiB (apparent)"], rows)
    markdown = (
        "## Snapshots (bench/snapshots.py)\n\n"
        f"Medians of {args.reps} runs on a running server; frozen: its processes (cgroup freezer) and its "
        "ext4 (FIFREEZE) while the image is copied; plain cp: `cp --sparse=always` of the same image in "
        "the same run, without a freeze. Restore: stop, swap, start; then until HTTP answers.\n\n"
        + table + "\n"
    )
    path = common.write_results("snapshots", result, markdown)
    print(markdown)
    common.log(f"results: {path}")


if __name__ == "__main__":
    main()
