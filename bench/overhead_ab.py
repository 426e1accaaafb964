"""Where a VPS's extra CPU per HTTP request goes: one thing switched off at a time on the
running VPS, measured side by side with the VPS as it is, in one run. For measuring only: the
switches (no bridge firewall, bridged frames tracked by the host's conntrack as before, no guard
in the guest's namespace, Apache's access log on a tmpfs or none)
are never what the engine ships.

Run as root from the repository root, under the host-wide lock for figures one reports::

    flock /run/lock/vservers-tests.lock .venv/bin/python bench/overhead_ab.py [--rounds N] [--seconds S]

Same installation, servers and client namespace as bench/overhead.py (it uses its set-up).
Each round runs wrk once against every target in a rotated order: the bare netns (the host's
server in a plain namespace on the bridge), the same server with its files behind an overlayfs
(what the copy-on-write template alone costs, paired with the bare netns), the VPS as it is, and
the VPS with one switch applied just before its run and undone just after. Then a perf profile (cpu-clock samples
of the server's CPU) of one wrk run against the bare netns and against the VPS, grouped by what
the kernel functions do. Prints Markdown; with --write also bench/results/overhead_ab.json and
its section of SUMMARY.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, hostside, netns, overhead  # noqa: E402
from bench.common import log  # noqa: E402
from bench.overhead_report import overlay_cost, part_cost  # noqa: E402
from bench.template_store import exclusive  # noqa: E402
from bench.wrk import CLIENT_CPU, timed_wrk, wrk_args  # noqa: E402

SITE = "/etc/apache2/sites-available/000-default.conf"


def nsenter_net(pid: int, argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], input=stdin, capture_output=True, text=True,
                          env=common.HOST_ENV)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} in the netns of {pid}: {done.stderr.strip()}")


def bridge_fw_switch(ctx):
    """The bridge table's three jumps (prerouting, forward, output) flushed; back by ensure()."""
    from vservers.engine import firewall

    table = firewall.table_name(ctx.config.bridge)

    def off() -> None:
        firewall._nft.script("".join(f"flush chain bridge {table} {c}\n" for c in ("prerouting", "forward", "output")))

    return off, lambda: firewall.ensure(ctx.config)


def tracked_switch(ctx):
    """The bridge table's notrack rule deleted: bridged frames are tracked by the host's
    conntrack again (through br_netfilter), as before; back by ensure()."""
    from vservers.engine import firewall

    table = firewall.table_name(ctx.config.bridge)

    def on() -> None:
        listing = firewall._nft.json([{"list": {"chain": {"family": "bridge", "table": table, "name": "prerouting"}}}])
        for item in listing["nftables"]:
            if "rule" in item and any("notrack" in expr for expr in item["rule"]["expr"]):
                firewall._nft.json([{"delete": {"rule": {"family": "bridge", "table": table, "chain": "prerouting",
                                                         "handle": item["rule"]["handle"]}}}])

    return on, lambda: firewall.ensure(ctx.config)


def lazytime_switch(ctx, name: str):
    """The server's ext4 (its loop disk) with lazytime: its superblock reached by mounting the
    same loop device a second time on the host (one superblock for both mounts), remounted,
    and that second mount removed; back with nolazytime the same way."""
    image = ctx.config.server_dir(name) / "disk.img"
    device = common.must(["losetup", "-j", str(image)]).split(":")[0]

    def remount(option: str) -> None:
        point = Path(f"/tmp/vsbench-sb-{os.getpid()}")
        point.mkdir(exist_ok=True)
        common.must(["mount", "-t", "ext4", device, str(point)])
        try:
            common.must(["mount", "-o", f"remount,{option}", str(point)])
        finally:
            common.must(["umount", str(point)])
            point.rmdir()

    return (lambda: remount("lazytime")), (lambda: remount("nolazytime"))


def guard_switch(ctx, name: str):
    """The guest's own next-hop guard (firewall.GUEST_GUARD) deleted, then put back."""
    from vservers.engine import firewall

    pid = ctx.engine.init_pid(name)

    def off() -> None:
        nsenter_net(pid, ["nft", "delete", "table", "inet", firewall.GUEST_TABLE])

    def on() -> None:
        nsenter_net(pid, ["nft", "-f", "-"], stdin=firewall.GUEST_GUARD)

    return off, on


def apache_log_switch(ctx, name: str, where: str):
    """Apache's access log moved to WHERE ('tmpfs': /run, 'none': no access log), reloaded."""
    done = ctx.engine.run(name, ["cat", SITE])
    original = done.stdout
    if "CustomLog ${APACHE_LOG_DIR}/access.log combined" not in original:
        raise RuntimeError(f"unexpected {SITE}")
    new = original.replace("CustomLog ${APACHE_LOG_DIR}/access.log combined",
                           "CustomLog /run/access.log combined" if where == "tmpfs" else "")

    def reload(text: str) -> None:
        common.guest_write(ctx.engine, name, SITE, text.encode())
        ctx.engine.run(name, ["sh", "-c", "kill -USR1 $(cat /var/run/apache2/apache2.pid)"])
        time.sleep(0.5)
        overhead.wait_page(ctx.vps_ip[name], 80, ctx.page)
        ctx.pin_vps_servers()

    return (lambda: reload(new)), (lambda: reload(original))


def overlay_servers(ctx, host: hostside.HostSide) -> dict[str, int]:
    """The bare netns's servers once more, their files behind an overlayfs (a copy of what the
    bare netns's server serves from as the lower layer, an empty upper on the host's own
    filesystem): what overlayfs alone costs a request (the page's open, stat, read and close,
    the access log's writes), apart from everything else of a VPS. Returns their ports, by
    server label."""
    from bench.wrk import SERVER_CPU

    ports = hostside.pick_ports([label for label, _port, _vps in ctx.servers], overhead.FIRST_PORT + 100)
    pinned = ["taskset", "-c", str(SERVER_CPU)]
    in_bare = ["ip", "netns", "exec", overhead.BARE_NS]
    for label, port in ports.items():
        lower, merged = ctx.hostdir / f"{label}-ovl-lower", ctx.hostdir / f"{label}-ovl"
        if label == "busybox":
            lower.mkdir()
            for name in ("index.html", overhead.PAGE_NAME):
                (lower / name).write_bytes((ctx.hostdir / "www" / name).read_bytes())
            host.mount_overlay(lower, ctx.hostdir / f"{label}-ovl-rw", merged)
            argv = pinned + [str(ctx.busybox_bin), "httpd", "-f", "-h", str(merged), "-p", f"{ctx.bare_ip}:{port}"]
        else:
            overhead.apache_tree(ctx.debian_rootfs, lower, [ctx.bare_ip], port, ctx.page)
            host.mount_overlay(lower, ctx.hostdir / f"{label}-ovl-rw", merged)
            argv = pinned + ["chroot", str(merged), "/etc/service/apache2/run"]
        host.start(f"{label}-netns-ovl", in_bare + argv, ctx.hostdir / f"{label}-netns-ovl.log")
    overhead.untrack_host_side(sorted(ports.values()), ctx.gw, ctx.bare_ip)
    for port in ports.values():
        overhead.wait_page(ctx.bare_ip, port, ctx.page)
    ctx.host_cgroups = dict(host.cgroups)
    return ports


def measure(ctx, rounds: int, seconds: int, only_net: bool = False, ovl_ports: dict[str, int] | None = None) -> dict:
    client = ["ip", "netns", "exec", overhead.CLIENT_NS, "taskset", "-c", str(CLIENT_CPU), "wrk"]
    url = f"/{overhead.PAGE_NAME}"
    out: dict = {}
    for label, port, vps in ctx.servers:
        conns = overhead.CONNS[label]
        vps_argv = client + wrk_args(f"http://{ctx.vps_ip[vps]}:80{url}", seconds, conns)
        bare_argv = client + wrk_args(f"http://{ctx.bare_ip}:{port}{url}", seconds, conns)
        warm_argv = client + wrk_args(f"http://{ctx.vps_ip[vps]}:80{url}", 1, conns)
        switches = {"bridge_firewall_off": bridge_fw_switch(ctx), "guest_guard_off": guard_switch(ctx, vps),
                    "bridged_tracked": tracked_switch(ctx)}
        if label == "apache" and not only_net:
            switches["access_log_tmpfs"] = apache_log_switch(ctx, vps, "tmpfs")
            switches["access_log_none"] = apache_log_switch(ctx, vps, "none")
        if only_net:
            del switches["guest_guard_off"]
        ovl_port = (ovl_ports or {}).get(label)
        ovl_argv = client + wrk_args(f"http://{ctx.bare_ip}:{ovl_port}{url}", seconds, conns)
        targets = ["bare_netns", *(["bare_netns_overlay"] if ovl_port else []), "vps", *switches]
        runs: dict[str, list[dict]] = {t: [] for t in targets}
        timed_wrk(bare_argv, server_cpu=ctx.host_cpu(f"{label}-netns"))
        timed_wrk(vps_argv, server_cpu=ctx.vps_cpu(vps))
        for i in range(rounds):
            order = targets[i % len(targets):] + targets[:i % len(targets)]
            for t in order:
                if t == "bare_netns":
                    runs[t].append(timed_wrk(bare_argv, server_cpu=ctx.host_cpu(f"{label}-netns")))
                    continue
                if t == "bare_netns_overlay":
                    runs[t].append(timed_wrk(ovl_argv, server_cpu=ctx.host_cpu(f"{label}-netns-ovl")))
                    continue
                off, on = switches.get(t, (None, None))
                if off:
                    off()
                try:
                    timed_wrk(warm_argv)
                    runs[t].append(timed_wrk(vps_argv, server_cpu=ctx.vps_cpu(vps)))
                finally:
                    if on:
                        on()
            log(f"  {label} round {i + 1}/{rounds}: " + ", ".join(f"{t} {runs[t][-1]['rps']:.0f}/s "
                                                                  f"{runs[t][-1]['server_process_us']:.1f}us"
                                                                  for t in targets))
        out[label] = {}
        for t, samples in runs.items():
            out[label][t] = {
                "rps_median": statistics.median(s["rps"] for s in samples),
                "server_us_median": statistics.median(s["server_process_us"] for s in samples),
                "softirq_us_median": statistics.median(s["cpu_per_request"]["server_cpu"]["softirq_us"]
                                                       for s in samples),
                "rps": [s["rps"] for s in samples],
                "server_us": [s["server_process_us"] for s in samples],
            }
        base = runs["vps"]
        for t in targets:
            if t == "vps":
                continue
            # Per round, target ÷ the VPS as it is: drift between rounds cancels.
            ratios = [a["rps"] / b["rps"] for a, b in zip(runs[t], base, strict=True)]
            deltas = [a["server_process_us"] - b["server_process_us"] for a, b in zip(runs[t], base, strict=True)]
            out[label][t]["rps_vs_vps_paired_median"] = statistics.median(ratios)
            out[label][t]["server_us_minus_vps_paired_median"] = statistics.median(deltas)
        if "bare_netns_overlay" in runs:
            # Overlayfs alone: the same server with and without it, paired per round.
            pairs = list(zip(runs["bare_netns_overlay"], runs["bare_netns"], strict=True))
            out[label]["bare_netns_overlay"]["rps_vs_bare_paired_median"] = statistics.median(
                a["rps"] / b["rps"] for a, b in pairs)
            out[label]["bare_netns_overlay"]["server_us_minus_bare_paired_median"] = statistics.median(
                a["server_process_us"] - b["server_process_us"] for a, b in pairs)
    return out


# Kernel and library functions grouped by what they do, for the profile's shares.
GROUPS = {
    "netfilter: nf_tables rules": ("nft_", "__nft_", "nf_tables_"),
    # Walks of the whole conntrack table when any network namespace goes (other people's tests
    # on this host): not the per-packet cost, so counted apart.
    "conntrack: table walks (namespaces going)": ("nf_ct_iterate_cleanup", "nf_ct_iterate", "inet_twsk_purge"),
    "netfilter: conntrack": ("nf_conntrack", "__nf_conntrack", "nf_ct_", "__nf_ct", "ipv4_conntrack", "nf_confirm",
                             "tcp_packet", "hash_conntrack", "____nf_conntrack", "nf_nat"),
    "netfilter: hooks, br_netfilter": ("nf_hook", "br_nf_", "nf_iterate", "nf_hook_slow", "setup_pre_routing"),
    "bridge": ("br_", "__br_"),
    "veth": ("veth_",),
    "seccomp": ("seccomp", "__secure_computing", "__seccomp"),
    "overlayfs": ("ovl_",),
    "ext4 / jbd2": ("ext4_", "jbd2_", "__ext4", "__jbd2"),
    "memory cgroup": ("mem_cgroup", "__mem_cgroup", "obj_cgroup", "memcg_", "__memcg", "refill_obj_stock",
                      "consume_obj_stock", "mod_objcg", "drain_obj_stock"),
}


def perf_profile(seconds: float, argv: list[str], runner=None) -> dict:
    """perf record (cpu-clock, whole CPU SERVER_CPU) while wrk ARGV runs; the share of the
    server CPU's samples per GROUPS entry and the top symbols."""
    from bench.wrk import SERVER_CPU

    data = Path(f"/tmp/vsbench-perf-{os.getpid()}.data")
    rec = subprocess.Popen(["perf", "record", "-q", "-C", str(SERVER_CPU), "-e", "cpu-clock", "-F", "4999", "-o",
                            str(data), "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=common.HOST_ENV)
    time.sleep(0.3)
    wrk = timed_wrk(argv)
    rec.wait()
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio", "-q",
                             "--percent-limit", "0.01"], capture_output=True, text=True, env=common.HOST_ENV).stdout
    data.unlink(missing_ok=True)
    shares: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    top = []
    for line in report.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].endswith("%"):
            continue
        pct, sym = float(parts[0][:-1]), parts[-1]
        top.append((pct, sym))
        for group, prefixes in GROUPS.items():
            if sym.startswith(prefixes):
                shares[group] += pct
                break
    return {"rps": wrk["rps"], "shares_pct": {k: round(v, 2) for k, v in shares.items()},
            "top": [f"{p:.2f}% {s}" for p, s in top[:40]]}


def profiles(ctx, seconds: int) -> dict:
    client = ["ip", "netns", "exec", overhead.CLIENT_NS, "taskset", "-c", str(CLIENT_CPU), "wrk"]
    url = f"/{overhead.PAGE_NAME}"
    out: dict = {}
    for label, port, vps in ctx.servers:
        conns = overhead.CONNS[label]
        out[label] = {}
        extra = {"vps, bridged frames tracked": tracked_switch(ctx)}
        if label == "apache":
            extra["vps, disk lazytime"] = lazytime_switch(ctx, vps)
            extra["vps, access log on tmpfs"] = apache_log_switch(ctx, vps, "tmpfs")
        for target in ("bare_netns", "vps", *extra):
            addr = f"{ctx.bare_ip}:{port}" if target == "bare_netns" else f"{ctx.vps_ip[vps]}:80"
            argv = client + wrk_args(f"http://{addr}{url}", seconds, conns)
            off, on = extra.get(target, (None, None))
            if off:
                off()
            try:
                timed_wrk(client + wrk_args(f"http://{addr}{url}", 1, conns))
                out[label][target] = perf_profile(seconds + 0.5, argv)
            finally:
                if on:
                    on()
            log(f"  {label} {target}: " + ", ".join(f"{k} {v}%" for k, v in out[label][target]["shares_pct"].items()))
    return out


LABELS = {
    "bare_netns": "bare netns (the host's server in a plain namespace on the bridge)",
    "bare_netns_overlay": "bare netns, its files behind an overlayfs (lower: a copy of them; upper: the host's disk)",
    "vps": "**VPS as it is**",
    "bridge_firewall_off": "VPS, bridge table's jumps flushed (no anti-spoofing: measuring only)",
    "bridged_tracked": "VPS, bridged frames tracked by the host's conntrack (before 16dcded)",
    "guest_guard_off": "VPS, guest's next-hop guard deleted",
    "access_log_tmpfs": "VPS, Apache's access log on /run (tmpfs) instead of /var/log (overlay, loop disk)",
    "access_log_none": "VPS, no access log",
}


def markdown(result: dict) -> str:
    host = result["host"]
    lines = [
        "## Overhead: what each part of a VPS costs per HTTP request (`bench/overhead_ab.py`)",
        "",
        f"{result['finished']}, commit {host.get('git_commit', '?')}, kernel {host.get('kernel', '?')}; "
        f"{result['rounds']} rounds × {result['seconds']} s per target, wrk as in bench/overhead.py (client in its "
        "own namespace on the bridge, server CPU 0, client CPU 1). Load average before/after: "
        f"{result['loadavg_before'][0]:.2f} / {result['loadavg_after'][0]:.2f}."
        + (f" Engine with uncommitted changes in: {', '.join(result['engine_uncommitted'])}."
           if result.get("engine_uncommitted") else ""),
        "",
        "One thing switched on the running VPS just before its run and back just after; every round runs each "
        "target once, the order rotated. Paired: per round, the target's figure against the VPS as it is in the "
        "same round (median over rounds), so drift between rounds cancels. Server CPU: the CPU time of the "
        "server's cgroup per request.",
        "",
    ]
    for label, rows in result.get("ab", {}).items():
        lines += [f"### {label}", "", common.md_table(
            ["target", "req/s median", "÷ VPS (paired)", "server CPU µs/request", "− VPS (paired)",
             "softirq µs/request (CPU 0)"],
            [[LABELS.get(t, t), f"{v['rps_median']:,.0f}",
              "—" if t == "vps" else f"{v['rps_vs_vps_paired_median']:.3f}",
              f"{v['server_us_median']:.1f}",
              "—" if t == "vps" else f"{v['server_us_minus_vps_paired_median']:+.1f}",
              f"{v['softirq_us_median']:.1f}"] for t, v in rows.items()]), ""]
    if result.get("perf"):
        groups = list(GROUPS)
        lines += ["### Where the server CPU's time goes (perf, cpu-clock samples of CPU 0 during one wrk run)", "",
                  "Share of all samples of CPU 0 (idle and other people's work included) in each group of "
                  "kernel functions.", "",
                  common.md_table(["server", "target", "req/s", *groups],
                                  [[label, t, f"{v['rps']:,.0f}", *(f"{v['shares_pct'][g]:.2f} %" for g in groups)]
                                   for label, rows in result["perf"].items() for t, v in rows.items()]), ""]
    lines += ["### Reading", ""]
    for label, rows in result.get("ab", {}).items():
        vps = rows["vps"]
        parts = [f"the VPS serves {vps['rps_median']:,.0f} req/s at {vps['server_us_median']:.1f} µs of server CPU "
                 f"per request"]
        for t, what in (("bare_netns", "the bare netns needs"),
                        ("bridged_tracked", "conntrack of bridged frames (now skipped) cost"),
                        ("bridge_firewall_off", "the bridge table's per-packet rules cost"),
                        ("guest_guard_off", "the guest's next-hop guard costs"),
                        ("access_log_tmpfs", "the access log through overlay and the loop disk rather than a tmpfs "
                                             "costs"),
                        ("access_log_none", "the access log at all costs")):
            if t in rows:
                parts.append(f"{what} {part_cost(rows, t)}")
        if "bare_netns_overlay" in rows:
            parts.append("overlayfs alone (the bare netns's server with its files behind one, paired with it "
                         f"without) costs {overlay_cost(rows)}")
        lines.append(f"**{label}**: " + "; ".join(parts) + ".")
        lines.append("")
    lines.append("A part's cost is the median over rounds of (VPS as it is − VPS with the part switched off), "
                 "in server CPU µs per request, with the middle half of the rounds in brackets; where that range "
                 "holds 0, no cost shows beyond this machine's noise (other helpers' work on the 2 shared CPUs "
                 "moves single runs by ±20 %). The perf table is the finer instrument: conntrack's share of the "
                 "server CPU's samples, for instance, against the kernel's other network work.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--no-apache", action="store_true")
    parser.add_argument("--only-net", action="store_true", help="only the firewall switches")
    parser.add_argument("--perf", action="store_true", help="perf profiles of the server CPU only, no A/B runs")
    parser.add_argument("--no-perf", action="store_true", help="A/B runs only, no perf profiles")
    parser.add_argument("--write", action="store_true", help="write bench/results/overhead_ab.json")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite SUMMARY.md's section from bench/results/overhead_ab.json, measure nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        import json

        saved = json.loads((common.RESULTS_DIR / "overhead_ab.json").read_text())
        common.write_results("overhead_ab", saved, markdown(saved))
        return 0
    if os.geteuid() != 0:
        parser.error("must run as root")
    lock = exclusive()
    if lock is None:
        log("another run of bench/overhead.py holds the template store's lock; not starting")
        return 1
    inst = overhead.installation(args.no_apache)
    ports, env, config, engine = inst.ports, inst.env, inst.config, inst.engine
    pid_file, host = inst.pid_file, inst.host
    result: dict = {"host": common.host_info(), "loadavg_before": os.getloadavg(), "rounds": args.rounds,
                    "seconds": args.seconds, "engine_uncommitted": common.uncommitted(["vservers/engine"])}
    common.install_signal_handlers()
    ok = False
    try:
        if config.root.exists() or set(netns.names()) & {overhead.CLIENT_NS, overhead.BARE_NS} \
                or overhead.untracked_table_exists():
            log(f"{config.root} or our namespaces exist from an earlier run: cleaning first")
            hostside.kill_recorded(pid_file)
            for group in hostside.stale_cgroups():
                hostside.remove_cgroup(group)
            for ns in (overhead.CLIENT_NS, overhead.BARE_NS):
                netns.delete(ns)
            for merged in reversed(common.mounts_below(config.root / "host")):
                common.must(["umount", merged])
            overhead.remove_untracked()
            common.clean_or_fail(engine, log)
        profile = dict(overhead.PROFILES["quick"])
        ctx = overhead.setup(engine, config, env, profile, ports, result, host)
        if not args.perf:
            ovl_ports = None if args.only_net else overlay_servers(ctx, host)
            result["ab"] = measure(ctx, args.rounds, args.seconds, args.only_net, ovl_ports)
        if not args.no_perf:
            result["perf"] = profiles(ctx, max(args.seconds, 3))
        ok = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        try:
            problems = host.cleanup()
        except Exception as exc:  # noqa: BLE001 - the engine's cleanup must still run
            problems = [f"host-side cleanup: {exc}"]
        problems += overhead.remove_untracked()
        problems += common.cleanup_installation(engine, log)
        problems += overhead.own_leftovers(host, list(ports.values()), config.bridge)
        problems += [f"mount {m}" for m in common.mounts_below(config.root / "host")]
        result["leftovers"] = problems
        if problems:
            log("LEFT BEHIND: " + "; ".join(problems))
    result["loadavg_after"] = os.getloadavg()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not ok:
        return 1
    md = markdown(result)
    print(md)
    if args.write:
        path = common.write_results("overhead_ab", result, md)
        log(f"wrote {path} and its section of {path.parent / 'SUMMARY.md'}")
    return 0 if ok and not result["leftovers"] else 1


if __name__ == "__main__":
    sys.exit(main())
