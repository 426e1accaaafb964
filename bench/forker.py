"""A start from a big process, with and without the engine's fork server (issue 17), side by
side in one run.

    .venv/bin/python bench/forker.py --quick     # about a minute
    .venv/bin/python bench/forker.py --full      # more rounds
    .venv/bin/python bench/forker.py --smoke     # checks the benchmark; writes no results

The process loads what a panel worker loads (Django with the panel's settings, RQ, django-rq,
vservers.worker and vservers.jobs) before it starts anything, so each fork copies a process of
a worker's size. Two engines on one installation (its own root, bridge, range and uids), one
with `fork_server=True` (as vservers.jobs.get_engine makes it), one forking itself; one busybox
server each. Each round starts and stops both servers, the order swapped every round, and per
start takes: the time `Engine.start` took, the time until the server answered HTTP 200 (polled
every 0.5 ms), and the CPU the whole machine spent from the start's beginning until that
answer (/proc/stat's busy time, summed over the rounds and divided by them: its 10 ms ticks
are too coarse for one start). Medians throughout.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.common import log  # noqa: E402

ENV = {
    **common.BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-forker",
    "VSERVER_BRIDGE": "vsbenchfk0",
    "VSERVER_GATEWAY": "198.19.204.1/22",
    "VSERVER_UID_BASE": "1600000000",
}
NETWORK = common.network_of(ENV)
SIDES = ("fork server", "direct")
PROFILES = {"smoke": {"rounds": 2}, "quick": {"rounds": 30}, "full": {"rounds": 100}}
POLL = 0.0005


def load_the_worker() -> dict:
    """Import what a panel worker has loaded when it runs a job; returns its size then."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django

    django.setup()
    import django_rq  # noqa: F401
    import rq  # noqa: F401

    import vservers.jobs  # noqa: F401
    import vservers.worker  # noqa: F401

    return {"max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "modules": len(sys.modules)}


def busy_ticks() -> int:
    """The machine's busy time so far in USER_HZ ticks (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def one_start(engine, name: str, ip: str) -> dict:
    ticks = busy_ticks()
    t0 = time.monotonic()
    engine.start(name)
    started = time.monotonic()
    answered = common.wait_http(ip, started + 10, POLL)
    ticks = busy_ticks() - ticks
    if answered is None:
        raise RuntimeError(f"{name} ({ip}) did not answer HTTP within 10 s")
    engine.stop(name, timeout=0)
    return {"start_ms": (started - t0) * 1000, "to_http_ms": (answered - t0) * 1000, "busy_ticks": ticks}


def markdown(result: dict) -> str:
    m = result["medians"]
    fs, direct = SIDES
    rows = []
    for key, label in (("start_ms", "`Engine.start` (ms)"), ("to_http_ms", "start → first HTTP 200 (ms)"),
                       ("cpu_ms_per_start", "CPU of the whole machine per start, until that answer (ms)")):
        ratio = m[fs][key] / m[direct][key] if m[direct][key] else None
        rows.append([label, report.fmt(m[fs][key], 1), report.fmt(m[direct][key], 1), report.fmt(ratio, 3)])
    worker, host = result["worker"], result["host"]
    return "\n".join([
        "## A start from a worker-sized process, with the fork server and without (`bench/forker.py`)",
        "",
        f"{result['when']}, commit {host.get('git_commit', '?')}, kernel {host.get('kernel', '?')}; "
        f"{result['profile']['rounds']} rounds, each starting one busybox server per side, the order swapped each "
        f"round; the process had loaded a worker's modules first ({worker['modules']} modules, "
        f"{worker['max_rss_mb']} MB resident). Load average {result['load']['before']} before, "
        f"{result['load']['after']} after. Medians; CPU per start from /proc/stat over all rounds.",
        "",
        common.md_table(["what", "fork server", "direct fork", "fork server ÷ direct"], rows),
        "",
        "With the fork server the user namespace's helpers and the setup child are forked from a small process "
        "(vservers/engine/forker.py), and init from the setup child; without it, from this one, as the panel's "
        "worker did before.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    for name in PROFILES:
        size.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    args = parser.parse_args()
    profile = PROFILES[args.profile or "quick"]
    if os.geteuid() != 0:
        parser.error("must run as root")
    env = common.engine_env(ENV)
    worker = load_the_worker()
    from vservers.engine import Engine, EngineConfig, network, templates
    from vservers.engine.syscalls import PR_SET_CHILD_SUBREAPER, prctl

    prctl(PR_SET_CHILD_SUBREAPER, 1)  # the inits of stopped servers are reaped here, as in a worker
    config = EngineConfig.from_env(env)
    common.install_signal_handlers()
    engines = {SIDES[0]: Engine(config, fork_server=True), SIDES[1]: Engine(config)}
    common.clean_earlier_run(engines[SIDES[1]], log)
    result: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": common.host_info(),
                    "profile": profile, "worker": worker, "load": {"before": round(os.getloadavg()[0], 2)}}
    samples: dict[str, list[dict]] = {side: [] for side in SIDES}
    problems: list[str] = []
    try:
        templates.build(config, "busybox")
        network.ensure_bridge(config.bridge, config.gateway4, config.gateway6)  # for the route check
        servers = {}
        for i, side in enumerate(SIDES):
            name, addr = f"fk{i}", common.address(i, NETWORK)
            engines[side].create(name, "busybox", [addr])
            servers[side] = (name, addr.split("/")[0])
            common.check_route(servers[side][1], NETWORK, ENV["VSERVER_BRIDGE"])
        for side in SIDES:  # a warm-up start each: the fork server starts, caches fill
            one_start(engines[side], *servers[side])
        for r in range(profile["rounds"]):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                samples[side].append(one_start(engines[side], *servers[side]))
            if (r + 1) % 10 == 0 or r + 1 == profile["rounds"]:
                log(f"round {r + 1}/{profile['rounds']}: " + ", ".join(
                    f"{side} {statistics.median(s['to_http_ms'] for s in samples[side]):.1f} ms to HTTP"
                    for side in SIDES))
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        result["medians"] = {
            side: {"start_ms": statistics.median(s["start_ms"] for s in samples[side]),
                   "to_http_ms": statistics.median(s["to_http_ms"] for s in samples[side]),
                   "cpu_ms_per_start": sum(s["busy_ticks"] for s in samples[side]) * tick_ms / len(samples[side])}
            for side in SIDES}
        result["samples"] = samples
        result["load"]["after"] = round(os.getloadavg()[0], 2)
    finally:
        engines[SIDES[0]].close()
        problems += common.cleanup_installation(engines[SIDES[1]], log)
        result["leftovers"] = problems
    text = markdown(result)
    report.show(result, text)
    if args.profile != "smoke":
        common.write_results("forker", result, text)
    if problems:
        log(f"left behind: {problems}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
