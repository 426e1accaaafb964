"""The OpenAPI schema (/api/schema/) against the real API: schemathesis generates requests for
every operation in it and sends each twice, with a tenant's token and with an operator's, over
HTTP to a live server on loopback (pytest-django's live_server: a real threaded WSGI server in this
process, as the browser tests use), and checks every answer: no 5xx, a status code the schema
names for that operation, the content type and headers it names, and a body that fits its
schema (errors included: {"detail", "code", "fields"}).

Half of the generated requests keep schemathesis' own path values (random UUIDs and names:
404s), the other half are pointed at real objects of the world (the tenant's running server,
its account and service, an operation, a tenant, a plan, a template, a pool, a node, a member), so the views'
real answers are checked too, writes included (the operations they queue are recorded, not
run: `queued`). Examples per operation are few (MAX_EXAMPLES) to keep the run short; no
shrinking. The schema is the same for every signed-in user, so each case is generated once and
sent with both tokens, the tenant's first: generating them was most of the test's time, and
the derandomized runs of one test per token generated the same cases twice.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from types import SimpleNamespace

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Per operation and mode; API_SCHEMA_EXAMPLES=200 searches deeper by hand (the CI's run stays short:
# 4 instead of 6 gave its 30 minutes back about 40 s).
MAX_EXAMPLES = int(os.environ.get("API_SCHEMA_EXAMPLES", "4"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_world(offline_world, django_user_model, settings):
    """offline_world with a running server of acme (alice's) with an address, an operation,
    an account and a service; a rejected request; generous rate limits."""
    from vservers.models import GuestAccount, Operation, OperationKind, Service, State, VirtualServer

    settings.PANEL_API_RATE = {"requests": 100_000, "window": 60}
    w = offline_world
    server = VirtualServer.objects.create(
        tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small, template=w.busybox, node=w.node,
        state=State.RUNNING, requested_plan=w.medium,
    )
    w.pool.allocate(server)
    operation = Operation.objects.create(server=server, kind=OperationKind.PROVISION, requested_by=w.operator,
                                         error="it failed", detail="Traceback: for operators")
    account = GuestAccount(server=server, name="www", uid=1000, home="/home/www")
    account.shell = "/bin/sh"
    account.save()
    Service.objects.create(server=server, name="httpd", state="run", pid=42)
    VirtualServer.objects.create(tenant=w.acme, name="old", hostname="old.acme.test", plan=w.small,
                                 template=w.busybox, state=State.REJECTED, state_reason="not now")
    return SimpleNamespace(**vars(w), server=server, operation=operation)


def real_values(w) -> dict[str, list]:
    """Real path values, for the half of the cases pointed at the world's objects."""
    return {
        "uuid": [w.server.uuid, w.operation.uuid, w.acme.uuid, w.small.uuid],
        "name": ["www", "httpd", "busybox", w.node.name],
        "pk": [w.pool.pk],
        "user_id": [w.alice.pk],  # acme's only admin: her role and removal are refused (409)
    }


def check_operation(operation, mode, base_url: str, session, tokens: dict[str, dict], values: dict,
                    seen: dict[str, Counter]) -> None:
    """MAX_EXAMPLES cases of OPERATION in MODE (positive: what the schema allows; negative:
    what it does not), every other one pointed at real objects, each sent with every one of
    TOKENS' headers; raises on the first failure."""
    turn = itertools.count()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case):
        if next(turn) % 2 and case.path_parameters:
            for name in case.path_parameters:
                choices = values.get(name)
                if choices:
                    case.path_parameters[name] = str(choices[next(turn) % len(choices)])
        for who, headers in tokens.items():
            try:
                response = case.call(base_url=base_url, session=session, headers=headers)
                seen[who][response.status_code] += 1
                case.validate_response(response, checks=CHECKS, headers=headers)
            except (Exception, BaseExceptionGroup) as exc:
                exc.add_note(f"with {who}'s token")
                raise

    run()


@pytest.mark.slow
def test_the_api_answers_as_its_schema_says(api_world, live_server, make_token):
    import requests

    tokens = {who: {"Authorization": f"Bearer {make_token(getattr(api_world, who), scope='write', days=1)}"}
              for who in ("alice", "operator")}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/", headers=tokens["alice"])
    values = real_values(api_world)
    session = requests.Session()
    problems: list[str] = []
    operations = 0
    seen: dict[str, Counter] = {who: Counter() for who in tokens}  # answers by status code
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                check_operation(operation, mode, live_server.url, session, tokens, values, seen)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every operation's failures are collected
                notes = " ".join(getattr(exc, "__notes__", ()))
                problems.append(f"{operation.label} ({mode.value}, {notes}): {exc}")
    for who, answers in seen.items():
        print(f"{who}: {operations} operations, {answers.total()} requests, answers {dict(sorted(answers.items()))}")
    assert operations >= 50, operations
    # The world's objects were reached, reads and writes, with each token: not only 4xx were checked.
    for who, answers in seen.items():
        assert answers[200] >= 20 and answers[202] >= 5, (who, answers)
    assert not problems, "\n\n".join(problems)
