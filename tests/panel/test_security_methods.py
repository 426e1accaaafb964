"""Only POST with a CSRF token changes anything, for every URL pattern there is.

The patterns come from the URL resolver (tests/panel/routes.py), the panel's own and Django's
(accounts/, admin/, django-rq's dashboard in the admin), so a view added later is covered
without a line here. Each is asked by the user who may use it (bob for his own objects, the
operator, the superuser in the admin, nobody for the sign-in pages), with every combination of
placeholder values:

1. a GET changes nothing: no row in any table (sessions aside), no queued job, no Redis key;
2. a POST without a CSRF token is refused by the CSRF check (403) and changes nothing; the
   same POST with a token gets past that check;
3. a view whose POST changes something answers a GET with 405, unless the GET is the page of
   that very form (a <form method="post"> that posts back to it); the panel's form pages
   (request a server, add a tenant, ...) show the form on GET and act on POST only.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from functools import partial

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH
from django.test import Client
from django.utils.crypto import get_random_string

from tests.panel.routes import API_PREFIX, SignedIn, actor, all_routes, candidates, data_for, security_world

ROUTES = all_routes()
# Session rows change with every sign-in and message; they are not what a request "does".
UNWATCHED = {"sessions.Session"}
CSRF_FAILURE = b"CSRF verification failed"
# The REST API's own check (DRF's SessionAuthentication) says it in JSON.
API_CSRF_FAILURE = b'"CSRF Failed: '


def refused_for_csrf(response) -> bool:
    return response.status_code == 403 and (CSRF_FAILURE in response.content or API_CSRF_FAILURE in response.content)


# django-rq's dashboard answers 500 for a worker, a scheduler or its placeholder model that
# are not there, and for requeueing a job that has not failed (staff only; crashes, not
# changes): these may answer 500 here, and must still change nothing and refuse POSTs
# without a token.
THIRD_PARTY_CRASHES = {
    "admin:django_rq_worker_details",  # ValueError: not a valid RQ worker key
    "admin:django_rq_scheduler_jobs",  # ImproperlyConfigured: rq_scheduler not installed
    "admin:django_rq_requeue_job",  # POST: InvalidJobOperation for a job that has not failed
    "admin:django_rq_dashboard_history",  # its admin "model" has no table
    "admin:django_rq_dashboard_delete",
    "admin:django_rq_dashboard_change",
}


@pytest.fixture
def world(offline_world, django_user_model, rq_redis):
    """The security world, with one job waiting in the queue (django-rq's job pages)."""
    from vservers.queues import get_queue

    w = security_world(offline_world, django_user_model)
    w.redis = rq_redis
    w.queue = get_queue("default")
    w.job = w.queue.enqueue("vservers.jobs.run_operation", w.operation.pk, job_id="security-test-job")
    return w


def requeue_job(w) -> None:
    """Bring the test's job back into the queue after a POST deleted or moved it."""
    if w.job.id not in w.queue.job_ids:
        w.job = w.queue.enqueue("vservers.jobs.run_operation", w.operation.pk, job_id=w.job.id)


def urls_of(route, w) -> list[str]:
    values = candidates(route, w)
    values["job_id"] = [w.job.id]
    return route.urls(values)


def _watched() -> dict[str, type]:
    return {model._meta.db_table: model for model in apps.get_models()
            if model._meta.label not in UNWATCHED and model._meta.managed}


WATCHED = _watched()


def outside(w) -> dict:
    """What lives outside the database: the queued operations and Redis' keys and values."""
    redis = {key: w.redis.dump(key) for key in sorted(w.redis.keys("*"))}
    return {"queued": [op.pk for op in w.queued], "redis": redis}


def changes_made_by(w, send) -> tuple:
    """SEND() (a request) and what it changed: the rows of the tables it wrote to, read after
    it and again after a rollback to the savepoint before it (so the state it found is the
    state the next request finds), the queued operations and Redis. Only the written tables
    are read: a row changes only through a write statement to its table, and reading every
    table before each request (about 50 queries) was most of this file's time."""
    outside_before = outside(w)
    savepoint = transaction.savepoint()
    with writes() as tables:
        response = send()
    models = WATCHED.values() if "?" in tables else [WATCHED[table] for table in tables if table in WATCHED]
    after = {"rows": _rows(models), **outside(w)}
    transaction.savepoint_rollback(savepoint)
    before = {"rows": _rows(models), **outside_before}
    return response, changes(before, after)


def _rows(models) -> dict:
    return {model._meta.label: list(model._default_manager.order_by("pk").values()) for model in models}


def changes(before: dict, after: dict) -> list[str]:
    found = [label for label, rows in before["rows"].items() if after["rows"][label] != rows]
    if before["queued"] != after["queued"]:
        found.append("queued operations")
    if before["redis"] != after["redis"]:
        found.append("redis")
    return found


_READS = ("SELECT", "SAVEPOINT", "RELEASE", "ROLLBACK", "SHOW")


@contextmanager
def writes():
    """The tables write statements went to while the block ran ("?" for a statement not
    understood, which makes changes_made_by read every table)."""
    tables: set[str] = set()

    def record(execute, sql, params, many, context):
        if not sql.lstrip().upper().startswith(_READS):
            tables.add(_written_table(sql))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield tables


def _written_table(sql: str) -> str:
    words = sql.replace('"', " ").replace("`", " ").split()
    upper = [word.upper() for word in words]
    target = {"INSERT": "INTO", "REPLACE": "INTO", "DELETE": "FROM", "UPDATE": "UPDATE"}.get(upper[0])
    if target is None or upper[1] == "OR":  # UPDATE OR ..., INSERT OR ...: read it all again
        return "?"
    return words[upper.index(target) + 1]


def signed_in(w, route, **client_options) -> Client:
    client = Client(raise_request_exception=route.name not in THIRD_PARTY_CRASHES, **client_options)
    user = actor(route, w)
    if user is not None:
        user.refresh_from_db()  # a POST may have changed the password, and with it the session hash
        client.force_login(user)
    return client


# -- 1. GET is safe ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_a_get_changes_nothing(world, route):
    client = signed_in(world, route)
    for url in urls_of(route, world):
        response, changed = changes_made_by(world, partial(client.get, url))
        assert response.status_code < 500 or route.name in THIRD_PARTY_CRASHES, f"GET {url}: {response.status_code}"
        assert not changed, f"GET {url} changed {changed}"


# -- 2. POST needs the CSRF token ---------------------------------------------------------------


def csrf_token(client: Client) -> str:
    """A CSRF secret in the client's cookie; the same value goes in the request's header."""
    secret = get_random_string(CSRF_SECRET_LENGTH, allowed_chars=CSRF_ALLOWED_CHARS)
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    return secret


# Views that take no ambient credential (no session, no cookie): CSRF rides on the browser's
# cookies, and these read their one credential from the request's body. The join endpoint's
# token (api/nodes_join.py) is posted by `manage.py node join`, not by a browser.
NO_AMBIENT_CREDENTIAL = {"node_join"}


@pytest.mark.parametrize("route", [r for r in ROUTES if r.name not in NO_AMBIENT_CREDENTIAL], ids=str)
def test_a_post_without_the_csrf_token_is_refused(world, route):
    client = signed_in(world, route, enforce_csrf_checks=True)
    data = data_for(route, world)
    urls = urls_of(route, world)
    for url in urls:
        response, changed = changes_made_by(world, partial(client.post, url, data))
        assert refused_for_csrf(response), f"POST {url}: {response.status_code}"
        assert not changed, f"POST {url} without a token changed {changed}"

    # The control: with the token, the same request gets past the CSRF check (whatever the
    # view then makes of it), so the 403 above was the check's.
    token = csrf_token(client)
    response = client.post(urls[0], data, HTTP_X_CSRFTOKEN=token)
    assert not refused_for_csrf(response), f"POST {urls[0]} with a token: {response.status_code}"


# -- 3. what changes state refuses GET ---------------------------------------------------------

_FORM_TAG = re.compile(rb"<form\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(rb"""(\w[\w-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def posts_back_to_itself(content: bytes, path: str) -> bool:
    """Whether the page has a <form method="post"> whose action is PATH (or the page itself)."""
    for tag in _FORM_TAG.findall(content):
        attributes = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _ATTRIBUTE.finditer(tag)}
        action = re.split(r"[?#]", attributes.get(b"action", b"").decode())[0]
        if attributes.get(b"method", b"").lower() == b"post" and action in ("", path):
            return True
    return False


# Views that must be found changing something by test 3's POSTs: if the payload stops fitting
# them, the test would pass for the wrong reason.
KNOWN_STATE_CHANGING = {
    "server_request", "server_action", "server_cancel", "plan_change", "account_add", "account_delete",
    "account_password", "account_key", "service_action", "op_approve", "op_reject", "op_plan_change",
    "op_server_action", "op_server_create", "op_tenants", "op_tenant_detail", "op_member_add", "op_plans",
    "op_plan_edit", "op_templates", "op_template_toggle", "op_pools", "logout", "password_change", "api_tokens",
}


def test_views_that_change_state_refuse_get(world):
    state_changing, problems = set(), []
    clients = SignedIn()

    def client_for(route) -> Client:
        return clients.client(actor(route, world), raise_request_exception=route.name not in THIRD_PARTY_CRASHES)

    for route in ROUTES:  # every user signs in once, outside the savepoints rolled back below
        client_for(route)
    for route in ROUTES:
        data = data_for(route, world)
        for url in urls_of(route, world):
            # Each URL against the same world: what one POST did is rolled back for the next
            # (changes_made_by), and the page is asked for only where the POST changed
            # something, against the world as the POST found it.
            client = client_for(route)
            requeue_job(world)
            queued = len(world.queued)
            _response, changed = changes_made_by(world, partial(client.post, url, data))
            del world.queued[queued:]
            if not changed:
                continue
            requeue_job(world)  # Redis is not rolled back: a POST may have deleted the job
            with transaction.atomic():
                page = client_for(route).get(url)
                transaction.set_rollback(True)
            state_changing.add(route.name)
            if page.status_code == 405:
                continue
            if page.status_code == 200 and posts_back_to_itself(page.content, url):
                continue
            if page.status_code == 200 and route.route.startswith(API_PREFIX) and page["Content-Type"].startswith(
                    "application/json"):
                continue  # a REST collection: GET lists what POST adds to (test 1 shows GET is safe)
            problems.append(f"{route}: POST {url} changes state, GET answers {page.status_code} without its form")
    assert not problems, "\n".join(problems)
    missing = KNOWN_STATE_CHANGING - state_changing
    assert not missing, f"these views changed nothing, so test 3 did not check them: {sorted(missing)}"
