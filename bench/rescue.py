"""Reinstall and rescue mode: what they cost against a plain start, on busybox servers.

    sudo .venv/bin/python bench/rescue.py [--rounds 10]

Per round, on one server with 256 MiB of disk: a normal start (until init runs, then until
HTTP answers), a rescue start (the same two), leaving rescue, and a reinstall of the running
server (stop, fresh image, start). Also the memory the server's cgroup holds once HTTP answers,
in each mode (the rescue system's tmpfs layer is charged there). Its own installation (root,
bridge, 198.19.200.0/22), removed at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BENCH_ENV,
    check_route,
    clean_earlier_run,
    cleanup_installation,
    engine_env,
    install_signal_handlers,
    log,
    md_table,
    ms,
    summary,
    wait_http,
    write_results,
)

RESCUE_ENV = {
    **BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-rescue",
    "VSERVER_BRIDGE": "vsbenchrs0",
    "VSERVER_GATEWAY": "198.19.200.1/22",
    "VSERVER_UID_BASE": "1700000000",
}
NETWORK = ipaddress.ip_network("198.19.200.0/22")
ADDRESS = "198.19.200.10"


def timed(action) -> tuple[float, float]:
    """ACTION's time until it returned and until HTTP answered, in seconds."""
    started = time.perf_counter()
    action()
    returned = time.perf_counter()
    answered = wait_http(ADDRESS, time.monotonic() + 30)
    if answered is None:
        raise RuntimeError("the server did not answer HTTP within 30 s")
    return returned - started, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    engine_env(RESCUE_ENV)
    from vservers.engine import Engine, Limits, templates
    from vservers.engine.config import EngineConfig

    engine = Engine(EngineConfig.from_env(RESCUE_ENV))
    install_signal_handlers()
    clean_earlier_run(engine, log)
    figures: dict[str, list[float]] = {key: [] for key in (
        "start", "start_http", "rescue", "rescue_http", "leave", "leave_http", "reinstall", "reinstall_http",
        "memory_normal", "memory_rescue")}
    try:
        templates.build(engine.config, "busybox")
        engine.create("bench-rs", "busybox", [f"{ADDRESS}/22"], Limits(memory_bytes=64 * 2**20, disk_bytes=256 * 2**20))
        engine.start("bench-rs")
        check_route(ADDRESS, NETWORK, RESCUE_ENV["VSERVER_BRIDGE"])
        engine.stop("bench-rs")
        for round_ in range(args.rounds):
            for key, action in (("start", lambda: engine.start("bench-rs")),
                                ("rescue", lambda: engine.rescue_start("bench-rs")),
                                ("leave", lambda: engine.rescue_leave("bench-rs")),
                                ("reinstall", lambda: engine.reinstall("bench-rs"))):
                if key == "rescue":
                    figures["memory_normal"].append(engine.cgroups.usage("bench-rs").memory_bytes)
                returned, answered = timed(action)
                figures[key].append(returned)
                figures[f"{key}_http"].append(answered)
                if key == "rescue":
                    figures["memory_rescue"].append(engine.cgroups.usage("bench-rs").memory_bytes)
            engine.stop("bench-rs")
            log(f"round {round_ + 1} of {args.rounds} done")
    finally:
        left = cleanup_installation(engine, log)
        if left:
            log(f"left behind: {left}")
    rows = []
    for key, label in (("start", "normal start"), ("rescue", "rescue start (from running)"),
                       ("leave", "leave rescue"), ("reinstall", "reinstall (from running)")):
        done, http = summary([ms(v) for v in figures[key]]), summary([ms(v) for v in figures[f"{key}_http"]])
        rows.append([label, f"{done['median']:.1f}", f"{http['median']:.1f}", f"{http['max']:.1f}"])
    memory = {mode: summary([v / 2**20 for v in figures[f"memory_{mode}"]])["median"] for mode in ("normal", "rescue")}
    markdown = ("## Reinstall and rescue (bench/rescue.py)\n\n"
                f"Medians of {args.rounds} rounds on one busybox server (256 MiB disk): until the engine call returned "
                "(init runs) and until HTTP answered.\n\n"
                + md_table(["operation", "returned (ms, median)", "HTTP answers (ms, median)", "HTTP (ms, max)"], rows)
                + f"\n\ncgroup memory once HTTP answered (median): normal {memory['normal']:.2f} MiB, "
                  f"rescue {memory['rescue']:.2f} MiB\n")
    path = write_results("rescue", {"rounds": args.rounds, "figures": figures, "memory_mib": memory}, markdown)
    print(markdown)
    log(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
