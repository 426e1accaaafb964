"""The `vserver` CLI starts lean (issue 17, point 2): what a run imports, counted, never timed.

Each command runs in a fresh interpreter with `-X importtime`, which names every module the
run imports; the tests hold those names to what the verb needs. Budgets are module counts
measured on this machine (Debian 12, Python 3.11.2, the venv's editable install) plus a small
margin: a change that pulls a heavy module (pyroute2 ~160 ms, ctypes set-up, dataclass-heavy
engine modules) into these paths fails here, whatever the machine's speed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.engine.helpers import wait_for_http
from tests.leaks import TEST_ENV

REPO = Path(__file__).resolve().parents[2]
VSERVER = Path(sys.executable).parent / "vserver"  # the console script, as an operator runs it

# Measured 2026-12-07: --help 57 modules (117 before the lazy imports of 2026-12-06, 67 before
# --help built its verbs without their arguments), list on an empty installation 67 (156, 108
# before listing.py). Margin: 5.
HELP_BUDGET = 62
EMPTY_LIST_BUDGET = 72
# Kernel-side modules (ctypes structures, seccomp, namespaces, nftables, netlink) and libraries
# that no read-only verb needs.
HEAVY = ("pyroute2", "django", "ctypes", "vservers.engine.launch", "vservers.engine.seccomp",
         "vservers.engine.syscalls", "vservers.engine.userns", "vservers.engine.loopdev",
         "vservers.engine.firewall", "vservers.engine.network", "vservers.engine.capabilities")
# What building the parser may load of the engine: the CLI's own modules and its errors.
HELP_ENGINE = {"vservers.engine", "vservers.engine.cli", "vservers.engine.errors", "vservers.engine.command",
               "vservers.engine.cli_backup",
               "vservers.engine.cli_migrate"}
# What neither `vserver stop` nor `vserver stop --kill` imports (2026-12-07).
STOP_NEVER = {"vservers.engine.launch", "vservers.engine.seccomp", "vservers.engine.network", "vservers.engine.rtnl",
              "ctypes"}
_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)")


def imported(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `vserver ARGS` in a fresh interpreter under -X importtime: its result (stderr without
    the import lines) and the names of the modules it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(VSERVER), *args], capture_output=True,
                            text=True, env={**os.environ, **(env or TEST_ENV)}, cwd=REPO, timeout=60)
    names = {m[1] for m in map(_LINE.match, result.stderr.splitlines()) if m}
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not _LINE.match(line))
    return result, names


def heavy(names: set[str]) -> set[str]:
    return {n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY)}


def test_help_and_list_of_an_empty_installation_import_only_what_they_need(tmp_path):
    env = {**TEST_ENV, "VSERVER_ROOT": str(tmp_path / "root")}
    help_run, help_names = imported("--help", env=env)
    assert help_run.returncode == 0, help_run.stderr
    assert "snapshot" in help_run.stdout and "migrate" in help_run.stdout  # every verb is still listed
    assert {n for n in help_names if n.startswith("vservers.engine")} <= HELP_ENGINE - {
        "vservers.engine.cli_backup", "vservers.engine.cli_migrate"}  # their verbs' arguments: not for --help
    assert not heavy(help_names)
    assert len(help_names) <= HELP_BUDGET, sorted(help_names)

    list_run, list_names = imported("list", env=env)
    assert list_run.returncode == 0, list_run.stderr
    assert list_run.stdout.startswith("NAME ")
    assert not heavy(list_names)
    assert len(list_names) <= EMPTY_LIST_BUDGET, sorted(list_names)
    # A verb's parser still checks its arguments when only that verb's parser is built.
    bad, _ = imported("list", "--bogus", env=env)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_a_running_server_is_listed_started_stopped_and_killed_without_pyroute2(make_server):
    # Before issue 17 every start, stop and status imported pyroute2 (~160 ms of a 420 ms
    # start+stop pair); the requests they make go through rtnl, so none may import it now.
    make_server("lean1", "198.19.5.50/18")
    stopped = False
    for args in (("status", "lean1"), ("list",), ("stop", "lean1"), ("list",), ("start", "lean1")):
        result, names = imported(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert not {n for n in names if n == "pyroute2" or n.startswith("pyroute2.")}, args
        # OpenSSL's set-up (~3 ms; names are hashed by digest.py), typing (~2 ms), nor what only
        # a failure or a snapshot needs.
        assert not names & {"_hashlib", "typing", "subprocess", "traceback", "platform"}, (args, names)
        if args[0] == "stop":
            # Nor the machinery of starting, nor network (a stop leaves the veth to the kernel's
            # teardown of the netns), nor ctypes (loopdev's structures are only for attaching).
            assert not names & STOP_NEVER, (args, sorted(names & STOP_NEVER))
            stopped = True
        if args[0] == "list":
            assert ("lean1                stopped " in result.stdout) == stopped, result.stdout
            assert "198.19.5.50/18" in result.stdout
        if args[0] == "list" and stopped:
            # A stopped server is listed from its files: no Engine, no dataclasses (listing.py).
            assert not names & {"vservers.engine.lifecycle", "dataclasses", "pathlib"}, sorted(names)
        assert "vservers.engine.launch" in names or args[0] != "start"  # the probe saw the real start
    # exec (never served: it runs in the caller's process, and on its terminal) needs the
    # spawn into the guest, not the start's machinery: launch brought firewall, loopdev, json
    # and netlink along, and guest.py's one debug line logging (14 modules, 2026-12-08).
    ran, names = imported("exec", "lean1", "true")
    assert ran.returncode == 0, ran.stderr
    assert not names & {"vservers.engine.launch", "vservers.engine.firewall", "vservers.engine.network",
                        "vservers.engine.loopdev", "logging", "traceback"}, sorted(names)
    status, names = imported("status", "lean1")
    assert "state:    running" in status.stdout and "198.19.5.50/18" in status.stdout
    # Reading a running server's state loads neither the launch machinery nor seccomp.
    assert not names & {"vservers.engine.launch", "vservers.engine.seccomp", "vservers.engine.userns"}
    wait_for_http("198.19.5.50")  # and the start through the CLI really serves
    # A stop that kills (like lxc-stop -k) finds the veth still there as often as not, while the
    # kernel tears the namespace down: it leaves it to the kernel, so it needs no netlink at all.
    killed, names = imported("stop", "--kill", "lean1")
    assert killed.returncode == 0 and killed.stdout == "killed lean1\n", killed.stderr
    assert not {n for n in names if n == "pyroute2" or n.startswith("pyroute2.")}
    assert not names & STOP_NEVER, sorted(names & STOP_NEVER)
    assert "lean1                stopped " in imported("list")[0].stdout


def test_argparse_asks_gettext_once_per_phrase(monkeypatch):
    """`vserver --help` asked gettext 44 times for its 4 phrases, and each ask looks for a
    catalogue on disk (gettext.find); the CLI keeps each answer (cli._keep_argparse_phrases).
    Counted, not timed: the look-ups of two whole --help runs in this process."""
    import contextlib
    import gettext
    import io

    import pytest

    from vservers.engine import cli

    looked_up: list[str] = []
    find = gettext.find
    monkeypatch.setattr(gettext, "find", lambda *args, **kwargs: looked_up.append(args[0]) or find(*args, **kwargs))
    outputs = []
    for _run in range(2):
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
            cli.build_parser().parse_args(["--help"])
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1] and outputs[0].startswith("usage: vserver")
    assert len(looked_up) <= 4, looked_up  # the phrases new to this process, each once


def test_the_engine_needs_site_only_where_network_py_loads_it():
    """`vserver` runs without site (resident.LAUNCHER's -S); network.py loads it before it
    imports pyroute2. Every other engine module imports only the standard library and the
    engine, or a command in its own process would fail with ModuleNotFoundError."""
    import ast

    outside: dict[str, set[str]] = {}
    for path in sorted((REPO / "vservers" / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in (*sys.stdlib_module_names, "vservers"):
                    outside.setdefault(path.name, set()).add(name.split(".")[0])
    assert outside == {"network.py": {"pyroute2"}}, outside
    assert "\n_load_site()\n" in (REPO / "vservers" / "engine" / "network.py").read_text()
