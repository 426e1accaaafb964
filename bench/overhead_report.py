"""The report of bench/overhead.py: VPS/host ratios, the Markdown tables, a reading in words
and the plots, all from the result dictionary."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from bench import common
from bench.common import md_table
from bench.report import fmt, pct, pyplot, save


def ratio(vps: float, host: float) -> float | None:
    return round(vps / host, 4) if host else None


def paired_ratio(vps: dict, host: dict, key: str = "rps") -> float | None:
    """Median of the per-round ratios (round i of the VPS against round i of the host)."""
    pairs = [v[key] / h[key] for v, h in zip(vps["samples"], host["samples"], strict=False) if h.get(key)]
    return round(common.percentile(pairs, 50), 4) if pairs else None


HTTP_SIDES = [("host", "host"), ("bare_netns", "bare netns"), ("vps", "VPS")]


def derived(result: dict) -> dict:
    """The ratios the report and the plots show."""
    out: dict = {"http": {}, "cpu": {}, "file": {}}
    for label, paths in result.get("http", {}).items():
        for path, sides in paths.items():
            host = sides["host"]
            for side, s in sides.items():
                if side == "host":
                    continue
                out["http"][f"{label}/{path}/{side}"] = {
                    "ratio_of_medians": ratio(s["rps"]["median"], host["rps"]["median"]),
                    "paired_ratio": paired_ratio(s, host),
                    # Other work only ever slows a run down: the best runs are the least disturbed.
                    "ratio_of_p95": ratio(s["rps"]["p95"], host["rps"]["p95"]),
                }
    for key, m in result.get("cpu", {}).items():
        if key != "startup_baseline":
            out["cpu"][key] = {"host_over_vps_cpu_time": ratio(m["host_cpu_s"]["median"], m["vps_cpu_s"]["median"]),
                               "host_over_vps_time": ratio(m["host_s"]["median"], m["vps_s"]["median"])}
    for key, m in result.get("file", {}).items():
        out["file"][key] = {"vps_over_host_MBps": ratio(m["vps_MBps"]["median"], m["host_MBps"]["median"])}
    return out


def rps_cell(side: dict) -> str:
    return f"{fmt(side['rps']['median'])} ({fmt(side['rps']['p95'])})"


def latency_cell(side: dict) -> str:
    return f"{fmt(side['lat_p50_ms']['median'], 2)} / {fmt(side['lat_p99_ms']['median'], 2)}"


def ratio_cell(r: dict) -> str:
    return f"**{pct(r['ratio_of_medians'])}** (paired {pct(r['paired_ratio'])}, p95 {pct(r['ratio_of_p95'])})"


def markdown(result: dict, plots: list[str]) -> str:
    info, prof, d = result["host"], result["profile"], result["derived"]
    out = [
        "## Overhead: VPS against the bare host",
        "",
        common.host_line(info) + f", "
        f"commit {info['git_commit']}; `bench/overhead.py {' '.join(result['argv'])}` "
        f"({result['mode']}, {result['run_time_s']:.0f} s). Load average before/after: "
        f"{result['loadavg_before'][0]:.2f} / {result['loadavg_after'][0]:.2f}."
        + (f" Engine with uncommitted changes in: {', '.join(result['engine_uncommitted'])}."
           if result.get("engine_uncommitted") else "")
        + (" The engine's firewall was on (nftables tables for the bridge)."
           if result.get("setup", {}).get("firewall_tables") else ""),
        "",
        f"Servers pinned to CPU {result['server_cpu']}, load generator to CPU {result['client_cpu']} (`taskset`). "
        "Same binary, same "
        f"files on both sides: the busybox template's static busybox (`httpd`, no keep-alive, one fork per "
        f"request) and the Debian template's Apache 2.4 (mpm_event, keep-alive) with its own config (the host "
        f"side only listens on another port). Page: {result['page_bytes']} bytes. wrk -t1, "
        f"-c{result['connections']['busybox']} for busybox (its listen backlog is 9), "
        f"-c{result['connections']['apache']} for Apache: "
        f"{prof['http_reps']} rounds × {prof['http_s']} s per side through the bridge, {prof['lo_reps']} × "
        f"{prof['lo_s']} s over loopback, sides alternated (order rotated each round) after a warm-up.",
    ]
    http = result.get("http", {})
    if http:
        rows = []
        for label, paths in http.items():
            sides = paths["bridge"]
            key = f"{label}/bridge/vps"
            rows.append([f"**{label}** req/s median (p95)"]
                        + [rps_cell(sides[s]) for s, _ in HTTP_SIDES] + [ratio_cell(d["http"][key])])
            rows.append([f"{label} latency p50 / p99 ms"] + [latency_cell(sides[s]) for s, _ in HTTP_SIDES] + [""])
        busy = result.get("background_busy_before_http", {})
        if busy:
            noisy = max(busy.values()) > 0.1
            out += ["", ("**Noisy run:** " if noisy else "") + "CPU busy with other work in the second before each "
                    "series (both CPUs): " + ", ".join(f"{k} {pct(v)}" for k, v in busy.items()) + "."]
        out += ["", "### HTTP through the bridge (client in its own network namespace)", "",
                "host: client ns → bridge → host stack (bridge address); bare netns: the host's server "
                "process in a plain network namespace on the bridge (one veth more, nothing else); VPS: "
                "client ns → bridge → veth → VPS.", "",
                md_table(["", "host", "bare netns", "VPS", "VPS / host: medians (paired rounds, p95s)"], rows)]
        rows = []
        for label, paths in http.items():
            if "loopback" not in paths:
                continue
            lo = paths["loopback"]
            key = f"{label}/loopback/vps"
            rows.append([f"**{label}** req/s median (p95)", rps_cell(lo["host"]), rps_cell(lo["vps"]),
                         ratio_cell(d["http"][key])])
            rows.append([f"{label} latency p50 / p99 ms", latency_cell(lo["host"]), latency_cell(lo["vps"]), ""])
        if rows:
            out += ["", "### HTTP over loopback (wrk beside the server: on the host / inside the VPS)", "",
                    md_table(["", "host", "VPS", "VPS / host: medians (paired rounds, p95s)"], rows)]
        rows = []
        for label, paths in http.items():
            for path, sides in paths.items():
                for side, s in sides.items():
                    c = s["cpu_per_request_median"]
                    cells = [fmt(s["server_process_us"]["median"], 1), fmt(s["client_process_us"]["median"], 1)]
                    for role in ("server_cpu", "client_cpu"):
                        r = c.get(role, {})
                        cells.append(f"{fmt(r.get('user_us'), 1)} / {fmt(r.get('system_us'), 1)} / "
                                     f"{fmt(r.get('softirq_us'), 1)} (idle {pct(r.get('idle_share'))})")
                    rows.append([f"{label} {path}", dict(HTTP_SIDES).get(side, side), *cells])
        out += ["", "### Where the CPU goes: µs of CPU per request", "",
                "Server processes: the CPU time of the cgroup they run in (the host-side server's own "
                "accounting cgroup; the VPS's cgroup, minus wrk when wrk runs inside it), so every forked "
                "child counts; wrk: its own time (rusage). Softirq work that ran in a process's context "
                "counts for that process. Per CPU: everything /proc/stat saw on that CPU, user / system / "
                "softirq, other people's processes included.", "",
                md_table(["server", "side", "server processes", "wrk", f"CPU {result['server_cpu']} (server)",
                          f"CPU {result['client_cpu']} (client)"], rows)]
    rows = []
    cpu = result.get("cpu", {})
    for key, label in (("shell_loop", "busybox sh loop, {iterations:,} iterations: CPU s (wall s)"),
                       ("fork_loop", "busybox sh, {forks:,} subshells (fork + exit): CPU s (wall s)"),
                       ("open_loop", "busybox sh, {opens:,} times `: < {file}` (open + close of a template file): "
                                     "CPU s (wall s)"),
                       ("syscall_loop", "dd bs=1 /dev/zero → /dev/null, {syscalls:,} syscalls: CPU s (dd's s)")):
        if key in cpu:
            m, r = cpu[key], d["cpu"][key]
            rows.append([label.format(**m), f"{fmt(m['host_cpu_s']['median'], 3)} ({fmt(m['host_s']['median'], 3)})",
                         f"{fmt(m['vps_cpu_s']['median'], 3)} ({fmt(m['vps_s']['median'], 3)})",
                         f"**{pct(r['host_over_vps_cpu_time'])}** speed ({pct(r['host_over_vps_time'])})"])
    for key, label in (("own_disk_warm", "read own-disk file, page cache warm (MB/s)"),
                       ("template_warm", "read template file `{file}` (overlay lower), warm (MB/s)"),
                       ("own_disk_cold", "read own-disk file, cold: its pages dropped (MB/s)")):
        if key in result.get("file", {}):
            m = result["file"][key]
            rows.append([label.format(**m), fmt(m["host_MBps"]["median"]), fmt(m["vps_MBps"]["median"]),
                         f"**{pct(d['file'][key]['vps_over_host_MBps'])}**"])
    if rows:
        base = cpu.get("startup_baseline", {})
        out += ["", "### CPU and file reads (same busybox binary, pinned to one CPU)", "",
                md_table(["", "host", "VPS", "VPS / host"], rows), "",
                "CPU: user + system time of the processes (rusage), the figure other work on the machine "
                "hardly moves; in brackets the elapsed time. The loops run without address-space "
                "randomisation (`setarch -R`) and with the same argv and environment on both sides (the host's "
                "chrooted into the template), so both get the same memory layout. "
                "The shell loop's elapsed time is the wall clock minus the start-up of an empty command on the same "
                f"side (host {fmt(base.get('host_s', {}).get('median', 0) * 1000, 1)} ms, VPS through "
                f"`engine.run` {fmt(base.get('vps_s', {}).get('median', 0) * 1000, 1)} ms); everything done with "
                "dd by the copy time dd reports itself (no process start-up). Reads: `dd bs=1M` to /dev/null. "
                "The own-disk file lies in the VPS's ext4 image (overlay upper, loop device) and on the host's "
                "ext4; the template file is the same inode on both sides (the VPS reads it through the overlay "
                "and the idmapped mount). Cold: the file's pages (and in the VPS those of its disk image) "
                "dropped with `posix_fadvise(DONTNEED)` before each read, nothing else of the host's cache."]
    if result.get("analysis"):
        out += ["", "### Reading", "", result["analysis"]]
    for p in plots:
        out += ["", f"![{p}]({p})"]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


def analysis(result: dict) -> str:
    """What the numbers say, from the numbers (the report's own reading comes on top)."""
    d = result["derived"]
    lines = []
    for label, paths in result.get("http", {}).items():
        b = paths["bridge"]
        r_vps = d["http"][f"{label}/bridge/vps"]["ratio_of_medians"]
        r_bare = d["http"][f"{label}/bridge/bare_netns"]["ratio_of_medians"]
        verdict = "meets" if r_vps is not None and r_vps >= 0.97 else "misses"
        vps_over_bare = ratio(b["vps"]["rps"]["median"], b["bare_netns"]["rps"]["median"])
        text = (f"**{label}**: through the bridge the VPS serves {pct(r_vps)} of the host's requests per second "
                f"({verdict} the 97 % target). The extra veth hop alone (bare netns) gives {pct(r_bare)} of the "
                f"host, the rest of the VPS {pct(vps_over_bare)} of the bare netns.")
        if "loopback" in paths:
            text += (f" Over loopback, without bridge and veth, the VPS gets "
                     f"{pct(d['http'][f'{label}/loopback/vps']['ratio_of_medians'])} of the host.")

        us = [b[side]["server_process_us"]["median"] for side in ("host", "bare_netns", "vps")]
        soft = [b[side]["cpu_per_request_median"].get("server_cpu", {}).get("softirq_us", math.nan)
                for side in ("host", "bare_netns", "vps")]
        text += (f" CPU per request of the server's processes: host {us[0]:.0f} µs, bare netns {us[1]:.0f} µs, "
                 f"VPS {us[2]:.0f} µs; softirq on the server's CPU {soft[0]:.0f} / {soft[1]:.0f} / {soft[2]:.0f} µs.")
        lines.append(text)
    if result.get("host_side_untracked"):
        lines.append("No side keeps conntrack entries: the bench's own raw-priority `notrack` rules take the host-side "
                     "servers' ports (host, its loopback, and through br_netfilter the bare netns) out of the host's "
                     "conntrack, which the engine's firewall (`ct state` in its inet table) switches on for the "
                     "host's whole namespace; the VPS's frames skip it through the bridge table's notrack rules "
                     "(commits 16dcded and 8d0936a). Those rules cost the host side about what the lookups did "
                     "(perf of Apache over loopback: ~1.6 % of its samples), netfilter work a bare host would not "
                     "do; runs before commit 1932bfb tracked the host side instead.")
    else:
        lines.append("The host's conntrack tracks the connections to the host side (its own firewall needs that) "
                     "and to the bare netns (bridged between two ports that are not the installation's, so "
                     "br_netfilter hands them to the host's hooks); those to the VPS it does not since commits "
                     "16dcded and 8d0936a (the bridge table's notrack rules for the installation's own ports and "
                     "VPS MACs).")
    parts = part_costs()
    if parts:
        lines.append(parts)
    cpu = d.get("cpu", {})
    if cpu:
        lines.append("**CPU**: per unit of work the VPS needs " + ", ".join(
            f"{key.replace('_', ' ')} {pct(1 / v['host_over_vps_cpu_time']) if v['host_over_vps_cpu_time'] else '—'}"
            for key, v in cpu.items()) + " of the host's CPU time.")
        if "open_loop" in result.get("cpu", {}) and "shell_loop" in result["cpu"]:
            lines.append(open_cost(result["cpu"]))
    files = d.get("file", {})
    if files:
        ra = result["file"].get("own_disk_cold", {}).get("read_ahead_kb", {})
        text = "**Reads**: " + ", ".join(f"{key.replace('_', ' ')} {pct(v['vps_over_host_MBps'])}"
                                         for key, v in files.items()) + " of the host's MB/s"
        if ra:
            text += (f" (read-ahead: host disk {ra.get('host_disk', '?')} KB, the VPS's loop device "
                     f"{ra.get('vps_loop', '?')} KB)")
        lines.append(text + ".")
    return "\n\n".join(lines)


PARTS = (("bridged_tracked", "conntrack of bridged frames (now skipped)", 1),
         ("bridge_firewall_off", "the bridge table's anti-spoofing rules", -1),
         ("guest_guard_off", "the guest's next-hop guard", -1),
         ("access_log_tmpfs", "Apache's access log through overlay and loop disk rather than a tmpfs", -1),
         ("access_log_none", "Apache's access log at all", -1))


def part_cost(rows: dict, target: str) -> str:
    """What switching TARGET off saves, per round against the VPS as it is: 'median (q1…q3)'."""
    sign = 1 if target == "bridged_tracked" else -1  # tracked adds the part back; the others take it away
    deltas = sorted(sign * (a - b) for a, b in zip(rows[target]["server_us"], rows["vps"]["server_us"], strict=True))
    if target == "bare_netns":
        deltas = sorted(-d for d in deltas)  # the bare netns against the VPS, not a part
    q = statistics.quantiles(deltas, n=4) if len(deltas) > 1 else [deltas[0]] * 3
    verdict = "" if q[0] <= 0 <= q[2] or target == "bare_netns" else (" (a cost)" if q[0] > 0 else " (a gain)")
    return f"{q[1]:+.1f} µs ({q[0]:+.1f}…{q[2]:+.1f}){verdict}"


def overlay_cost(rows: dict) -> str:
    """The bare netns's server behind an overlayfs against it without: server CPU µs per request
    and req/s, per round, as 'median (q1…q3)'."""
    ovl, bare = rows["bare_netns_overlay"], rows["bare_netns"]
    deltas = sorted(a - b for a, b in zip(ovl["server_us"], bare["server_us"], strict=True))
    ratios = sorted(a / b for a, b in zip(ovl["rps"], bare["rps"], strict=True))
    dq = statistics.quantiles(deltas, n=4) if len(deltas) > 1 else [deltas[0]] * 3
    rq = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (f"{dq[1]:+.1f} µs ({dq[0]:+.1f}…{dq[2]:+.1f}) of server CPU per request, "
            f"{rq[1]:.3f} ({rq[0]:.3f}…{rq[2]:.3f}) of its req/s")


def open_cost(cpu: dict) -> str:
    """What an open and close through the VPS's overlay costs: the open loop's extra CPU time per
    iteration in the VPS, less the plain shell loop's extra per iteration (the loop itself)."""
    def extra_us(key: str, count: str) -> float:
        m = cpu[key]
        return (m["vps_cpu_s"]["median"] - m["host_cpu_s"]["median"]) / m[count] * 1e6

    opened = extra_us("open_loop", "opens")
    looped = extra_us("shell_loop", "iterations")
    return (f"**Opening a file**: `: < {cpu['open_loop']['file']}` costs the VPS {opened:.2f} µs of CPU per "
            f"iteration more than the host ({opened - looped:.2f} µs once the shell loop's own difference, "
            f"{looped:.2f} µs per iteration, is taken off): the open and close of the template's file through "
            "the overlay, which opens the file below it too, and the idmapped lower layer. It is the price of "
            "the copy-on-write template, which shares one template's files and page cache among all VPSs; "
            "every file a server opens pays it (bench/overhead_ab.py: Apache's per-request opens, stats and "
            "log writes).")


def part_costs(path: Path | None = None) -> str:
    """The part-by-part costs of bench/overhead_ab.py's latest results, if there are any."""
    path = path or Path(__file__).resolve().parent / "results" / "overhead_ab.json"
    try:
        ab = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    texts = []
    for label, rows in ab.get("ab", {}).items():
        costs = [f"{what} {part_cost(rows, key)}" for key, what, _sign in PARTS if key in rows]
        if "bare_netns_overlay" in rows:
            costs.append(f"overlayfs alone (the bare netns's server with its files behind one) {overlay_cost(rows)}")
        texts.append(f"{label}: " + "; ".join(costs))
    return ("**Part by part** (bench/overhead_ab.py, its own run of " + str(ab.get("finished", "?")) +
            "; each part switched off on the running VPS; server CPU µs per request saved, median of the rounds "
            "with the middle half in brackets, a range holding 0 is noise): " + ". ".join(texts) +
            ". Overlayfs is the price of the copy-on-write template (one template's files and page cache "
            "shared by every VPS): each open through it opens the file below too (see the open loop below), "
            "and its functions hardly show by name in a profile (the second open, permission check and file "
            "structure are the VFS's own). The rest is the price of the walls, each under 1.5 % of the "
            "server CPU's perf samples there: seccomp ~15 ns per system call (the syscall loop above), the "
            "VPS's memory cgroup.")


def plot(result: dict, outdir: Path) -> list[str]:
    plt = pyplot()
    names = []
    http = result.get("http", {})
    if http:
        groups = []
        for label, paths in http.items():
            for path, sides in paths.items():
                groups.append((f"{label}\n{path}", sides))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        colors = {"host": "#4c72b0", "bare_netns": "#8c8c8c", "vps": "#dd8452"}
        width = 0.26
        for gi, (_, sides) in enumerate(groups):
            keys = [k for k, _ in HTTP_SIDES if k in sides]
            for si, key in enumerate(keys):
                s = sides[key]["rps"]
                x = gi + (si - (len(keys) - 1) / 2) * width
                ax.bar(x, s["median"], width, color=colors[key], label=dict(HTTP_SIDES)[key],
                       yerr=[[s["median"] - s["min"]], [s["p95"] - s["median"]]], capsize=3)
        handles, labels = ax.get_legend_handles_labels()
        seen = {}
        for h, lab in zip(handles, labels, strict=True):
            seen.setdefault(lab, h)
        ax.legend(seen.values(), seen.keys())
        ax.set_xticks(range(len(groups)), [g for g, _ in groups])
        ax.set_ylabel("requests / s (median; whiskers min – p95)")
        ax.set_title("HTTP throughput: host vs VPS (wrk, same server binary and page)")
        fig.tight_layout()
        save(fig, outdir / "overhead-http.png")
        names.append("overhead-http.png")
    d = result["derived"]
    bars = []  # (label, VPS/host, colour)
    for key, v in d["http"].items():
        label, path, side = key.split("/")
        name = f"{label} {path}" + (" (bare netns)" if side == "bare_netns" else "")
        bars.append((name, v["ratio_of_medians"], "#8c8c8c" if side == "bare_netns" else "#dd8452"))
    for key, v in d["cpu"].items():
        bars.append((f"cpu {key.replace('_', ' ')} (CPU time)", v["host_over_vps_cpu_time"], "#dd8452"))
    for key, v in d["file"].items():
        bars.append((f"read {key.replace('_', ' ')}", v["vps_over_host_MBps"], "#dd8452"))
    bars = [b for b in bars if b[1] is not None]
    if bars:
        fig, ax = plt.subplots(figsize=(9, 5))
        ax.barh([k for k, _, _ in bars], [v * 100 for _, v, _ in bars], color=[c for _, _, c in bars])
        ax.axvline(100, color="black", linewidth=0.8)
        ax.axvline(97, color="red", linestyle="--", linewidth=0.8, label="97 % target")
        for i, (_, v, _) in enumerate(bars):
            ax.text(v * 100, i, f" {v * 100:.1f} %", va="center", fontsize=8)
        ax.set_xlabel("VPS (grey: bare netns) as % of host, medians (higher is better)")
        ax.set_xlim(0, max(115, max(v * 100 for _, v, _ in bars) + 10))
        ax.invert_yaxis()
        ax.legend(loc="lower right")
        ax.set_title("VPS / host")
        fig.tight_layout()
        save(fig, outdir / "overhead-ratios.png")
        names.append("overhead-ratios.png")
    return names
