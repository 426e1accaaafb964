"""`vserver` as whole processes (issue 17): `--help`, `list`, and `vserver start X && vserver stop X`
beside `lxc-start -n Y && lxc-stop -k -n Y`, each a fresh process as an operator types it. Our
stop is a clean halt (the guest's init shuts its services down); `vserver stop --kill X` is the
like of `lxc-stop -k`, and both pairs are timed. `vserver exec X true` beside
`lxc-attach -n Y -- true`, both servers running: a command run inside (the resident server
takes it when none of the caller's streams is a terminal, as here).

Run as root from the repository root::

    .venv/bin/python bench/cli.py --quick                    # 30 runs of each (make bench)
    .venv/bin/python bench/cli.py --quick --baseline db92365 # and the CLI of that commit, interleaved
    .venv/bin/python bench/cli.py --smoke                    # 3 runs, writes no results

Interleaved A/B: every round runs each variant once, in an order that alternates between rounds,
so the host's load (other jobs on its two cores) falls on all of them alike; the tables give
medians. `--baseline REV` exports `vservers/` of REV (git archive) and runs the same console
script with it first on PYTHONPATH, so both CLIs use one venv and one installation. The
importtime rows are the minimum over a few runs of `python -X importtime` (per module,
cumulative), for the report's before/after.

Its own installation (root, bridge vsbenchcli0, 198.18.248.0/22) with a few stopped busybox
servers; LXC's busybox container comes from bench/lxc.py's Lab on LXC's own bridge (the
benchmarks' LXC bridge, vsbenchlxc0: each on a Linux bridge of its own, alike). Everything is
removed at the end, also on SIGINT/SIGTERM. Python writes its bytecode caches in the warm-up
round (PYTHONDONTWRITEBYTECODE is dropped from the children's environment): an installed CLI
runs from them.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.common import BENCH_ENV, HOST_ENV, log, md_table, ms, summary  # noqa: E402

CLI_ENV = {
    **BENCH_ENV,
    "VSERVER_ROOT": "/var/lib/vservers-bench-cli",
    "VSERVER_BRIDGE": "vsbenchcli0",
    "VSERVER_GATEWAY": "198.18.248.1/22",
    "VSERVER_UID_BASE": "2000000000",
}
NETWORK = ipaddress.ip_network("198.18.248.0/22")
SUBJECT = "bcli-x"  # started and stopped; the others stay stopped
STOPPED = 4
VSERVER = Path(sys.executable).parent / "vserver"
# now: each command in its own process; resident: through `vserver serve` (resident.py).
VARIANTS = ("resident", "now", "baseline", "lxc")
MODES = {"smoke": 3, "quick": 30, "full": 60}
IMPORTTIME_RUNS = 15
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def child_env(baseline: Path | None = None, resident: bool = False) -> dict[str, str]:
    """The CLI's environment: the host's plain one (Debian's default locale), the installation,
    bytecode caches allowed; with BASELINE its vservers/ first on the path. Without RESIDENT the
    commands run in their own process while the resident server runs (VSERVER_RESIDENT=0)."""
    env = {**HOST_ENV, "LANG": "C.UTF-8", **CLI_ENV}
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline)
    if not resident:
        env["VSERVER_RESIDENT"] = "0"
    return env


class Resident:
    """`vserver serve` for the installation, for the variant whose commands go through it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(VSERVER), "serve"], env=child_env(resident=True), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()  # its first line says the socket accepts
        if "cli.sock" not in ready:
            self.stop()
            raise RuntimeError(f"vserver serve did not start: {ready!r}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds ARGV took as a whole process; RuntimeError if it failed."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.strip()}")
    return took


def importtime(launcher: Path, args: list[str], env: dict[str, str], runs: int = IMPORTTIME_RUNS) -> dict:
    """Modules imported by `vserver ARGS` (LAUNCHER) and the top ones by cumulative time (minimum of RUNS)."""
    return _importtime_summary([subprocess.run([sys.executable, "-X", "importtime", str(launcher), *args], env=env,
                                               capture_output=True, text=True).stderr for _ in range(runs)])


def _importtime_summary(outputs: list[str], floor: set[str] | frozenset[str] = frozenset()) -> dict:
    """The minimum per module over OUTPUTS (stderr of `python -X importtime` runs); the top-level
    sum also without the modules in FLOOR (what the bare interpreter imports: site, encodings),
    which the interpreter's start already counts."""
    best: dict[str, int] = {}
    top_level: set[str] = set()
    for err in outputs:
        for match in map(_IMPORT_LINE.match, err.splitlines()):
            if match:
                name, cumulative = match[4], int(match[2])
                best[name] = min(best.get(name, cumulative), cumulative)
                if len(match[3]) == 1:
                    top_level.add(name)
    top = sorted(((best[n], n) for n in top_level), reverse=True)[:12]
    return {"modules": len(best), "top_level_total_ms": round(sum(best[n] for n in top_level) / 1000, 1),
            "beyond_interpreter_ms": round(sum(best[n] for n in top_level - floor) / 1000, 1),
            "top": [{"module": n, "cumulative_ms": round(us / 1000, 2)} for us, n in top],
            "pyroute2": any(n == "pyroute2" or n.startswith("pyroute2.") for n in best)}


def verb_importtimes(launcher: Path, env: dict[str, str], runs: int = 5) -> dict[str, dict]:
    """`python -X importtime` of start, stop and stop --kill of the subject (RUNS cycles of start,
    stop, start, stop --kill; minimum per module), the modules beyond the bare interpreter's
    summed: a process's imports, for the breakdown of its whole time."""
    floor_env = {**HOST_ENV, "LANG": "C.UTF-8"}
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=floor_env, capture_output=True,
                          text=True).stderr
    floor = {m[4] for m in map(_IMPORT_LINE.match, bare.splitlines()) if m}
    cycle = (("start", ["start", SUBJECT]), ("stop", ["stop", SUBJECT]), ("start", ["start", SUBJECT]),
             ("kill", ["stop", "--kill", SUBJECT]))
    outputs: dict[str, list[str]] = {}
    for _ in range(runs):
        for what, args in cycle:
            done = subprocess.run([sys.executable, "-X", "importtime", str(launcher), *args], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"vserver {' '.join(args)} failed under -X importtime: {done.stderr[-500:]}")
            outputs.setdefault(what, []).append(done.stderr)
    return {what: _importtime_summary(errs, floor) for what, errs in outputs.items()}


def export_baseline(rev: str, into: Path) -> Path:
    """vservers/ of commit REV under INTO (git archive | tar, argument lists only)."""
    archive = subprocess.run(["git", "-C", str(common.REPO), "archive", rev, "vservers"], capture_output=True,
                             check=True).stdout
    into.mkdir(exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def baseline_launcher(rev: str, into: Path) -> Path:
    """A console script like pip's for the `vserver` entry point of commit REV (its
    pyproject.toml's), as INTO/vserver: the venv's own script calls today's entry point, which an
    older cli.py may not have."""
    import tomllib

    pyproject = subprocess.run(["git", "-C", str(common.REPO), "show", f"{rev}:pyproject.toml"], capture_output=True,
                               text=True, check=True).stdout
    module, function = tomllib.loads(pyproject)["project"]["scripts"]["vserver"].split(":")
    script = into / "vserver"
    script.write_text(f"#!{sys.executable}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
                      f"from {module} import {function}\nif __name__ == '__main__':\n"
                      f"    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                      f"    sys.exit({function}())\n")
    script.chmod(0o755)
    return script


class Lxc:
    """One busybox container of bench/lxc.py's making, started and killed by whole lxc-* processes."""

    NAME = "vsbl-cli"

    def __init__(self) -> None:
        from bench import lxc

        self.lxc = lxc
        self.pivot_ours = False

    def set_up(self) -> None:
        from vservers.engine import network

        lxc = self.lxc
        crashed = lxc.LXC_PATH.exists() or lxc.bridge_ports() is not None or bool(lxc.lxc_cgroups(ours=True))
        self.pivot_ours = not lxc.pivot_dirs() or (crashed and not lxc.lxc_cgroups(ours=False))
        if crashed:
            left = lxc.cleanup(self.pivot_ours)
            if left:
                raise RuntimeError(f"could not clean an earlier LXC run: {left}")
            common.install_signal_handlers()
        network.ensure_bridge(lxc.LXC_BRIDGE, lxc.GATEWAY)
        lab = lxc.Lab()
        lab.create_base()
        lab.create(self.NAME, 7, "dir")

    def argv(self, verb: str) -> list[str]:
        extra = {"stop": ["-k"], "attach": ["--", "true"]}.get(verb, [])
        return [f"lxc-{verb}", "-P", str(self.lxc.LXC_PATH), "-n", self.NAME, *extra]

    def clean(self) -> list[str]:
        return self.lxc.cleanup(self.pivot_ours)


def rounds(runs: int, variants: dict[str, dict[str, list[str]]], envs: dict[str, dict[str, str]],
           lxc: Lxc | None) -> dict[str, dict[str, list[float]]]:
    """RUNS rounds (after one warm-up round that is thrown away) of: --help and list of each CLI
    variant, then start+stop pairs of each and of LXC, the order alternating per round."""
    times: dict[str, dict[str, list[float]]] = {}

    def record(what: str, variant: str, seconds: float, keep: bool) -> None:
        if keep:
            times.setdefault(what, {}).setdefault(variant, []).append(seconds)

    for i in range(runs + 1):
        keep = i > 0
        order = list(variants) if i % 2 else list(reversed(variants))
        for what in ("help", "list"):
            for name in order:
                record(what, name, timed(variants[name][what], envs[name]), keep)
        pairs = [*order, "lxc"] if lxc is not None else order
        if i % 2:
            pairs.reverse()
        for name in pairs:
            if name == "lxc":
                assert lxc is not None
                start, stop = timed(lxc.argv("start"), HOST_ENV), timed(lxc.argv("stop"), HOST_ENV)
                # lxc-stop -k is LXC's only stop here: the like of both of ours.
                record("kill", name, stop, keep)
                record("start+kill", name, start + stop, keep)
            else:
                start = timed(variants[name]["start"], envs[name])
                stop = timed(variants[name]["stop"], envs[name])
                again = timed(variants[name]["start"], envs[name])
                kill = timed(variants[name]["kill"], envs[name])
                record("kill", name, kill, keep)
                record("start+kill", name, again + kill, keep)
            record("start", name, start, keep)
            record("stop", name, stop, keep)
            record("start+stop", name, start + stop, keep)
        # `vserver list` and `vserver exec X true` with the subject running, each CLI, and
        # `lxc-attach` with LXC's running (the starts and stops around them untimed). No stream
        # of these processes is a terminal, so the resident server takes exec too.
        timed(variants[order[0]]["start"], envs[order[0]])
        for name in order:
            record("list (1 running)", name, timed(variants[name]["list"], envs[name]), keep)
            record("exec", name, timed(variants[name]["exec"], envs[name]), keep)
        timed(variants[order[0]]["stop"], envs[order[0]])
        if lxc is not None:
            timed(lxc.argv("start"), HOST_ENV)
            record("exec", "lxc", timed(lxc.argv("attach"), HOST_ENV), keep)
            timed(lxc.argv("stop"), HOST_ENV)
        if i % 10 == 0:
            log(f"round {i} of {runs} done")
    return times


def markdown(result: dict, plot_name: str | None) -> str:
    figures = result["medians_ms"]
    names = [n for n in VARIANTS if any(n in v for v in figures.values())]
    header = ["whole process (median ms)", *[result["labels"][n] for n in names]]
    rows = []
    for what, label in (("help", "`vserver --help`"), ("list", f"`vserver list` ({STOPPED + 1} stopped)"),
                        ("list (1 running)", f"`vserver list` ({STOPPED} stopped, 1 running)"),
                        ("start", "start"), ("stop", "stop (clean halt)"), ("start+stop", "start && stop"),
                        ("kill", "stop --kill (LXC: lxc-stop -k)"), ("start+kill", "start && stop --kill"),
                        ("exec", "`vserver exec X true` (LXC: `lxc-attach -n Y -- true`), running")):
        row = figures.get(what, {})
        rows.append([label, *[report.f1(row.get(n)) for n in names]])
    lines = [
        "## The CLI as whole processes (bench/cli.py)",
        "",
        f"Medians of {result['runs']} interleaved rounds, each command a fresh process (`{VSERVER.name}` console "
        f"script of the venv, LANG=C.UTF-8, bytecode cached). LXC: `lxc-start -n Y` / `lxc-stop -k -n Y` on a "
        "busybox container (bench/lxc.py's), ours `vserver start X` / `vserver stop X` (clean halt: the guest's "
        "init stops its services) or `vserver stop --kill X` (everything killed at once, as -k does) on a busybox "
        "server. Floor: the venv's `python -c pass` "
        f"{report.f1(result['floor_ms']['venv python -c pass'])} ms, Debian's `/usr/bin/python3 -c pass` "
        f"{report.f1(result['floor_ms']['system python -c pass'])} ms, the venv's `python -S -c pass` (the "
        f"launcher's interpreter, without site) {report.f1(result['floor_ms'].get('venv python -S -c pass'))} ms. "
        "Resident: the commands handed to `vserver serve` (vservers/engine/resident.py), which runs each in "
        "a fork of itself with the engine loaded; own process: the same launcher with VSERVER_RESIDENT=0. "
        f"{result['host']['date']}, commit "
        f"{result['host']['git_commit']}; load average {result['load']['before']} before the rounds, "
        f"{result['load']['after']} after.",
        "",
        md_table(header, rows),
        "",
    ]
    ratios = result.get("ratios", {})
    if ratios:
        lines += ["Ratios (medians): " + "; ".join(f"{k} {v:.2f}×" for k, v in ratios.items()), ""]
    lines += ["`python -X importtime` (minimum of a few runs; modules imported, and the top-level "
              "imports by cumulative ms):", ""]
    for key, it in result["importtime"].items():
        tops = ", ".join(f"{t['module']} {t['cumulative_ms']:.1f}" for t in it["top"][:6])
        lines.append(f"- {key}: {it['modules']} modules, {it['top_level_total_ms']} ms"
                     f"{', pyroute2 imported' if it['pyroute2'] else ''}: {tops}")
    breakdown = result.get("breakdown_ms", {})
    if breakdown:
        lines += ["", "Where a process's milliseconds go (medians of the rounds above; imports: the modules beyond "
                  "the bare interpreter's under `-X importtime`, minimum of a few runs, which that flag inflates "
                  "somewhat; the rest is the work and its waits, e.g. for the guest's shutdown or the kernel):", ""]
        header = ["now (ms)", "whole process", "interpreter (`python -c pass`)", "imports", "work and waits"]
        lines.append(md_table(header, [[label, *[report.f1(breakdown[what][k]) for k in
                                                  ("whole", "interpreter", "imports", "rest")]]
                                       for what, label in (("start", "start"), ("stop", "stop (clean halt)"),
                                                           ("kill", "stop --kill")) if what in breakdown]))
        lines.append("")
        for what, it in result.get("importtime_verbs", {}).items():
            tops = ", ".join(f"{t['module']} {t['cumulative_ms']:.1f}" for t in it["top"][:6])
            lines.append(f"- `{what}` imports {it['modules']} modules: {tops}")
    if plot_name:
        lines += ["", f"![CLI whole-process medians]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(result: dict) -> str:
    plt = report.pyplot()
    figures = result["medians_ms"]
    whats = [w for w in ("help", "list", "list (1 running)", "start+stop", "start+kill") if w in figures]
    names = [n for n in VARIANTS if any(n in figures[w] for w in whats)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + k * width for i in range(len(whats))]
        ax.bar(xs, [figures[w].get(name, 0) for w in whats], width, label=result["labels"][name])
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(whats))], whats)
    ax.set_ylabel("ms (median, whole process)")
    ax.set_title("vserver CLI as whole processes")
    ax.legend()
    fig.tight_layout()
    name = "cli.png"
    report.save(fig, common.RESULTS_DIR / name)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    for flag in MODES:
        mode.add_argument(f"--{flag}", action="store_const", dest="mode", const=flag, help=f"{MODES[flag]} rounds")
    parser.add_argument("--baseline", metavar="REV", help="also the CLI of commit REV, interleaved")
    parser.add_argument("--no-lxc", action="store_true", help="leave LXC out")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    runs = MODES[args.mode]
    write = args.write if args.write is not None else args.mode != "smoke"
    if os.geteuid() != 0:
        parser.error("must run as root")
    use_lxc = not args.no_lxc
    if use_lxc and shutil.which("lxc-start") is None:
        # Without it the ratios to LXC, which the targets table reads, would silently be absent.
        parser.error("lxc-start is not installed (`make bench` installs it); --no-lxc leaves LXC out")

    common.engine_env(CLI_ENV)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    from vservers.engine import Engine, templates
    from vservers.engine.config import EngineConfig

    engine = Engine(EngineConfig.from_env(CLI_ENV))
    common.install_signal_handlers()
    common.clean_earlier_run(engine, log)
    lxc = Lxc() if use_lxc else None
    result: dict = {"host": common.host_info(), "mode": args.mode, "runs": runs,
                    "uncommitted": common.uncommitted(["vservers", "bench/cli.py"]),
                    "labels": {"now": "now, in its process", "resident": "now, resident (vserver serve)",
                               "baseline": f"before ({args.baseline})", "lxc": "LXC"},
                    "load": {"before": round(os.getloadavg()[0], 2)}}
    tmp = Path(tempfile.mkdtemp(prefix="vservers-bench-cli-"))
    resident = Resident()
    ok = False
    try:
        envs = {"now": child_env(), "resident": child_env(resident=True)}
        launchers = {"now": VSERVER, "resident": VSERVER}
        if args.baseline:
            envs["baseline"] = child_env(export_baseline(args.baseline, tmp / "src"))
            launchers["baseline"] = baseline_launcher(args.baseline, tmp)
        # --timeout 0 is what --kill says, in words that a baseline from before --kill knows too.
        kill = {"now": ["--kill"], "resident": ["--kill"], "baseline": ["--timeout", "0"]}
        variants = {name: {"help": [cli, "--help"], "list": [cli, "list"], "start": [cli, "start", SUBJECT],
                           "stop": [cli, "stop", SUBJECT], "kill": [cli, "stop", *kill[name], SUBJECT],
                           "exec": [cli, "exec", SUBJECT, "true"]}
                    for name, cli in ((name, str(launchers[name])) for name in envs)}
        templates.build(engine.config, "busybox")
        for k in range(STOPPED):
            engine.create(f"bcli-{k}", "busybox", [common.address(k, NETWORK)])
        engine.create(SUBJECT, "busybox", [common.address(STOPPED, NETWORK)])
        engine.start(SUBJECT)
        common.check_route(common.address(STOPPED, NETWORK).split("/")[0], NETWORK, CLI_ENV["VSERVER_BRIDGE"])
        engine.stop(SUBJECT)
        if lxc is not None:
            lxc.set_up()
        resident.start()
        floor_env = {**HOST_ENV, "LANG": "C.UTF-8"}
        result["floor_ms"] = {
            "venv python -c pass": summary([ms(timed([sys.executable, "-c", "pass"], floor_env))
                                            for _ in range(max(runs, 10))])["median"],
            "system python -c pass": summary([ms(timed(["/usr/bin/python3", "-c", "pass"], floor_env))
                                              for _ in range(max(runs, 10))])["median"],
            # the launcher's interpreter (resident.LAUNCHER): what a served command costs at least
            "venv python -S -c pass": summary([ms(timed([sys.executable, "-S", "-c", "pass"], floor_env))
                                               for _ in range(max(runs, 10))])["median"],
        }
        times = rounds(runs, variants, envs, lxc)
        if resident.proc is None or resident.proc.poll() is not None:
            # It ends when the engine's files change (resident.py): the rounds ran in their own processes.
            raise RuntimeError("vserver serve ended during the rounds; its figures are not the resident server's")
        result["load"]["after"] = round(os.getloadavg()[0], 2)
        result["times_ms"] = {w: {n: [ms(v) for v in vs] for n, vs in per.items()} for w, per in times.items()}
        result["summary_ms"] = {w: {n: summary(vs) for n, vs in per.items()} for w, per in result["times_ms"].items()}
        result["medians_ms"] = {w: {n: s["median"] for n, s in per.items()} for w, per in result["summary_ms"].items()}
        med = result["medians_ms"]
        ratios = {}
        if "lxc" in med["start+stop"]:
            for name in ("now", "resident"):
                ratios[f"start && stop, {name} ÷ LXC"] = med["start+stop"][name] / med["start+stop"]["lxc"]
                ratios[f"start && stop --kill, {name} ÷ LXC"] = med["start+kill"][name] / med["start+kill"]["lxc"]
                ratios[f"exec, {name} ÷ LXC"] = med["exec"][name] / med["exec"]["lxc"]
        for what in ("help", "list", "start+stop", "start+kill", "exec"):
            ratios[f"{what}, resident ÷ now"] = med[what]["resident"] / med[what]["now"]
        if "baseline" in med["help"]:
            for what in ("help", "list", "start+stop", "start+kill", "exec"):
                ratios[f"{what}, now ÷ before"] = med[what]["now"] / med[what]["baseline"]
        result["ratios"] = ratios
        result["importtime"] = {}
        for name, env in envs.items():
            # Resident: the user's process only (command.py); the server imported the rest once.
            for what in ("--help", "list"):
                where = f" ({STOPPED + 1} stopped)" if what == "list" else ""
                key = f"{result['labels'][name]} `vserver {what}`{where}"
                result["importtime"][key] = importtime(launchers[name], [what], env)
        verbs = verb_importtimes(launchers["now"], envs["now"])
        result["importtime_verbs"] = verbs
        floor = result["floor_ms"]["venv python -c pass"]
        result["breakdown_ms"] = {
            what: {"whole": med[what]["now"], "interpreter": floor, "imports": verbs[what]["beyond_interpreter_ms"],
                   "rest": round(med[what]["now"] - floor - verbs[what]["beyond_interpreter_ms"], 1)}
            for what in ("start", "stop", "kill")}
        ok = True
    finally:
        log("cleaning up")
        resident.stop()
        left = common.cleanup_installation(engine, log)
        if lxc is not None:
            left += lxc.clean()
        shutil.rmtree(tmp, ignore_errors=True)
        result["leftovers"] = left
        if left:
            log("LEFT BEHIND: " + "; ".join(left))
    if not ok:
        return 1
    plot_name = plot(result) if write else None
    text = markdown(result, plot_name)
    report.show(result if args.mode == "smoke" else {k: v for k, v in result.items() if k != "times_ms"}, text)
    if write:
        log(f"results in {common.write_results('cli', result, text)}")
    return 2 if result["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
