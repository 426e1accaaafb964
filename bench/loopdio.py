"""Direct I/O on the loop device (issue 17): the same servers with their disk attached with
LO_FLAGS_DIRECT_IO and buffered, side by side in one run.

    .venv/bin/python bench/loopdio.py --quick     # about 4 minutes (+50 s if the Debian template is rebuilt)
    .venv/bin/python bench/loopdio.py --full      # more rounds, longer wrk runs
    .venv/bin/python bench/loopdio.py --smoke     # 2 rounds of 1 s: checks the benchmark; writes no results
    .venv/bin/python bench/loopdio.py --no-apache # busybox only

Two servers per template (busybox; Apache from bench/template_store.py's Debian store), one
started by an engine with `loop_direct_io` on ("dio"), one with it off ("buffered"); every other
setting the same. In rounds whose order is rotated each time, each server is restarted (the
start and start to first HTTP 200 timed; its ext4's own cache goes with the unmount), the pages
of its image file dropped from the host's cache, then measured:

- a cold read of a 64 MB file on its own disk (dd bs=1M in the guest): the host's Cached
  (/proc/meminfo), the server's memory cgroup's page cache (memory.stat cache / file) and the
  image file's pages in the host's cache (fincore's count, via mincore) before and after: with
  direct I/O the data should be cached once (the guest's ext4), buffered twice;
- fsync'ed appends of 120-byte lines (an access log that syncs): a host process appends to a
  file of the server's overlay through /proc/INIT/root, the guest's own path (overlay, ext4,
  loop device), and fsyncs after each line;
- a 64 MB write in 1 MB blocks ended by fsync (dd conv=fsync in the guest), its MB/s.

Then HTTP: wrk from a client network namespace on the bridge (as bench/overhead.py), a 4 KB
page, busybox httpd with 8 connections and Apache (which writes an access log line per request
into its overlay) with 32; servers pinned to CPU 0, wrk to CPU 1; rounds rotated. Then each
server is restarted by the other engine and HTTP measured again: a difference that follows the
server rather than the setting is not direct I/O's.
Medians throughout. The load average and the CPUs' busy share from other work are stored:
two cores, and other people's work moves every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, netns, report, wrk  # noqa: E402
from bench.common import MB, log, must  # noqa: E402

ENV = {
    **common.BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-loopdio",
    "VSERVER_BRIDGE": "vsbenchld0",
    "VSERVER_GATEWAY": "198.18.228.1/22",
    "VSERVER_UID_BASE": "1400000000",
}
NETWORK = common.network_of(ENV)
CLIENT_NS = "vsbenchld-client"
CLIENT_VETH = "vsbenchldc0"
SIDES = ("dio", "buffered")
PAGE_NAME = "bench.html"
PAGE_BYTES = 4096
CONNS = {"busybox": 8, "apache": 32}
WEB_ROOT = {"busybox": "/var/www", "apache": "/var/www/html"}
BIG_MB = 64
LINE = b"198.18.228.2 - - [06/Dec/2026:23:00:00 +0000] \"GET /bench.html HTTP/1.1\" 200 4096 \"-\" \"wrk\"\n"
PROFILES = {
    "smoke": {"rounds": 2, "wrk_s": 1, "wrk_rounds": 2, "appends": 50},
    "quick": {"rounds": 5, "wrk_s": 3, "wrk_rounds": 5, "appends": 300},
    "full": {"rounds": 11, "wrk_s": 10, "wrk_rounds": 9, "appends": 1000},
}


@dataclasses.dataclass
class Server:
    template: str  # "busybox" or "apache"
    side: str  # "dio" or "buffered"
    name: str
    address: str  # with its prefix length

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def make_page() -> bytes:
    line = b"<p>The same page on both servers.</p>\n"
    body = b"<!DOCTYPE html>\n<html><body>\n" + line * ((PAGE_BYTES - 64) // len(line))
    return body + b" " * (PAGE_BYTES - len(body) - len(b"</body></html>\n")) + b"</body></html>\n"


def check_dio(engine, server: Server) -> None:
    from vservers.engine.loopdev import direct_io_on

    device = engine._runtime(server.name).loop_device  # noqa: SLF001 - no public accessor
    if direct_io_on(device) != (server.side == "dio"):
        raise RuntimeError(f"{server.name} on {device}: direct I/O is not {server.side == 'dio'}")


def memory_stat(engine, name: str) -> int:
    """Page cache charged to the server's memory cgroup (v1 'cache', v2 'file'), bytes."""
    for path in engine.cgroups.paths(name):
        stat = path / "memory.stat"
        if stat.is_file():
            fields = dict(line.split() for line in stat.read_text().splitlines())
            return int(fields.get("cache", fields.get("file", 0)))
    return 0


def cached_pages(path: Path) -> int:
    """Bytes of PATH in the host's page cache (util-linux fincore)."""
    out = must(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)])
    return int(out.split()[0])


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def dd_mb_s(output: str) -> float:
    """busybox/GNU dd's own rate: bytes over seconds from its last line."""
    m = re.search(r"(\d+) bytes .*?copied, ([\d.]+) s", output)
    if not m:
        raise RuntimeError(f"dd printed no rate: {output!r}")
    return int(m.group(1)) / MB / float(m.group(2))


def guest(engine, name: str, script: str, timeout: float = 120) -> str:
    done = engine.run(name, ["/bin/sh", "-c", script], timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {script!r} failed: {done.stderr.strip()}")
    return done.stderr + done.stdout


def appends(engine, name: str, count: int) -> dict[str, float]:
    """COUNT lines appended to /srv/append.log, each fsync'ed, through the guest's own mount
    tree (the host process opens it via /proc/INIT/root: overlay, ext4, loop device): the
    rate and the p50/p99 time of one write + fsync."""
    init = engine.status(name, with_addresses=False).init_pid
    fd = os.open(f"/proc/{init}/root/srv/append.log", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    times = []
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, LINE)
            os.fsync(fd)
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    finally:
        os.close(fd)
    return {"appends_per_s": count / total, "append_p50_ms": common.percentile(times, 50) * 1000,
            "append_p99_ms": common.percentile(times, 99) * 1000}


def one_round(engines, server: Server, image: Path, count: int) -> dict:
    engine = engines[server.side]
    engine.stop(server.name)
    t0 = time.monotonic()
    engine.start(server.name)
    started = time.monotonic()
    common.check_route(server.ip, NETWORK, ENV["VSERVER_BRIDGE"])
    answered = common.wait_http(server.ip, time.monotonic() + 60)
    if answered is None:
        raise RuntimeError(f"{server.name} does not answer HTTP")
    check_dio(engine, server)
    evict(image)
    before = {"host_cached": common.meminfo("Cached"), "cgroup_cache": memory_stat(engine, server.name),
              "image_cached": cached_pages(image)}
    read = guest(engine, server.name, "dd if=/srv/big of=/dev/null bs=1M 2>&1")
    after = {"host_cached": common.meminfo("Cached"), "cgroup_cache": memory_stat(engine, server.name),
             "image_cached": cached_pages(image)}
    row = {
        "start_s": started - t0,
        "start_to_200_s": answered - t0,
        "cold_read_mb_s": dd_mb_s(read),
        **{f"{key}_delta_mb": (after[key] - before[key]) / MB for key in before},
        **appends(engine, server.name, count),
        "fsync_write_mb_s": dd_mb_s(guest(engine, server.name,
                                          f"dd if=/dev/zero of=/srv/bulk bs=1M count={BIG_MB} conv=fsync 2>&1; "
                                          "rm -f /srv/bulk")),
    }
    return row


def prepare(engines, server: Server, page: bytes) -> None:
    from vservers.engine import Limits

    engine = engines[server.side]
    template = "debian" if server.template == "apache" else "busybox"
    engine.create(server.name, template, [server.address], Limits(disk_bytes=512 * 2**20))
    engine.start(server.name)
    common.guest_write(engine, server.name, f"{WEB_ROOT[server.template]}/{PAGE_NAME}", page)
    guest(engine, server.name, f"mkdir -p /srv && dd if=/dev/zero of=/srv/big bs=1M count={BIG_MB} conv=fsync 2>&1; "
                               ": > /srv/append.log; sync")


def loop_io(engines, server: Server) -> dict[str, int]:
    """Reads, writes and bytes written of the server's loop device so far (its sysfs stat)."""
    device = Path(engines[server.side]._runtime(server.name).loop_device).name  # noqa: SLF001
    fields = [int(x) for x in Path(f"/sys/block/{device}/stat").read_text().split()]
    return {"reads": fields[0], "writes": fields[4], "write_bytes": fields[6] * 512}


def swap(engines, server: Server) -> Server:
    """SERVER restarted by the other engine: buffered if it was dio, and the other way round."""
    other = SIDES[1 - SIDES.index(server.side)]
    engines[server.side].stop(server.name)
    engines[other].start(server.name)
    swapped = dataclasses.replace(server, side=other)
    check_dio(engines[other], swapped)
    if common.wait_http(server.ip, time.monotonic() + 60) is None:
        raise RuntimeError(f"{server.name} does not answer HTTP")
    return swapped


def measure_http(engines, servers: list[Server], profile: dict, page: bytes, phase: str) -> dict:
    from bench.hostside import pin

    out = {}
    client = ["ip", "netns", "exec", CLIENT_NS, "taskset", "-c", str(wrk.CLIENT_CPU), "wrk"]
    for template in sorted({s.template for s in servers}):
        pair = [s for s in servers if s.template == template]
        for s in pair:
            common.check_route(s.ip, NETWORK, ENV["VSERVER_BRIDGE"])
            netns.check_route(CLIENT_NS, s.ip, NETWORK)
            status, body = common.http_get(s.ip, path=f"/{PAGE_NAME}")
            if status != 200 or body != page:
                raise RuntimeError(f"{s.name} does not serve the page ({status})")
            pin(engines[s.side].cgroups.procs(s.name), wrk.SERVER_CPU)
        targets = [wrk.Target(s.side, client + wrk.wrk_args(f"http://{s.ip}:80/{PAGE_NAME}", profile["wrk_s"],
                                                                CONNS[template]),
                              server_cpu=(lambda e=engines[s.side], n=s.name:
                                          e.status(n, with_addresses=False).usage.cpu_seconds))
                   for s in pair]
        io_before = {s.side: loop_io(engines, s) for s in pair}
        result = wrk.compare(targets, profile["wrk_rounds"], 1, f"{template} http{phase}")
        for s in pair:
            # What reached the disk under the load (the access log's writeback), per request
            # of the measured runs (the warm-up's few requests count in the I/O too).
            side = result[s.side]
            samples = side.pop("samples")
            side["rps_rounds"] = [sample["rps"] for sample in samples]  # in round order
            requests = sum(sample.get("requests", 0) for sample in samples)
            after = loop_io(engines, s)
            side["loop_io"] = {key: after[key] - io_before[s.side][key] for key in after}
            side["loop_write_bytes_per_request"] = round(side["loop_io"]["write_bytes"] / max(1, requests), 2)
        out[template] = result
    return out


def summarise(rounds: dict) -> dict:
    """Medians per template and side of every figure of the rounds."""
    out: dict = {}
    for (template, side), rows in rounds.items():
        out.setdefault(template, {})[side] = {key: round(statistics.median(r[key] for r in rows), 3)
                                              for key in rows[0]}
    return out


def round_ratio(http: dict) -> float:
    """Median over the rounds of dio's requests/s ÷ buffered's in the same round."""
    return statistics.median(d / b for d, b in zip(http["dio"]["rps_rounds"], http["buffered"]["rps_rounds"],
                                                      strict=True))


def http_effect(result: dict, template: str) -> float | None:
    """Direct I/O's effect on requests/s with the servers' own difference taken out: the first
    phase's ratio is effect × s (s: how much faster the server that started with dio is
    anyway), the swapped phase's effect ÷ s, so their geometric mean is the effect alone."""
    try:
        first, swapped = result["http"][template], result["http_swapped"][template]
        return (round_ratio(first) * round_ratio(swapped)) ** 0.5
    except (KeyError, ValueError):
        return None


def markdown(result: dict) -> str:
    med = result["medians"]
    rows = []
    labels = [("start_s", "start (s)", 3), ("start_to_200_s", "start → first 200 (s)", 3),
              ("cold_read_mb_s", f"cold read of {BIG_MB} MB (MB/s)", 0),
              ("host_cached_delta_mb", "host Cached growth by that read (MB)", 1),
              ("image_cached_delta_mb", "of it the image file's pages (MB)", 1),
              ("cgroup_cache_delta_mb", "server's cgroup page cache growth (MB)", 1),
              ("appends_per_s", "fsync'ed 120-byte appends/s", 0),
              ("append_p99_ms", "p99 of one append + fsync (ms)", 2),
              ("fsync_write_mb_s", f"{BIG_MB} MB write + fsync (MB/s)", 0)]
    for template in med:
        for key, label, digits in labels:
            dio, buf = med[template]["dio"][key], med[template]["buffered"][key]
            ratio = f"{dio / buf:.3f}" if buf else "—"
            rows.append([template, label, report.fmt(dio, digits), report.fmt(buf, digits), ratio])
        for key, label in (("http", "HTTP requests/s (wrk over the bridge)"),
                           ("http_swapped", "the same, each server started by the other engine")):
            if template in result.get(key, {}):
                dio, buf = (result[key][template][side]["rps"]["median"] for side in SIDES)
                rows.append([template, label, report.fmt(dio), report.fmt(buf), f"{dio / buf:.3f}"])
        effect = http_effect(result, template)
        if effect is not None:
            rows.append([template, "HTTP: direct I/O's own effect, √(round ratio × swapped round ratio)", "", "",
                         f"{effect:.3f}"])
        if template in result.get("http", {}):
            dio, buf = (result["http"][template][side]["loop_write_bytes_per_request"] for side in SIDES)
            rows.append([template, "bytes written to the loop device per HTTP request", report.fmt(dio, 2),
                         report.fmt(buf, 2), "—"])
    load = result["load"]
    return "\n".join([
        "## Direct I/O on the loop device (`bench/loopdio.py`)",
        "",
        f"{result['when']}, commit {result['host']['git_commit']}, kernel {result['host']['kernel']}; "
        f"{result['profile']['rounds']} rounds per figure, wrk {result['profile']['wrk_rounds']} × "
        f"{result['profile']['wrk_s']} s; load average {load['before']} before, {load['after']} after. "
        "Medians; dio ÷ buffered in the last column.",
        "",
        common.md_table(["template", "what", "dio", "buffered", "dio ÷ buffered"], rows),
        "",
        "Buffered, the loop device keeps a second copy of what the guest reads, as pages of the "
        "image file, and (cgroup v1) charges it to no server: the server's own cgroup grows the "
        "same either way. HTTP serves from the guest's cache and writes at most an access-log "
        "line's bytes per request to the disk. The two HTTP rows each mix direct I/O's effect "
        "with the two servers' own difference (which the swap turns round); the third row takes "
        "that out (the geometric mean of the two phases' median per-round ratios).",
        "",
        "![loop dio](loopdio.png)",
    ])


def plot(result: dict) -> Path:
    """Medians per server and side, whiskers from the lowest to the highest round (HTTP: min-p95)."""
    plt = report.pyplot()
    keys = [("appends_per_s", "fsync'ed appends/s"), ("fsync_write_mb_s", "write+fsync MB/s"),
            ("cold_read_mb_s", "cold read MB/s"), ("host_cached_delta_mb", "host cache growth MB")]
    med, rounds = result["medians"], result["rounds"]
    fig, axes = plt.subplots(1, len(keys) + 2, figsize=(18, 3.6))

    def bars(ax, title, labels, values, low, high):
        ax.bar(labels, values, color=["C0", "C1"] * (len(labels) // 2),
               yerr=[[v - lo for v, lo in zip(values, low, strict=True)],
                     [hi - v for v, hi in zip(values, high, strict=True)]], capsize=3)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)

    for ax, (key, title) in zip(axes, keys, strict=False):
        pairs = [(t, s) for t in med for s in SIDES]
        samples = [[r[key] for r in rounds[f"{t}/{s}"]] for t, s in pairs]
        bars(ax, title, [f"{t}\n{s}" for t, s in pairs], [med[t][s][key] for t, s in pairs],
             [min(x) for x in samples], [max(x) for x in samples])
    for ax, phase, title in ((axes[-2], "http", "HTTP requests/s"),
                             (axes[-1], "http_swapped", "HTTP requests/s, swapped")):
        http = result[phase]
        pairs = [(t, s) for t in http for s in SIDES]
        rps = [http[t][s]["rps"] for t, s in pairs]
        bars(ax, title, [f"{t}\n{s}" for t, s in pairs], [r["median"] for r in rps], [r["min"] for r in rps],
             [r["p95"] for r in rps])
    fig.tight_layout()
    return report.save(fig, common.RESULTS_DIR / "loopdio.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    for name in PROFILES:
        size.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    parser.add_argument("--no-apache", action="store_true")
    parser.add_argument("--write", action="store_true", help="write results also after --smoke")
    args = parser.parse_args()
    profile = PROFILES[args.profile or "quick"]
    env = common.engine_env(ENV)
    from vservers.engine import Engine, EngineConfig, templates

    config = EngineConfig.from_env(env)
    engines = {"dio": Engine(dataclasses.replace(config, loop_direct_io=True)),
               "buffered": Engine(dataclasses.replace(config, loop_direct_io=False))}
    common.install_signal_handlers()
    if CLIENT_NS in netns.names():
        netns.delete(CLIENT_NS)
    common.clean_earlier_run(engines["dio"], log)
    result: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": common.host_info(),
                    "profile": profile, "big_file_mb": BIG_MB, "append_bytes": len(LINE),
                    "load": {"before": round(os.getloadavg()[0], 2)}}
    page = make_page()
    servers: list[Server] = []
    rounds: dict[tuple[str, str], list[dict]] = {}
    try:
        templates.build(config, "busybox")
        kinds = ["busybox"]
        if not args.no_apache:
            from bench.template_store import ensure_debian_in_store, link_debian

            version, built = ensure_debian_in_store(env)
            link_debian(config, env, version)
            result["debian_template_build_s"] = round(built, 1)
            kinds.append("apache")
        index = 0
        for kind in kinds:
            for side in SIDES:
                servers.append(Server(kind, side, f"ld-{kind}-{side[:3]}", common.address(index, NETWORK)))
                index += 1
        for server in servers:
            log(f"preparing {server.name}")
            prepare(engines, server, page)
        netns.add(CLIENT_NS)
        netns.wire(CLIENT_NS, CLIENT_VETH, ENV["VSERVER_BRIDGE"], f"{NETWORK.network_address + 2}/{NETWORK.prefixlen}")
        must([*netns.exec_argv(CLIENT_NS), "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
              "net.ipv4.ip_local_port_range=1024 65535"])
        result["background_busy"] = wrk.background_busy()
        for i in range(profile["rounds"]):
            for kind in kinds:
                pair = [s for s in servers if s.template == kind]
                for server in pair[i % 2:] + pair[: i % 2]:
                    image = config.server_dir(server.name) / "disk.img"
                    row = one_round(engines, server, image, profile["appends"])
                    rounds.setdefault((kind, server.side), []).append(row)
            log(f"round {i + 1}/{profile['rounds']}: " + ", ".join(
                f"{k}/{s} {rows[-1]['appends_per_s']:.0f} appends/s" for (k, s), rows in rounds.items()))
        result["medians"] = summarise(rounds)
        result["rounds"] = {f"{k}/{s}": rows for (k, s), rows in rounds.items()}
        result["http"] = measure_http(engines, servers, profile, page, "")
        # The control: the same servers again, each restarted by the other engine. A difference
        # that follows the server and not the setting is not direct I/O's.
        servers = [swap(engines, s) for s in servers]
        result["http_swapped"] = measure_http(engines, servers, profile, page, " swapped")
        result["http_background_busy"] = dict(wrk.BACKGROUND)
        result["load"]["after"] = round(os.getloadavg()[0], 2)
    finally:
        problems = netns.delete(CLIENT_NS)
        problems += common.cleanup_installation(engines["dio"], log)
        if netns.link_exists(CLIENT_VETH):
            problems.append(f"link {CLIENT_VETH}")
        result["leftovers"] = problems
    text = markdown(result)
    report.show(result, text)
    if args.profile != "smoke" or args.write:
        plot(result)
        common.write_results("loopdio", result, text)
    if result["leftovers"]:
        log(f"left behind: {result['leftovers']}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
