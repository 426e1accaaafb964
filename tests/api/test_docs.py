"""docs/api.md, run: every curl call in its sh blocks, in order, with real curl (an argument
list, no shell) against a live server, as a tenant admin and an operator with tokens made the
way the token page makes them, and a real worker, Redis and engine behind it. So the guide
cannot go stale, and the API is checked end to end: a server is requested, approved,
provisioned on a real busybox server, stopped and started again (it answers HTTP), gets an
account, and the operation's output is read back.

The test only fills in the guide's variables ($PANEL, $TOKEN, $OPERATOR_TOKEN, and $SERVER and
$OPERATION from the answers before, as a reader would) and adds curl's options to print the
status code; between calls it lets the worker run what a 202 queued.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
VARIABLES = ("PANEL", "TOKEN", "OPERATOR_TOKEN", "SERVER", "OPERATION")
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def documented_calls(text: str) -> list[list[str]]:
    """The curl commands of the sh blocks, continuation lines joined, as argument lists."""
    calls = []
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("curl "):
                calls.append(shlex.split(line))
    return calls


def fill(args: list[str], values: dict[str, str]) -> list[str]:
    def one(arg: str) -> str:
        # Longest names first: $OPERATOR_TOKEN is not $OPERATOR... nor $TOKEN.
        for name in sorted(VARIABLES, key=len, reverse=True):
            if f"${name}" in arg:
                assert name in values, f"the guide uses ${name} before saying where it comes from"
                arg = arg.replace(f"${name}", values[name])
        assert "$" not in arg, arg
        return arg

    return [one(arg) for arg in args]


def test_the_guide_has_a_call_for_each_common_task():
    calls = [" ".join(call) for call in documented_calls(DOC.read_text())]
    for task in ("/api/v1/me/", "-X POST .*/api/v1/servers/$", "/approve/", "/stop/", "/start/", "/accounts/",
                 "/api/v1/operations/\\$OPERATION/"):
        assert any(re.search(task, call) for call in calls), f"no call for {task}"
    assert all(call[0] == "curl" for call in documented_calls(DOC.read_text()))


def _drain_until(drain, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the worker did not get there"
        drain()
        time.sleep(0.1)


@pytest.mark.slow
def test_every_call_in_the_guide_works(world, drain, http, live_server, make_token):
    from vservers.models import GuestAccount, Operation, OperationStatus, State, TemplateBuild, VirtualServer

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (make install-test)")
    values = {
        "PANEL": live_server.url,
        "TOKEN": make_token(world.alice, scope="write"),
        "OPERATOR_TOKEN": make_token(world.operator, scope="write"),
    }
    calls = documented_calls(DOC.read_text())
    assert len(calls) >= 9, calls
    for documented in calls:
        args = fill(documented[1:], values)
        done = subprocess.run(["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", *args],
                              capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, f"{shlex.join(documented)}: {done.stderr}"
        body, _, status = done.stdout.rpartition("\n")
        assert status.startswith("2"), f"{shlex.join(documented)}: {status} {body}"
        answer = json.loads(body) if body else {}
        url = args[-1]
        if url.endswith("/api/v1/servers/") and "POST" in args:
            values["SERVER"] = answer["uuid"]
        if status == "202" and "queued" in answer:  # a template's builds, one per node
            for build in answer["queued"]:
                _drain_until(drain, lambda uuid=build["uuid"]: TemplateBuild.objects.get(uuid=uuid).status in (
                    OperationStatus.SUCCEEDED, OperationStatus.FAILED))
                row = TemplateBuild.objects.get(uuid=build["uuid"])
                assert row.status == OperationStatus.SUCCEEDED, row.error + "\n" + row.detail
        elif status == "202":
            values["OPERATION"] = answer["uuid"]
            operation = Operation.objects.get(uuid=answer["uuid"])
            _drain_until(drain, lambda op=operation: Operation.objects.get(pk=op.pk).status in (
                OperationStatus.SUCCEEDED, OperationStatus.FAILED))
            operation.refresh_from_db()
            assert operation.status == OperationStatus.SUCCEEDED, operation.error + "\n" + operation.output

    # What the calls did, on the real server.
    server = VirtualServer.objects.get(uuid=values["SERVER"])
    assert (server.name, server.tenant, server.state) == ("shop", world.acme, State.RUNNING)
    assert list(server.operations.order_by("created").values_list("kind", flat=True)) == [
        "provision", "stop", "start", "account_add", "snapshot_create", "reinstall"]
    # The account was added (its password gone from the operation's params), then the guide's
    # last call reinstalled the server, which wiped its own files: carol with them.
    added = server.operations.get(kind="account_add")
    assert (added.status, added.params) == (OperationStatus.SUCCEEDED, {"account": "carol"})
    assert not GuestAccount.objects.filter(server=server, name="carol").exists()
    assert server.snapshots.count() == 1
    http.wait(server.ip_list()[0])
    assert http.get(server.ip_list()[0])[0] == 200
    last = Operation.objects.get(uuid=values["OPERATION"])
    assert (last.kind, last.status) == ("reinstall", OperationStatus.SUCCEEDED)
