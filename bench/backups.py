"""Backup throughput: `Engine.backup_create` (tar | count | zstd | sha256 > file, the manifest,
fsync) against a plain `tar | zstd` of the same files in the same run, and the time to verify
and restore, and a backup of the running server (through a temporary snapshot), for a busybox
server and an Apache (Debian) server holding the same kind of data.

    .venv/bin/python bench/backups.py [--runs 3] [--data-mb 48]

Both sides mount the stopped server's image the same way (read-only, in a mount namespace of
their own) and run the same GNU tar with the same options and zstd at the same level; the
difference is what the engine adds: the pump that counts progress, the hash, the member
count, fsync and the manifest. MB/s is of the tar stream (the server's files as tar reads
them, uncompressed), MB = 10^6 bytes. Results: bench/results/backups.json and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import MB, log  # noqa: E402

ENV = {
    **common.BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-backups",
    "VSERVER_BRIDGE": "vsbenchbk0",
    "VSERVER_GATEWAY": "198.18.236.1/22",
    "VSERVER_UID_BASE": "1300000000",
}
NETWORK = common.network_of(ENV)
BACKUP_DIR = Path(ENV["VSERVER_ROOT"]) / "backups"
WORDS = ("server", "backup", "kernel", "namespace", "overlay", "tenant", "apache", "request", "archive",
         "restore", "cgroup", "memory", "address", "bridge", "template", "journal", "inode", "block")


def _data_script(data_mb: int) -> str:
    """Shell for the guest (busybox's or Debian's sh) that makes the data set in /srv/data:
    a third incompressible (random), the rest text-like logs, plus 2,000 small files."""
    return (
        "mkdir -p /srv/data/small && "
        f"head -c {data_mb // 3 * MB} /dev/urandom > /srv/data/random.bin && "
        "i=0; while [ $i -lt 2000 ]; do echo \"file $i of the small ones\" > /srv/data/small/f$i; "
        "i=$((i+1)); done"
    )


def _text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < size:
        line = (f"2026-12-06T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z "
                + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 14))) + f" id={rng.randrange(10**9)}\n")
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def prepare(engine, name: str, template: str, index: int, data_mb: int) -> None:
    engine.create(name, template, [common.address(index, NETWORK)], _limits(data_mb))
    engine.start(name)
    done = engine.run(name, ["/bin/sh", "-c", _data_script(data_mb)], timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"preparing {name}: {done.stderr}")
    common.guest_write(engine, name, "/srv/data/app.log", _text(data_mb * 2 // 3 * MB, index))
    if template == "debian":
        # A site made of the template's own documentation: copied up into the server's files.
        done = engine.run(name, ["cp", "-a", "/usr/share/doc", "/var/www/html/doc"], timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"copying the docs in {name}: {done.stderr}")
    engine.stop(name)


def _limits(data_mb: int):
    from vservers.engine import Limits

    return Limits(disk_bytes=max(512, data_mb * 4) * 2**20)


def plain_tar_zstd(engine, name: str, out: Path, durable: bool) -> float:
    """The baseline: the same mount, the same tar, zstd at the same level, straight into a file
    (then fsync'ed if DURABLE, as the engine does before it calls a backup made)."""
    from vservers.engine import backups

    server_dir = engine.config.server_dir(name)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    errors = os.memfd_create("errors", os.MFD_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    started = time.monotonic()
    pid = backups._spawn_mounted(  # noqa: SLF001 - the same private mount as the engine's
        server_dir / "disk.img", server_dir / "disk",
        ["tar", "--create", "--file=-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sparse",
         "--one-file-system", "--format=posix", backups.TOP],
        writable=False, stdin=null, stdout=write_fd, stderr=errors)
    os.close(write_fd)
    os.close(null)
    with open(out, "wb") as fh:
        zstd = subprocess.run(["zstd", "-q", backups.ZSTD_LEVEL, "-T0", "-c"], stdin=read_fd, stdout=fh)
        if durable:
            os.fsync(fh.fileno())
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    os.close(errors)
    if status != 0 or zstd.returncode != 0:
        raise RuntimeError(f"plain tar | zstd of {name} failed")
    return elapsed


def measure(engine, name: str, runs: int) -> dict:
    rows: dict[str, list[float]] = {"engine_s": [], "plain_s": [], "plain_fsync_s": [], "verify_s": [],
                                    "restore_s": [], "running_s": []}
    info = None
    for _ in range(runs):
        plain = BACKUP_DIR / "plain.tar.zst"
        rows["plain_s"].append(plain_tar_zstd(engine, name, plain, durable=False))
        plain.unlink()
        rows["plain_fsync_s"].append(plain_tar_zstd(engine, name, plain, durable=True))
        plain_size = plain.stat().st_size
        plain.unlink()
        t0 = time.monotonic()
        info = engine.backup_create(name)
        rows["engine_s"].append(time.monotonic() - t0)
        t0 = time.monotonic()
        engine.backup_verify(info.name)
        rows["verify_s"].append(time.monotonic() - t0)
        t0 = time.monotonic()
        engine.backup_restore(info.name, name)  # verify, unpack into a new image, swap, start
        rows["restore_s"].append(time.monotonic() - t0)
        engine.backup_delete(info.name)
        t0 = time.monotonic()
        running = engine.backup_create(name)  # the server runs: through a temporary snapshot
        rows["running_s"].append(time.monotonic() - t0)
        engine.backup_delete(running.name)
        engine.stop(name)
    assert info is not None
    stream = info.manifest["bytes"]
    med = {key: statistics.median(values) for key, values in rows.items()}
    return {
        "server": name,
        "files": info.manifest["files"],
        "tar_stream_mb": round(stream / MB, 1),
        "archive_mb": round(info.size_bytes / MB, 1),
        "plain_archive_mb": round(plain_size / MB, 1),
        "engine_mb_s": round(stream / MB / med["engine_s"], 1),
        "plain_mb_s": round(stream / MB / med["plain_s"], 1),
        "plain_fsync_mb_s": round(stream / MB / med["plain_fsync_s"], 1),
        "engine_vs_plain": round(med["plain_s"] / med["engine_s"], 3),
        "engine_vs_plain_fsync": round(med["plain_fsync_s"] / med["engine_s"], 3),
        "verify_mb_s": round(stream / MB / med["verify_s"], 1),
        "restore_s": round(med["restore_s"], 3),
        "running_mb_s": round(stream / MB / med["running_s"], 1),
        "runs": {key: [round(v, 3) for v in values] for key, values in rows.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-mb", type=int, default=48, help="the data set each server gets, in MB")
    args = parser.parse_args()
    env = common.engine_env(ENV)
    from bench.template_store import ensure_debian_in_store, link_debian
    from vservers.engine import Engine, EngineConfig, templates

    config = EngineConfig.from_env(env)
    engine = Engine(dataclasses.replace(config, backup_dir_setting=BACKUP_DIR))
    common.install_signal_handlers()
    common.clean_earlier_run(engine, log)
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": common.host_info(),
                     "data_mb": args.data_mb, "runs": args.runs, "zstd_level": "-3 -T0", "servers": []}
    names = {"bk-busybox": "busybox", "bk-apache": "debian"}
    try:
        templates.build(config, "busybox")
        version, _ = ensure_debian_in_store(env)
        link_debian(config, env, version)
        BACKUP_DIR.mkdir(parents=True, exist_ok=True)
        for index, (name, template) in enumerate(names.items()):
            log(f"preparing {name} ({template}, {args.data_mb} MB of data)")
            prepare(engine, name, template, index, args.data_mb)
            results["servers"].append({"template": template, **measure(engine, name, args.runs)})
    finally:
        results["leftovers"] = common.cleanup_installation(engine, log)
    common.RESULTS_DIR.mkdir(exist_ok=True)
    (common.RESULTS_DIR / "backups.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'server':<12} {'files':>6} {'stream MB':>9} {'archive MB':>10} {'engine MB/s':>11} "
          f"{'plain MB/s':>10} {'+fsync MB/s':>11} {'ratio':>6} {'ratio fs':>8} {'verify MB/s':>11} "
          f"{'restore s':>9} {'running MB/s':>12}")
    for row in results["servers"]:
        print(f"{row['server']:<12} {row['files']:>6} {row['tar_stream_mb']:>9} {row['archive_mb']:>10} "
              f"{row['engine_mb_s']:>11} {row['plain_mb_s']:>10} {row['plain_fsync_mb_s']:>11} "
              f"{row['engine_vs_plain']:>6} {row['engine_vs_plain_fsync']:>8} {row['verify_mb_s']:>11} "
              f"{row['restore_s']:>9} {row['running_mb_s']:>12}")
    if results["leftovers"]:
        log(f"left behind: {results['leftovers']}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
