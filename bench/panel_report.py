"""The report of bench/panel.py: the operations' times taken apart, findings in words, the
Markdown tables and the plots, from the result dictionary and the worker's timings."""

from __future__ import annotations

import os
from collections import defaultdict

from bench import common
from bench.common import md_table, percentile, summary
from bench.panel_pages import PAGES
from bench.panel_world import (
    BRIDGE,
    CYCLE_TARGET_PER_S,
    OPS_PER_SERVER,
    PAGE_TARGET_MS,
    POLL,
    REUSE_TIMEOUT,
    STEPS,
    TARGET_SCALE,
)
from bench.profiling import CATEGORIES
from bench.report import f1, pyplot, save

# --- analysis -----------------------------------------------------------------------------

COMPONENTS = [
    ("commit_to_redis", "row saved → job in Redis (commit, push)"),
    ("queue_wait", "waiting in the queue"),
    ("rq_to_claim", "RQ picks it up → operation claimed"),
    ("engine", "engine calls (create/start/stop/delete, guest reads)"),
    ("handler_db", "handler's own database work and Python"),
    ("rq_finish", "operation finished → RQ done with the job"),
]


def components(op: dict, timings: dict[int, dict]) -> dict | None:
    need = ("created", "started", "finished", "rq_enqueued", "rq_started", "rq_ended")
    if any(op.get(k) is None for k in need):
        return None
    worker = timings.get(op["op"])
    engine = sum(e[2] for e in worker["events"] if e[0].startswith("engine")) if worker else None
    run = (op["finished"] - op["started"]) * 1000
    out = {
        "commit_to_redis": (op["rq_enqueued"] - op["created"]) * 1000,
        "queue_wait": (op["rq_started"] - op["rq_enqueued"]) * 1000,
        "rq_to_claim": (op["started"] - op["rq_started"]) * 1000,
        "engine": engine if engine is not None else float("nan"),
        "handler_db": run - engine if engine is not None else float("nan"),
        "rq_finish": (op["rq_ended"] - op["finished"]) * 1000,
        "total": (op["rq_ended"] - op["created"]) * 1000,
    }
    if worker:
        for label, _start, dur in worker["events"]:
            out[label] = out.get(label, 0.0) + dur
        out["run_operation"] = worker["run_ms"]
        for key in ("cpu_own_ms", "cpu_children_ms"):
            if key in worker:
                out[key] = worker[key]
    return out


def analyse_phase(phase: dict, timings: dict[int, dict]) -> None:
    """Per kind: summaries of the operation's times (from the rows, RQ and the worker's timers);
    between jobs: RQ's own time from one job's end to the next one's start while more waited."""
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for op in phase["operations"]:
        parts = components(op, timings)
        op["components_ms"] = {k: round(v, 3) for k, v in parts.items()} if parts else None
        if parts:
            by_kind[op["kind"]].append(parts)
    stats = {}
    for kind in STEPS:
        rows = by_kind.get(kind, [])
        keys = sorted({k for r in rows for k in r})
        stats[kind] = {k: summary([r[k] for r in rows if k in r and r[k] == r[k]]) for k in keys}
        stats[kind]["n"] = len(rows)
    phase["per_kind_ms"] = stats
    ordered = sorted((op for op in phase["operations"] if op.get("rq_started") and op.get("rq_ended")),
                     key=lambda op: op["rq_started"])
    gaps = []
    for prev, nxt in zip(ordered, ordered[1:], strict=False):
        # Only when the next job was already waiting: then the gap is the worker's own time.
        if nxt.get("rq_enqueued") and nxt["rq_enqueued"] < prev["rq_ended"]:
            gaps.append((nxt["rq_started"] - prev["rq_ended"]) * 1000)
    phase["between_jobs_ms"] = summary(gaps)


# --- report -------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    info = result["host"]
    out = [
        "## Panel: list pages, operations through the queue, approval → HTTP",
        "",
        common.host_line(info) + f", "
        f"commit {info['git_commit']}" + (f" (+ {len(info['uncommitted'])} uncommitted files of the panel/engine, "
                                          "listed in the JSON)" if info.get("uncommitted") else "") +
        f"; `bench/panel.py {' '.join(result['argv'])}` ({result['mode']}, "
        f"{result.get('run_s', 0):.0f} s; load average {result['loadavg_start'][0]:.1f} at the start, "
        f"{result.get('loadavg_end', [0])[0]:.1f} at the end: other work shares this machine). "
        "SQLite (WAL) in a temporary directory, a private redis-server on a "
        "Unix socket, one real worker process (manage.py nodeworker), busybox servers "
        f"on the installation's own bridge {BRIDGE}.",
    ]
    pages = result.get("pages")
    if pages:
        out += ["", "### List pages: server time", "",
                "In-process: `django.test.Client` (the WSGI handler with every middleware and the session, "
                "no network), after 3 warm-up requests. gunicorn: one sync worker on 127.0.0.1, its own "
                "request time (access log `%(D)s`) and the client's wall clock. The crowd: servers in 4 "
                f"tenants (the tenant admin sees a quarter), {OPS_PER_SERVER} finished operations per server. "
                f"Target: under {PAGE_TARGET_MS:.0f} ms at {TARGET_SCALE:,} servers.", ""]
        rows = []
        for scale in pages["scales"]:
            block = pages["by_scale"][str(scale)]
            guni = pages.get("gunicorn") if scale == TARGET_SCALE else None
            for key, label, *_ in PAGES:
                p = block["pages"][key]
                g = guni[key] if guni else None
                ok = "yes" if p["ms"]["median"] < PAGE_TARGET_MS else "**no**"
                rows.append([f"{scale:,} / {scale * OPS_PER_SERVER:,}", label, p["rows"], p["queries"],
                             f"{p['ms']['median']:.1f}", f"{p['ms']['p95']:.1f}",
                             f"{g['server_ms']['median']:.1f} / {g['server_ms']['p95']:.1f}" if g else "",
                             f"{g['wall_ms']['median']:.1f}" if g else "",
                             ok if scale == TARGET_SCALE else ""])
        out.append(md_table(["servers / operations", "page", "rows", "queries", "median ms", "p95 ms",
                             "gunicorn median / p95 ms", "client wall ms", f"< {PAGE_TARGET_MS:.0f} ms"], rows))
        prof = pages["by_scale"][str(TARGET_SCALE)]["pages"]
        cats = [label for label, _ in CATEGORIES]
        present = [c for c in cats if any(prof[k].get("profile", {}).get("categories_ms", {}).get(c) for k in prof)]
        if present:
            header = ["where the time goes (cProfile, ms per request, exclusive)"] + [k for k, *_ in PAGES]
            rows = [[c] + [f1(prof[k]["profile"]["categories_ms"].get(c, 0.0)) for k, *_ in PAGES] for c in present]
            rows.append(["**total (profiled)**"] + [f1(prof[k]["profile"]["total_ms"]) for k, *_ in PAGES])
            out += ["", f"At {TARGET_SCALE:,} servers, under cProfile (which inflates Python against C):", "",
                    md_table(header, rows)]
        split = pages["by_scale"][str(TARGET_SCALE)].get("rows_split")
        if split:
            rows = [[f"{who} ({v['rows']} rows)", f1(v["build_ms"]["median"]), f1(v["render_ms"]["median"]),
                     f"{v['build_per_row_ms']:.3f}", f"{v['render_per_row_ms']:.3f}"] for who, v in split.items()]
            out += ["", "The server rows of the first page without a profiler: `server_rows()` (queries, values, "
                    "meters) apart from rendering `_server_rows.html`:", "",
                    md_table(["rows of", "build median ms", "render median ms", "build ms/row", "render ms/row"],
                             rows)]
        out += ["", "![page times](panel-pages.png)"]
    queue = result.get("queue")
    if queue:
        out += ["", "### Operations through the queue", "",
                "A cycle is what a tenant and the operator do: request a server, approve it (the worker "
                "provisions it: engine create + start + a first read of its accounts and services), stop, "
                "delete; each step asked (through `vservers.actions` as the views call it) as soon as the "
                f"previous one finished. Target: {CYCLE_TARGET_PER_S:.0f} cycles per second.", ""]
        rows = []
        many = (queue.get("inflight_workers") or {}).get("workers")
        for key, label in (("sequential", "one cycle at a time, one worker"),
                           ("inflight", "all cycles in flight at once, one worker"),
                           ("inflight_workers", f"all cycles in flight at once, {many} workers")):
            ph = queue.get(key)
            if not ph:
                continue
            ok = "yes" if (ph["cycles_per_s"] or 0) >= CYCLE_TARGET_PER_S else "**no**"
            rows.append([label, ph["cycles"], f"{ph['wall_s']:.1f}", f"{ph['cycles_per_s']:.2f}",
                         f"{ph['ops_per_s']:.2f}", f"{ph['cycle_s']['median']:.2f}", f"{ph['cycle_s']['p95']:.2f}",
                         len(ph["failed_cycles"]), ok])
        out.append(md_table(["phase", "cycles", "wall s", "cycles/s", "operations/s", "cycle median s",
                             "cycle p95 s", "failed", f"≥ {CYCLE_TARGET_PER_S:.0f}/s"], rows))
        cpu_rows = []
        cpus = result["host"]["cpus"]
        phases = [("sequential", "one cycle at a time, one worker"),
                  ("inflight", "all cycles in flight at once, one worker"),
                  ("inflight_workers", f"all cycles in flight at once, {many} workers")]
        by = queue.get("by_workers") or {}
        phases += [(f"by:{n}", f"all cycles in flight at once, {n} workers") for n in sorted(by, key=int)
                   if int(n) != many]
        for key, label in phases:
            phase = by.get(key[3:]) if key.startswith("by:") else queue.get(key)
            cpu = (phase or {}).get("cpu_ms_per_cycle")
            if cpu:
                cpu_rows.append([label, f"{phase['cycles_per_s']:.2f}",
                                 *(f1(cpu[part]) for part in ("workers", "workers_own", "workers_children", "redis",
                                                              "bench", "other", "machine"))])
        if cpu_rows:
            out += ["", "CPU per cycle (ms; /proc: the worker processes with their reaped children, i.e. the "
                    "engine's forks and the guests, redis-server, the bench's own process, and the rest of the "
                    "machine: kernel threads such as the loop devices', and whatever else runs; a budget of "
                    f"{cpus * 1000 / CYCLE_TARGET_PER_S:.0f} ms per cycle on {cpus} CPUs at "
                    f"{CYCLE_TARGET_PER_S:.0f}/s):", "",
                    md_table(["phase", "cycles/s", "workers", "… own", "… reaped children", "redis", "bench",
                              "other", "whole machine"], cpu_rows)]
        for key, label in (("sequential", "one at a time"), ("inflight", "all in flight")):
            ph = queue.get(key)
            if not ph:
                continue
            rows = []
            for comp, text in [*COMPONENTS, ("total", "**row saved → RQ done**"),
                               ("cpu_own_ms", "CPU of the worker process during the job (getrusage)"),
                               ("cpu_children_ms", "CPU of what it reaped meanwhile (the engine's forks, guests)")]:
                cells = [text]
                for kind in STEPS:
                    s = ph["per_kind_ms"][kind].get(comp)
                    cells.append(f"{f1(s['median'])} / {f1(s['p95'])}" if s else "—")
                rows.append(cells)
            out += ["", f"Per operation, {label} (median / p95 ms; from the rows' and RQ's timestamps and "
                    "timers in the worker process):", "",
                    md_table(["part", *STEPS], rows)]
            engine_rows = []
            labels = sorted({k for kind in STEPS for k in ph["per_kind_ms"][kind] if k.startswith(("engine.", "db."))})
            for lab in labels:
                cells = [f"`{lab}`"]
                for kind in STEPS:
                    s = ph["per_kind_ms"][kind].get(lab)
                    cells.append(f1(s["median"]) if s else "")
                engine_rows.append(cells)
            if key == "sequential" and engine_rows:
                out += ["", "Inside the job (median ms):", "", md_table(["call", *STEPS], engine_rows)]
            if ph["between_jobs_ms"]["n"] >= 3:
                out += ["", f"The worker's own time between two jobs when the next one already waits ({label}): "
                        f"median {f1(ph['between_jobs_ms']['median'])} ms, p95 {f1(ph['between_jobs_ms']['p95'])} ms "
                        f"(n={ph['between_jobs_ms']['n']})."]
        rec = result.get("reconcile")
        if rec:
            out += ["", f"The worker's periodic reconcile job (every 30 s) ran {rec['runs']} times beside these, "
                    f"median {f1(rec['ms']['median'])} ms."]
        out += ["", "![operations](panel-queue.png)", "", "![in flight](panel-inflight.png)"]
    http = result.get("http")
    if http:
        s = http["approval_to_http_ms"]
        out += ["", "### Approval → HTTP 200", "",
                f"{http['runs']} runs, one server at a time: from the operator's approval (`actions.approve`: "
                "address, provision operation, commit, push to Redis) until the new server answers `GET /` "
                f"with 200 (polled every {POLL * 1000:.0f} ms once the panel shows it running, after `ip route get` "
                f"names {BRIDGE}: earlier requests would leave the host's ARP entry unresolved for a second).", "",
                md_table(["", "median ms", "p95 ms"], [
                    ["approval → HTTP 200", f1(s["median"]), f1(s["p95"])],
                    ["of which `approve()` itself", f1(http["approve_call_ms"]["median"]),
                     f1(http["approve_call_ms"]["p95"])],
                    ["approval → the panel shows it running", f1(http["running_ms"]["median"]),
                     f1(http["running_ms"]["p95"])],
                    ["approval → first TCP answer (connect or refusal)", f1(http["first_tcp_ms"]["median"]),
                     f1(http["first_tcp_ms"]["p95"])],
                ] + [[f"… {text}", f1(http["split_ms"][k]["median"]), f1(http["split_ms"][k]["p95"])]
                     for k, text in HTTP_SPLIT if k in http.get("split_ms", {})])]
        reuse = http.get("reuse")
        if reuse:
            what = (f"answered after {reuse['approval_to_http_ms']:.0f} ms" if reuse["approval_to_http_ms"] is not None
                    else f"did **not** answer within {REUSE_TIMEOUT:.0f} s")
            out += ["", f"Each run above had a fresh address. A server approved right after the others were "
                    f"deleted gets the lowest address again ({reuse['ip']}, whose last owner the host had just "
                    f"talked to): it {what} ({reuse['http_attempts']} attempts)."]
    prof = result.get("worker_profile")
    if prof:
        p = prof["profile"]
        rows = [[c, f1(v)] for c, v in p["categories_ms"].items() if v >= 0.05]
        rows.append(["**total (profiled)**", f1(p["total_ms"])])
        out += ["", f"### The worker's time per job (cProfile, {prof['jobs']} jobs in a PanelWorker in the "
                "bench's process, after the worker process stopped; `execute_job` and the dequeue only)", "",
                md_table(["category (exclusive time)", "ms per job"], rows), "",
                md_table(["function (cumulative)", "ms per job", "calls per job"],
                         [[label, f1(v["cum_ms"]), v["calls"]] for label, v in p.get("watched", {}).items()])]
    notes = result.get("setup_notes", []) + result.get("notes", [])
    if notes:
        out += ["", "Notes: " + " ".join(notes)]
    findings = result.get("findings")
    if findings:
        out += ["", "### Findings", ""] + [f"- {line}" for line in findings]
    problems = result.get("leftovers")
    out += ["", "Cleanup: " + ("nothing left behind." if not problems else "LEFT BEHIND: " + "; ".join(problems))]
    return "\n".join(out) + "\n"


HTTP_SPLIT = [
    ("to_claim", "approval → the worker claims the operation"),
    ("create", "engine create"),
    ("start", "engine start"),
    ("start_to_http", "start returned → first 200 (negative: answered before start returned)"),
]


def analyse_http(http: dict, timings: dict[int, dict]) -> None:
    split: dict[str, list[float]] = defaultdict(list)
    for s in http["samples"]:
        if s.get("started") is None:
            continue
        split["to_claim"].append((s["started"] - s["approved_at"]) * 1000)
        worker = timings.get(s["op"])
        if not worker:
            continue
        for label, start, dur in worker["events"]:
            if label == "engine.create":
                split["create"].append(dur)
            if label == "engine.start":
                split["start"].append(dur)
                split["start_to_http"].append((s["http_at"] - (start + dur / 1000)) * 1000)
        s["worker_events"] = worker["events"]
    http["split_ms"] = {k: summary(v) for k, v in split.items()}
    http["running_ms"] = summary([s["running_ms"] for s in http["samples"]])
    http["first_tcp_ms"] = summary([s["first_tcp_answer_ms"] for s in http["samples"]
                                    if s.get("first_tcp_answer_ms") is not None])


def findings(result: dict) -> list[str]:
    """The figures against the targets, in words (the report adds the causes)."""
    lines = []
    pages = result.get("pages")
    if pages:
        block = pages["by_scale"].get(str(TARGET_SCALE), {}).get("pages", {})
        slow = [f"{k} ({v['ms']['median']:.0f} ms)" for k, v in block.items() if v["ms"]["median"] >= PAGE_TARGET_MS]
        fast = [k for k, v in block.items() if v["ms"]["median"] < PAGE_TARGET_MS]
        lines.append(f"List pages at {TARGET_SCALE:,} servers: under {PAGE_TARGET_MS:.0f} ms: "
                     f"{', '.join(fast) or 'none'}" + (f"; over: {', '.join(slow)}." if slow else "."))
    queue = result.get("queue")
    if queue:
        for key, how in (("sequential", "one cycle at a time: each stop is asked right after its provision "
                                        "finished"),
                         ("inflight", "all in flight: a server has run for seconds when its stop comes")):
            ph = queue.get(key)
            if not ph:
                continue
            kinds = ph["per_kind_ms"]
            engine = {k: kinds[k].get("engine", {}).get("median") for k in STEPS}
            lines.append(f"{key} ({how}): {ph['cycles_per_s']:.2f} cycles/s against {CYCLE_TARGET_PER_S:.0f}. "
                         "Engine calls per cycle (medians): " +
                         ", ".join(f"{k} {f1(v)} ms" for k, v in engine.items()) + ".")
        ph = queue.get("sequential")
        if ph:
            # What the panel and RQ add to one operation, the engine's calls taken out (queue wait
            # counts: in one-at-a-time mode it is the worker getting to the job).
            overhead = [op["components_ms"]["total"] - op["components_ms"]["engine"] for op in ph["operations"]
                        if op.get("components_ms") and op["components_ms"].get("engine") is not None]
            if overhead:
                med = percentile(overhead, 50)
                lines.append(f"The panel and RQ add a median {med:.0f} ms to each operation around the engine's "
                             f"calls (row saved → RQ done, minus the engine), so {len(STEPS)} operations per cycle "
                             f"alone allow at most {1000 / (len(STEPS) * med):.1f} cycles/s with one worker.")
        many = queue.get("inflight_workers")
        if many:
            lines.append(f"With {many['workers']} worker processes on the queue: {many['cycles_per_s']:.2f} cycles/s "
                         f"against {CYCLE_TARGET_PER_S:.0f}; on {os.cpu_count()} CPUs the workers' Python and the "
                         "engine's forks share the same cores.")
        by = queue.get("by_workers")
        if by:
            lines.append("Cycles/s by worker processes (all in flight): " + ", ".join(
                f"{n}: {ph['cycles_per_s']:.2f}" for n, ph in sorted(by.items(), key=lambda kv: int(kv[0])))
                + " (PANEL_NODE_WORKERS' default is twice the CPUs, at most 8).")
    http = result.get("http")
    if http and http.get("reuse"):
        reuse = http["reuse"]
        if reuse["approval_to_http_ms"] is None:
            lines.append(f"A new server on a just-freed address ({reuse['ip']}) did not answer the host within "
                         f"{REUSE_TIMEOUT:.0f} s: the host kept the old owner's neighbour (ARP) entry.")
    return lines


def plots(result: dict) -> list[str]:
    plt = pyplot()
    made = []
    pages = result.get("pages")
    if pages:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        keys = [k for k, *_ in PAGES]
        scales = pages["scales"]
        series = [(f"{s:,} servers (in-process)", [pages["by_scale"][str(s)]["pages"][k]["ms"] for k in keys])
                  for s in scales]
        if pages.get("gunicorn"):
            series.append((f"{TARGET_SCALE:,} servers (gunicorn)", [pages["gunicorn"][k]["server_ms"] for k in keys]))
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(keys))]
            ax.bar(xs, [v["median"] for v in values], width, label=label)
            ax.scatter(xs, [v["p95"] for v in values], marker="_", color="black", s=80, zorder=3)
        ax.axhline(PAGE_TARGET_MS, color="red", linestyle="--", linewidth=1, label=f"target {PAGE_TARGET_MS:.0f} ms")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k.replace("_", "\n") for k in keys])
        ax.set_ylabel("server time, ms (bar: median, tick: p95)")
        ax.set_title("Panel list pages")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = save(fig, common.RESULTS_DIR / "panel-pages.png")
        made.append(path.name)
    queue = result.get("queue")
    if queue:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 1]})
        ax = axes[0]
        labels, bottoms = [], []
        bars = []
        # The queue wait (seconds when all are in flight) would dwarf the rest: left out here.
        shown = [(c, text) for c, text in COMPONENTS if c != "queue_wait"]
        for key in ("sequential", "inflight"):
            ph = queue.get(key)
            if not ph:
                continue
            for kind in STEPS:
                labels.append(f"{kind}\n{key}")
                bars.append([ph["per_kind_ms"][kind].get(c, {}).get("median", 0.0) or 0.0 for c, _ in shown])
        bottoms = [0.0] * len(bars)
        for ci, (_comp, text) in enumerate(shown):
            values = [b[ci] if b[ci] == b[ci] else 0.0 for b in bars]
            ax.bar(range(len(bars)), values, bottom=bottoms, label=text)
            bottoms = [x + y for x, y in zip(bottoms, values, strict=True)]
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("ms (medians)")
        ax.set_title("One operation, without its wait in the queue (medians)")
        ax.legend(fontsize=7)
        ax = axes[1]
        http = result.get("http")
        if http:
            values = [s["approval_to_http_ms"] for s in http["samples"]]
            ax.scatter([0] * len(values), values, alpha=0.6)
            ax.axhline(http["approval_to_http_ms"]["median"], color="black", linewidth=1, label="median")
            ax.set_xticks([])
            ax.set_ylim(bottom=0)
            ax.set_ylabel("ms")
            ax.set_title("approval → HTTP 200")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = save(fig, common.RESULTS_DIR / "panel-queue.png")
        made.append(path.name)
        ph = queue.get("inflight")
        if ph and ph["operations"]:
            fig, ax = plt.subplots(figsize=(10, 5))
            base = min(op["created"] for op in ph["operations"] if op["created"])
            colors = {"provision": "tab:green", "stop": "tab:orange", "delete": "tab:red"}
            ops = sorted(ph["operations"], key=lambda op: (op["started"] or 0))
            for y, op in enumerate(ops):
                if op["started"] is None or op["finished"] is None:
                    continue
                ax.plot([op["created"] - base, op["started"] - base], [y, y], color="lightgray", linewidth=1)
                ax.plot([op["started"] - base, op["finished"] - base], [y, y], color=colors[op["kind"]], linewidth=3)
            for kind, color in colors.items():
                ax.plot([], [], color=color, linewidth=3, label=f"{kind} running")
            ax.plot([], [], color="lightgray", label="queued")
            ax.set_xlabel("s since the first request")
            ax.set_ylabel("operation (by start)")
            ax.set_title(f"{ph['cycles']} cycles in flight, one worker: {ph['cycles_per_s']:.2f} cycles/s")
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = save(fig, common.RESULTS_DIR / "panel-inflight.png")
            made.append(path.name)
    return made


def strip_samples(result: dict) -> None:
    """Keep the JSON readable: no per-request samples beyond 100 per page."""
    for scale in result.get("pages", {}).get("by_scale", {}).values():
        for page in scale["pages"].values():
            if len(page.get("samples_ms", [])) > 100:
                page.pop("samples_ms")
