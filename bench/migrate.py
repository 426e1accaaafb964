"""Cold migration time against image size: `Engine.migrate_send` + `migrate_receive` + start
until HTTP 200, beside a plain `rsync` of the same image over the same sshd in the same run.

    .venv/bin/python bench/migrate.py            # --quick: 64 and 256 MiB, under 2 minutes
    .venv/bin/python bench/migrate.py --full     # 64, 256 and 1024 MiB

Two installations on this machine (node a and node b: own roots, bridges, subnets and uid
ranges) and a private sshd on a loopback port whose authorized_keys holds node a's key as
`migrate.authorized_keys_line` writes it (rrsync -wo into b's incoming/): the path a real
migration takes, over loopback instead of a wire. For each size a busybox server on a gets
that much incompressible data (/dev/urandom), is stopped and moved to b, in two ways:

- shift: b's uid grid differs (as on one machine), so the receive copies the server's files
  into a fresh image through an idmapped mount;
- keep: b's grid has the server's range free (two machines with the same VSERVER_UID_BASE),
  so the receive renames the image.

The plain rsync copies the same disk.img into b's incoming/ through the same forced command,
with the engine's options (--sparse, zstd level 1 on the wire), with --sparse alone and with
--inplace; the allocated bytes on b are recorded: --inplace writes the holes as zeros.
Results: bench/results/migrate.json and a table in SUMMARY.md. MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import log  # noqa: E402

MIB = 2**20
NODE_A = {
    **common.BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-migrate-a",
    "VSERVER_BRIDGE": "vsbenchmga0",
    "VSERVER_GATEWAY": "198.18.244.1/23",
    "VSERVER_UID_BASE": "1100000000",
}
NODE_B = {
    **NODE_A,
    "VSERVER_ROOT": "/var/lib/vservers-bench-migrate-b",
    "VSERVER_BRIDGE": "vsbenchmgb0",
    "VSERVER_GATEWAY": "198.18.246.1/23",
    "VSERVER_UID_BASE": "1150000000",
}
# Room the server's own filesystem gets beyond its data (journal, template changes).
MARGIN_MIB = 192


def _time(fn) -> tuple[float, object]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


# The plain rsync's variants: what the engine does (--sparse), --inplace, and --sparse with
# zstd compression on the wire (the holes of an image are read and sent as zeros).
PLAIN = {"sparse": ["--sparse"], "inplace": ["--inplace"],
         "zstd": ["--sparse", "--compress", "--compress-choice=zstd", "--compress-level=1"]}


def _plain_rsync(key: Path, port: int, known_hosts: Path, image: Path, dest: str, mode: str) -> float:
    ssh = (f"ssh -F /dev/null -i {key} -p {port} -o BatchMode=yes -o StrictHostKeyChecking=yes "
           f"-o UserKnownHostsFile={known_hosts}")
    argv = ["rsync", "--archive", "--numeric-ids", *PLAIN[mode], "--mkpath", "-e", ssh, "--", str(image),
            f"root@127.0.0.1:{dest}/"]
    seconds, done = _time(lambda: subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL))
    assert isinstance(done, subprocess.CompletedProcess)
    if done.returncode != 0:
        raise RuntimeError(f"plain rsync --{mode}: {done.stderr.strip()}")
    return seconds


def measure(a, b_configs: dict, target, sshd: dict, size_mib: int, index: int) -> list[dict]:
    from vservers.engine import Engine, Limits

    rows = []
    for mode, b_config in b_configs.items():
        b = Engine(b_config)
        name = f"mg-{size_mib}-{mode}"
        ip_a = common.address(10 + index, common.network_of(NODE_A))
        ip_b = common.address(10 + index, common.network_of(NODE_B))
        a.create(name, "busybox", [ip_a], Limits(disk_bytes=(size_mib + MARGIN_MIB) * MIB))
        a.start(name)
        done = a.run(name, ["/bin/sh", "-c", f"head -c {size_mib * MIB} /dev/urandom > /root/data.bin && sync"],
                     timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"writing the data in {name}: {done.stderr.strip()}")
        a.stop(name)
        source_base = a.spec(name).uid_base
        image = a.config.server_dir(name) / "disk.img"
        allocated = image.stat().st_blocks * 512
        incoming = b.config.root / "incoming"

        plain = {}
        for how in PLAIN:
            dest = f"plain-{name}-{how}"
            plain[how] = _plain_rsync(target.identity_file, sshd["port"], sshd["known_hosts"], image, dest, how)
            plain[f"{how}_allocated_mib"] = round((incoming / dest / "disk.img").stat().st_blocks * 512 / MIB, 1)
            shutil.rmtree(incoming / dest)

        ship_template = not (b.config.templates_dir / "busybox").exists()
        started = time.monotonic()
        shipped = a.migrate_send(name, target, ship_template=ship_template)
        send_s = time.monotonic() - started
        started = time.monotonic()
        spec = b.migrate_receive(name, addresses=[ip_b])
        receive_s = time.monotonic() - started
        a.delete(name)  # the source's copy, as the panel's cleanup does after the move
        started = time.monotonic()
        b.start(name)
        common.check_route(ip_b, common.network_of(NODE_B), NODE_B["VSERVER_BRIDGE"])
        answered = common.wait_http(ip_b.split("/")[0], time.monotonic() + 30)
        if answered is None:
            raise RuntimeError(f"{name} did not answer HTTP at {ip_b} on node b")
        start_s = answered - started
        kept = spec.uid_base == source_base
        b.delete(name)
        row = {
            "size_mib": size_mib, "mode": mode, "image_mib": (size_mib + MARGIN_MIB),
            "allocated_mib": round(allocated / MIB, 1), "template_shipped": ship_template,
            "uid_range_kept": kept, "bytes_total": shipped.bytes_total,
            "send_s": round(send_s, 3), "receive_s": round(receive_s, 3), "start_to_http_s": round(start_s, 3),
            "total_s": round(send_s + receive_s + start_s, 3),
            "plain_rsync_sparse_s": round(plain["sparse"], 3), "plain_rsync_inplace_s": round(plain["inplace"], 3),
            "plain_rsync_zstd_s": round(plain["zstd"], 3),
            "plain_sparse_allocated_mib": plain["sparse_allocated_mib"],
            "plain_inplace_allocated_mib": plain["inplace_allocated_mib"],
        }
        # Like with like: the plain rsync with the engine's options (--sparse, zstd).
        row["send_over_plain"] = round(send_s / plain["zstd"], 2)
        log(f"{name}: send {send_s:.2f} s (plain rsync {plain['sparse']:.2f} s), receive {receive_s:.2f} s, "
            f"start to HTTP {start_s:.3f} s")
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="64, 256 and 1024 MiB (default: --quick, 64 and 256)")
    parser.add_argument("--quick", action="store_true", help="the default")
    parser.add_argument("--sizes", type=int, nargs="*", help="data sizes in MiB")
    args = parser.parse_args()
    sizes = args.sizes or ([64, 256, 1024] if args.full else [64, 256])
    common.engine_env(NODE_A)
    from tests.engine.helpers import private_sshd
    from vservers.engine import Engine, EngineConfig, migrate, templates

    config_a = EngineConfig.from_env(NODE_A)
    config_b = EngineConfig.from_env(NODE_B)
    a, b = Engine(config_a), Engine(config_b)
    common.install_signal_handlers()
    common.clean_earlier_run(a, log)
    common.clean_earlier_run(b, log)
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": common.host_info(),
                     "sizes_mib": sizes, "margin_mib": MARGIN_MIB, "rows": [],
                     "uncommitted": common.uncommitted(["vservers/engine", "bench/migrate.py"])}
    started = time.monotonic()
    try:
        templates.build(config_a, "busybox")
        migrate.ensure_node_key(config_b)
        key, public = migrate.ensure_node_key(config_a)
        with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp, \
                private_sshd(Path(tmp) / "sshd", migrate.authorized_keys_line(public, config_b) + "\n") as sshd:
            known = Path(tmp) / "known_hosts"
            known.write_text(f"[127.0.0.1]:{sshd['port']} {sshd['host_key']}\n")
            sshd["known_hosts"] = known
            target = migrate.MigrationTarget(host="127.0.0.1", port=sshd["port"], root=config_b.root,
                                             identity_file=key, known_host_key=str(sshd["host_key"]))
            # keep: node b's grid with node a's first ranges on it and free (b is empty).
            b_configs = {"shift": config_b,
                         "keep": EngineConfig.from_env({**NODE_B, "VSERVER_UID_BASE": NODE_A["VSERVER_UID_BASE"]})}
            for index, size in enumerate(sizes):
                results["rows"] += measure(a, b_configs, target, sshd, size, index)
    finally:
        results["leftovers"] = common.cleanup_installation(a, log) + common.cleanup_installation(b, log)
    results["seconds"] = round(time.monotonic() - started, 1)
    header = ["data MiB", "image MiB", "receive", "send s", "plain rsync s (same options)", "send/plain",
              "plain --sparse, no zstd s", "receive s", "start→HTTP s", "total s",
              "alloc. on b: --sparse / --inplace MiB"]
    table = [[r["size_mib"], r["image_mib"], r["mode"], r["send_s"], r["plain_rsync_zstd_s"], r["send_over_plain"],
              r["plain_rsync_sparse_s"],
              r["receive_s"], r["start_to_http_s"], r["total_s"],
              f"{r['plain_sparse_allocated_mib']} / {r['plain_inplace_allocated_mib']}"] for r in results["rows"]]
    ratios = [r["send_over_plain"] for r in results["rows"]]
    markdown = (
        "## Cold migration (bench/migrate.py)\n\n"
        f"{results['when']}, {len(sizes)} sizes, busybox server with incompressible data, two installations on "
        "this machine, rsync over ssh to a loopback sshd through rrsync -wo. send = one rsync (image and "
        "config; the template too on the first row); receive: shift = files copied through an idmapped "
        "mount into a new uid range, keep = image renamed. "
        f"Median send/plain-rsync ratio {statistics.median(ratios):.2f}.\n\n"
        + common.md_table(header, table) + "\n"
    )
    common.write_results("migrate", results, markdown)
    print(markdown)
    if results["leftovers"]:
        log(f"LEFTOVERS: {results['leftovers']}")
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(common.Interrupted):
        sys.exit(main())
    sys.exit(130)
