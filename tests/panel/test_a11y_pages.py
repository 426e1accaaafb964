"""What the pages give a keyboard and a screen reader, and the error pages, without a browser
(test_e2e_a11y.py runs axe-core over every page in one): the skip link and the icon, field
errors that aria-describedby can reach, redirects back to the section acted in, a 404 page of
the panel's own and a 500 page that needs neither a request nor the database."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.template.loader import get_template
from django.test import Client

from tests.panel.routes import GUEST_NAME, security_world


@pytest.fixture
def world(offline_world, django_user_model):
    return security_world(offline_world, django_user_model)


@pytest.fixture
def bob(world) -> Client:
    client = Client()
    client.force_login(world.bob)
    return client


def test_every_page_starts_with_a_skip_link_to_main_and_links_the_icon(bob, world):
    html = bob.get(f"/servers/{world.running.uuid}/").content.decode()
    body = html[html.index("<body"):]
    first_link = re.search(r"<(a|button|input|select|textarea)\b[^>]*>", body[body.index(">") + 1:])
    assert first_link and 'href="#main"' in first_link.group(0) and "skip-link" in first_link.group(0)
    assert 'id="main"' in body
    assert re.search(r'<link rel="icon" href="/static/favicon.svg" type="image/svg\+xml">', html)


def test_favicon_ico_redirects_to_the_svg_in_static(client):
    response = client.get("/favicon.ico")
    assert (response.status_code, response["Location"]) == (302, "/static/favicon.svg")
    assert finders.find("favicon.svg")
    assert client.post("/favicon.ico").status_code in (403, 405)  # CSRF first, then the method


def test_a_field_with_errors_is_invalid_and_described_by_ids_that_exist(bob, world):
    response = bob.post(f"/servers/{world.running.uuid}/accounts/add/", {"user": "Not A Name!"})
    assert response.status_code == 200
    html = response.content.decode()
    field = re.search(r'<input[^>]*name="user"[^>]*>', html).group(0)
    assert 'aria-invalid="true"' in field
    described = re.search(r'aria-describedby="([^"]+)"', field).group(1).split()
    assert described == ["id_user_helptext", "id_user_error"]
    for ident in described:
        assert f'id="{ident}"' in html
    # Without script the answer lands at the form's section (its action's anchor).
    assert f'action="/servers/{world.running.uuid}/accounts/add/#accounts"' in html


def test_guest_actions_go_back_to_their_section(bob, world):
    page = f"/servers/{world.running.uuid}/"
    response = bob.post(f"{page}services/{GUEST_NAME}/stop/")
    assert (response.status_code, response["Location"]) == (302, f"{page}#services")
    response = bob.post(f"{page}accounts/add/", {"user": "carol", "password": "a long guest password 1"})
    assert (response.status_code, response["Location"]) == (302, f"{page}#accounts")
    response = bob.post(f"{page}action/restart/")
    assert (response.status_code, response["Location"]) == (302, page)


def test_usage_and_history_read_as_sentences(bob, world):
    """CPU time is seconds used, not a share of "1 CPU"; an empty history says so, not "the
    last 0"."""
    from django.utils import timezone

    from vservers.models import VirtualServer

    VirtualServer.objects.filter(pk=world.stopped.pk).update(cpu_seconds=0, sampled_at=timezone.now())
    html = bob.get(f"/servers/{world.stopped.uuid}/").content.decode()
    assert "CPU time used" in html and "/ 1 CPU" not in html and "CPU</span>" not in html
    assert "the last 0" not in html
    assert "Nothing has been done to this server yet" in html


def test_the_404_page_is_the_panels_with_a_way_back(bob):
    response = bob.get("/no-such-page/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Page not found" in html and 'href="/static/css/panel.css"' in html
    assert 'class="button button-primary" href="/"' in html
    assert 'href="#main"' in html


def test_the_500_page_renders_without_a_request_or_the_database():
    # No db fixture: pytest-django fails any query here, as a broken database would.
    html = get_template("500.html").render()
    assert "Something went wrong" in html and 'href="/static/css/panel.css"' in html and 'href="/"' in html


def test_the_admin_says_ip_addresses():
    from vservers.models import IPAddress

    assert IPAddress._meta.verbose_name_plural == "IP addresses"
