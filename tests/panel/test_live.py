"""Live pages (vservers/views/live.py): every page that shows moving state answers its own
poll with a 304 while nothing moved, after a few queries, and with the new page once
something did. Database rows only (offline_world); the browser's side is in
test_e2e_live.py."""

from __future__ import annotations

import re

import pytest
from django.contrib import messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from vservers.models import BuiltTemplate, Operation, OperationKind, State, TemplateBuild, VirtualServer

POLL = {"X-Live": "1"}
# Queries of a 304, all in: the session, the user, whether the user has a second factor
# (accounts' middleware), then the page's own: (tenants) the user's role, and the
# fingerprint, one aggregate query (the dashboard and the approvals: two, servers and
# operations). Measured below, and stated in docs/security.md.
MOST_QUERIES_OF_A_304 = 5
INFRASTRUCTURE = ("django_session", "auth_user", "otp_totp_totpdevice")


@pytest.fixture
def world(offline_world):
    w = offline_world
    w.web = VirtualServer.objects.create(
        tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small, template=w.busybox, node=w.node,
        state=State.RUNNING,
    )
    w.pool.allocate(w.web)
    w.op = Operation.objects.create(server=w.web, kind=OperationKind.RESTART, requested_by=w.alice)
    return w


def _start(world):
    """The queued restart starts."""
    assert world.op.claim()


def _finish(world):
    world.op.claim()
    world.op.finish(True, output="restarted")


def _stop(world):
    world.web.move([State.RUNNING], State.STOPPED, "")


def _request(world):
    VirtualServer.objects.create(tenant=world.acme, name="blog", hostname="blog.acme.test", plan=world.small,
                                 template=world.busybox)


def _sample(world):
    VirtualServer.objects.filter(pk=world.web.pk).update(memory_bytes=96 << 20, sampled_at=timezone.now())


def _build(world):
    """A build of the busybox template, queued earlier on the node, finishes."""
    build = TemplateBuild.objects.create(template=world.busybox, node=world.node, requested_by=world.operator)
    assert build.claim("test")
    build.finish(True, output="built version 1")


def _built(world):
    """The node's worker finds a new version built."""
    BuiltTemplate.objects.update_or_create(template=world.busybox, node=world.node, defaults={
        "version": "20261206-1", "built_at": timezone.now(), "size_bytes": 3 << 20, "checked": timezone.now()})


# (who, URL of the page, a change, a sign of it in the new page)
PAGES = {
    "tenant list": ("alice", lambda w: reverse("server_list"), _stop, r"state-stopped"),
    "tenant list, usage": ("alice", lambda w: reverse("server_list"), _sample, r"Memory: 96\.0\xa0MB"),
    "tenant server": ("alice", lambda w: reverse("server_detail", args=[w.web.uuid]), _finish,
                      r'data-announce="Restart: succeeded"'),
    "tenant server, usage": ("alice", lambda w: reverse("server_detail", args=[w.web.uuid]), _sample,
                             r"96\.0\xa0MB"),
    "dashboard": ("operator", lambda w: reverse("op_dashboard"), _start, r'data-announce="Restart of web: running"'),
    "approvals": ("operator", lambda w: reverse("op_approvals"), _request, r"blog\.acme\.test"),
    "servers": ("operator", lambda w: reverse("op_servers") + "?state=stopped", _stop, r"web\.acme\.test"),
    "server": ("operator", lambda w: reverse("op_server_detail", args=[w.web.uuid]), _finish,
               r'data-announce="Restart of web: succeeded"'),
    "operations": ("operator", lambda w: reverse("op_operations"), _finish, r"status-succeeded"),
    "templates": ("operator", lambda w: reverse("op_templates"), _build,
                  r'data-announce="Build of busybox on local: succeeded"'),
    "templates, built": ("operator", lambda w: reverse("op_templates"), _built,
                         r'version <span class="mono">20261206-1'),
}


@pytest.mark.parametrize("page", PAGES)
def test_a_live_page_answers_its_poll_with_304_until_what_it_shows_changes(client, world, page):
    who, address, change, sign = PAGES[page]
    client.force_login(getattr(world, who))
    url = address(world)

    first = client.get(url)
    assert first.status_code == 200
    etag = first["ETag"]
    body = first.content.decode()
    assert f'data-live-url="{url.replace("&", "&amp;")}"' in body
    assert f'data-live-etag="{etag.replace(chr(34), "&quot;")}"' in body
    assert re.search(r'id="[\w-]+" data-live>', body)  # at least one region
    assert not re.search(sign, body)

    with CaptureQueriesContext(connection) as queries:
        unchanged = client.get(url, headers={**POLL, "If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged["ETag"] == etag
    assert len(queries) <= MOST_QUERIES_OF_A_304, [q["sql"] for q in queries]
    own = [q["sql"] for q in queries if not any(f'FROM "{table}"' in q["sql"] for table in INFRASTRUCTURE)]
    assert len(own) <= 2, own

    change(world)
    changed = client.get(url, headers={**POLL, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert re.search(sign, changed.content.decode())
    assert client.get(url, headers={**POLL, "If-None-Match": changed["ETag"]}).status_code == 304


def test_only_the_scripts_poll_gets_a_304(client, world):
    client.force_login(world.alice)
    etag = client.get(reverse("server_list"))["ETag"]
    assert client.get(reverse("server_list"), headers={"If-None-Match": etag}).status_code == 200


def test_the_etag_is_the_users_own(client, world, django_user_model):
    """Another user, even an operator looking at the same servers, may see other buttons."""
    url = reverse("server_detail", args=[world.web.uuid])
    client.force_login(world.alice)
    etag = client.get(url)["ETag"]
    client.force_login(world.operator)
    assert client.get(url, headers={**POLL, "If-None-Match": etag}).status_code == 200


def test_a_poll_leaves_the_messages_for_the_next_page(client, world):
    """A message (e.g. "web: stopping.") is for the page the user opens next, not for a poll
    that happens to come first."""
    client.force_login(world.alice)
    url = reverse("server_detail", args=[world.web.uuid])
    client.get(url)
    client.post(reverse("server_action", args=[world.web.uuid, "stop"]))
    polled = client.get(url, headers=POLL)
    assert polled.status_code == 200 and b"web: stopping." not in polled.content
    assert b"web: stopping." in client.get(url).content
    assert list(messages.get_messages(client.get(url).wsgi_request)) == []


def test_a_page_rendered_for_a_form_with_errors_does_not_poll(client, world):
    """A refused form is answered on its POST URL, which cannot be polled: that page stays
    still while the user corrects the form."""
    client.force_login(world.alice)
    response = client.post(reverse("account_add", args=[world.web.uuid]), {"user": "Bad Name!"})
    assert response.status_code == 200
    assert b"data-live-url" not in response.content
