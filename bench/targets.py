"""The benchmark issue's targets beside what the last runs measured, as the first section of
bench/results/SUMMARY.md (make bench runs this last; it measures nothing itself).

Reads bench/results/{engine,lxc,lxc-batch,overhead,panel,cli}.json; a missing file or figure shows as "—"
(a goal no benchmark measures yet shows so too, so the table lists every goal).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import MB, md_table  # noqa: E402


def load(name: str) -> dict:
    try:
        return json.loads((common.RESULTS_DIR / f"{name}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def dig(data: dict, path: str):
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def check(value, goal: float, lower_is_better: bool = True) -> str:
    if value is None:
        return "—"
    met = value < goal if lower_is_better else value >= goal
    return "met" if met else "**missed**"


def fmt(value, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    return "—" if value is None else f"{value / scale:.{digits}f}{unit}"


def rows() -> list[list[str]]:
    engine, lxc, overhead, panel = load("engine"), load("lxc"), load("overhead"), load("panel")
    out: list[list[str]] = []

    def add(what: str, goal: str, value, shown: str, verdict: str) -> None:
        out.append([what, goal, shown if value is not None else "—", verdict])

    start_http = dig(engine, "latency.stats_ms.start_to_http_ms.median")
    add("busybox: start → first HTTP 200 (median)", "< 40 ms", start_http, fmt(start_http, " ms"),
        check(start_http, 40))
    create_start = dig(engine, "latency.stats_ms.create_start_to_http_ms.median")
    add("busybox: create + start → HTTP (median)", "< 100 ms", create_start, fmt(create_start, " ms"),
        check(create_start, 100))
    add("busybox: start → first HTTP 200 (median; the overhead issue's goal)", "≤ 25 ms", start_http,
        fmt(start_http, " ms"), check(start_http, 25.001))
    lxc_http = dig(lxc, "latency.stats_ms.start_to_http_ms.median")
    if start_http is not None and lxc_http:
        ratio = start_http / lxc_http
        add("busybox: start → HTTP, ours / lxc-start", "< 1", ratio,
            f"{ratio:.2f} ({start_http:.1f} / {lxc_http:.1f} ms)", check(ratio, 1))
    mem = dig(engine, "density.mem_available_delta_per_server_bytes")
    n = dig(engine, "density.servers")
    add(f"busybox: host memory per idle VPS ({n or '?'} running)", "< 1.5 MB", mem, fmt(mem, " MB", MB, 2),
        check(mem, 1.5 * MB))
    lxc_dir_pss = dig(lxc, "density.dir.pss_with_monitor_per_container_bytes")
    pss = dig(engine, "density.pss_per_server_bytes")
    if pss and lxc_dir_pss:
        ratio = lxc_dir_pss / pss
        add("busybox: LXC dir container's PSS (with monitor) / ours", "≥ 4×", ratio, f"{ratio:.1f}×",
            check(ratio, 4, lower_is_better=False))
    lxc_ovl_mem = dig(lxc, "density.overlay.mem_available_delta_per_container_bytes")
    if mem and lxc_ovl_mem:
        add("busybox: host memory, ours / LXC overlay snapshot", "< 1", mem / lxc_ovl_mem,
            f"{mem / lxc_ovl_mem:.2f} ({mem / MB:.2f} / {lxc_ovl_mem / MB:.2f} MB)", check(mem / lxc_ovl_mem, 1))
    upper = dig(engine, "density.disk_used_per_server_bytes")
    add("busybox: disk per VPS in its upper layer", "< 100 KB", upper, fmt(upper, " KB", 1000, 0),
        check(upper, 100_000))
    allocated = dig(engine, "density.image_allocated_per_server_bytes")
    add("busybox: disk allocated per VPS (quota filesystem)", "< 5 MB", allocated, fmt(allocated, " MB", MB, 2),
        check(allocated, 5 * MB))
    share = dig(engine, "density.answered_share")
    add(f"busybox: share of {n or '?'} VPSs answering HTTP", "100 % (1,000 in FULL)", share,
        fmt(share * 100 if share is not None else None, " %", 1, 0), check(share, 1.0, lower_is_better=False))
    # The large density run: `make bench FULL=1`, or bench/engine.py --full ... --name engine-1000.
    for large in (engine, load("engine-1000")):
        big_n = dig(large, "density.servers")
        if big_n and big_n >= 1000:
            big_share = dig(large, "density.answered_share")
            big_mem = dig(large, "density.mem_available_delta_per_server_bytes")
            add(f"busybox: share of {big_n:,} VPSs answering HTTP", "100 %", big_share,
                fmt(big_share * 100 if big_share is not None else None, " %", 1, 0),
                check(big_share, 1.0, lower_is_better=False))
            add(f"busybox: host memory per idle VPS ({big_n:,} running)", "< 1.5 MB", big_mem,
                fmt(big_mem, " MB", MB, 2), check(big_mem, 1.5 * MB))
            break
    apache_mem = dig(engine, "apache_density.mem_available_delta_per_server_bytes")
    apache_n = dig(engine, "apache_density.servers")
    add(f"Apache: host memory per VPS ({apache_n or '?'} running)", "< 8 MB", apache_mem,
        fmt(apache_mem, " MB", MB, 2), check(apache_mem, 8 * MB))
    apache_disk = dig(engine, "apache_density.image_allocated_per_server_bytes")
    add("Apache: disk per VPS (allocated)", "< 5 MB", apache_disk, fmt(apache_disk, " MB", MB, 2),
        check(apache_disk, 5 * MB))
    # A VPS's share of the host's requests/s counts by the less favourable of two readings of
    # the same interleaved run: the ratio of the medians, and the median of each round's ratio
    # (paired). On a busy host they part by several points; a goal is met only if both meet it.
    for server, label, goal in (("apache", "Apache", 0.97), ("busybox", "busybox httpd", 0.99)):
        medians = dig(overhead, f"derived.http.{server}/bridge/vps.ratio_of_medians")
        paired = dig(overhead, f"derived.http.{server}/bridge/vps.paired_ratio")
        both = [r for r in (medians, paired) if r is not None]
        worse = min(both) if both else None
        shown = fmt(medians * 100 if medians is not None else None, " %", 1, 1)
        if paired is not None:
            shown += f" (paired {paired * 100:.1f} %)"
        add(f"HTTP requests/s inside a VPS / on the host ({label}, over the bridge)", f"≥ {goal * 100:.0f} %",
            worse, shown, check(worse, goal, lower_is_better=False))
    cli = load("cli")
    # Each CLI line twice: through the resident server (`vserver serve`, resident.py) and with
    # every command in its own process, as when none runs.
    for variant, how in (("resident", "resident server"), ("now", "own process")):
        for key, label in (("help", "`vserver --help`"), ("list", "`vserver list` (5 stopped servers)")):
            value = dig(cli, f"medians_ms.{key}.{variant}")
            add(f"CLI: {label} as a whole process, {how} (median)", "≤ 40 ms", value, fmt(value, " ms"),
                check(value, 40.001))
        # Like with like: lxc-stop -k kills, and so does `vserver stop --kill` (the first line halts cleanly).
        for key, stop in (("start+stop", "stop"), ("start+kill", "stop --kill")):
            ratio_key = "start && stop" if key == "start+stop" else "start && stop --kill"
            pair = dig(cli, f"ratios.{ratio_key}, {variant} ÷ LXC")
            ours, theirs = dig(cli, f"medians_ms.{key}.{variant}"), dig(cli, f"medians_ms.{key}.lxc")
            add(f"CLI: `vserver start X && vserver {stop} X` / `lxc-start && lxc-stop -k` (busybox), {how}", "≤ 1.5",
                pair, f"{pair:.1f} ({ours:.0f} / {theirs:.0f} ms)" if pair and ours and theirs else "",
                check(pair, 1.5001))
        # A command run inside a running server: the CLI "as quick as LXC's" for exec too.
        pair = dig(cli, f"ratios.exec, {variant} ÷ LXC")
        ours, theirs = dig(cli, f"medians_ms.exec.{variant}"), dig(cli, "medians_ms.exec.lxc")
        add(f"CLI: `vserver exec X true` / `lxc-attach -n Y -- true` (busybox, running), {how}", "≤ 1.5", pair,
            f"{pair:.1f} ({ours:.0f} / {theirs:.0f} ms)" if pair and ours and theirs else "",
            check(pair, 1.5001) if pair is not None else "not measured yet")
    batch = load("lxc-batch")
    batch_ratio = dig(batch, "ratio_batch_to_lxc")
    ours_b, theirs_b = dig(batch, "per_server_ms.ours_batch.median"), dig(batch, "per_server_ms.lxc.median")
    add(f"busybox: batch start per VPS / lxc-start, to first HTTP 200 ({dig(batch, 'servers') or 'N'} each)",
        "≤ 0.8", batch_ratio,
        f"{batch_ratio:.2f} ({ours_b:.1f} / {theirs_b:.1f} ms)" if batch_ratio and ours_b and theirs_b else "",
        check(batch_ratio, 0.8001) if batch_ratio is not None else "not measured yet")
    cycles = max((t.get("cycles_per_s", 0) for t in engine.get("throughput", [])), default=None)
    add("create+start+stop+delete cycles/s through the engine (best of 1 and 4 at a time)", "≥ 20", cycles,
        fmt(cycles, "/s"), check(cycles, 20, lower_is_better=False))
    panel_cycles = max(filter(None, [dig(panel, "queue.sequential.cycles_per_s"),
                                     dig(panel, "queue.inflight.cycles_per_s")]), default=None)
    add("the same through the panel (queue + one worker)", "≥ 10", panel_cycles, fmt(panel_cycles, "/s"),
        check(panel_cycles, 10, lower_is_better=False))
    many_cycles, many = dig(panel, "queue.inflight_workers.cycles_per_s"), dig(panel, "queue.inflight_workers.workers")
    if many_cycles is not None:
        add(f"the same through the panel ({many} workers)", "≥ 10", many_cycles, fmt(many_cycles, "/s"),
            check(many_cycles, 10, lower_is_better=False))
    for key, label in (("tenant_list", "tenant's server list"), ("operator_servers", "operator's server list"),
                       ("operator_operations", "operator's operations list")):
        value = dig(panel, f"pages.gunicorn.{key}.server_ms.median")
        add(f"panel: {label}, 1,000 servers / 10,000 operations (median server time)", "< 100 ms", value,
            fmt(value, " ms"), check(value, 100))
    return out


def markdown() -> str:
    names = ("engine", "engine-1000", "lxc", "lxc-batch", "overhead", "panel", "cli")
    when = {name: dig(load(name), "host.date") for name in names}
    runs = ", ".join(f"{name} {date}" for name, date in when.items() if date)
    return "\n".join([
        "## Targets (from the benchmark issue) and what was measured",
        "",
        f"From the latest results of each benchmark ({runs}). Each line's cause and detail are in "
        "the benchmark's own section below.",
        "",
        md_table(["target", "goal", "measured", ""], rows()),
    ]) + "\n"


def main() -> int:
    md = markdown()
    print(md)
    path = common.RESULTS_DIR / "SUMMARY.md"
    common.write_results("targets", {"rows": rows()}, md)
    # The targets come first, right under the title.
    text = path.read_text()
    begin, end = "<!-- BEGIN targets -->", "<!-- END targets -->"
    head, _, rest = text.partition(begin)
    section, _, tail = rest.partition(end)
    title, _, others = (head + tail).partition("\n")
    path.write_text(f"{title}\n\n{begin}{section}{end}\n\n{others.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
