"""The tenant's forms accept exactly what the engine's validators accept, and say why not."""

from __future__ import annotations

import base64

import pytest

from vservers.engine import validate
from vservers.engine.errors import InvalidInput
from vservers.forms import (
    AccountAddForm,
    AccountKeyForm,
    AccountPasswordForm,
    ServerRequestForm,
)
from vservers.models import State, VirtualServer


def ssh_key(key_type: str = "ssh-ed25519") -> str:
    name = key_type.encode()
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes(32)
    return f"{key_type} {base64.b64encode(blob).decode()} me@host"


def server(tenant, name, plan, template, state=State.RUNNING) -> VirtualServer:
    return VirtualServer.objects.create(
        tenant=tenant, name=name, hostname=f"{name}.example", plan=plan, template=template, state=state
    )


def request_form(tenant, plan, template, **data) -> ServerRequestForm:
    return ServerRequestForm(
        {"name": "web", "hostname": "web.example.com", "plan": plan.pk, "template": template.pk, **data},
        tenant=tenant,
    )


# -- the form agrees with the engine --------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web", "web-1", "a" * 32, "Web", "1web", "web-", "we_b", "a" * 33, ""])
def test_server_names_are_the_engines(acme, small, busybox, name):
    form = request_form(acme, small, busybox, name=name)
    try:
        validate.server_name(name)
    except InvalidInput:
        engine_ok = False
    else:
        engine_ok = True
    assert form.is_valid() is engine_ok, form.errors


@pytest.mark.parametrize(
    ("hostname", "ok"),
    [
        ("web.example.com", True),
        ("localhost", True),
        ("WWW.Example.COM", True),  # taken in lower case
        ("web.example.com.", True),  # the root's dot is dropped
        ("web_1.example.com", False),
        ("-web.example.com", False),
        ("web..example.com", False),
        ("1.2.3.4", False),
        ("a" * 64 + ".example", False),
    ],
)
def test_hostnames_are_checked_by_the_engine(acme, small, busybox, hostname, ok):
    form = request_form(acme, small, busybox, hostname=hostname)
    assert form.is_valid() is ok
    if ok:
        assert form.cleaned_data["hostname"] == hostname.lower().rstrip(".")
    else:
        assert form.errors["hostname"][0].startswith("Invalid hostname")


# -- accounts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "error"),
    [
        ("alice", None),
        ("_svc", None),
        ("web-admin2", None),
        ("Alice", "Invalid user name"),
        ("1alice", "Invalid user name"),
        ("al ice", "Invalid user name"),
        ("a" * 32, "Invalid user name"),
        ("root", "is reserved"),
        ("www-data", "is reserved"),
    ],
)
def test_account_user_names_are_the_engines(user, error):
    form = AccountAddForm({"user": user, "password": "long enough"})
    if error is None:
        assert form.is_valid(), form.errors
    else:
        assert error in form.errors["user"][0]


def test_an_existing_account_cannot_be_added_again():
    form = AccountAddForm({"user": "carol", "password": "long enough"}, existing={"carol"})
    assert "already has an account named 'carol'" in form.errors["user"][0]


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("long enough", True),
        (" spaces kept ", True),
        ("short", False),
        ("x" * 129, False),
        ("user:pass1", False),
        ("tab\there!!", False),
    ],
)
def test_passwords_are_checked_by_the_engine_and_kept_as_typed(password, ok):
    form = AccountPasswordForm({"password": password})
    assert form.is_valid() is ok
    if ok:
        assert form.cleaned_data["password"] == password  # not stripped


@pytest.mark.parametrize("key_type", sorted(validate._SSH_KEY_TYPES))
def test_every_key_type_the_engine_knows_is_accepted(key_type):
    form = AccountKeyForm({"ssh_key": "  " + ssh_key(key_type) + "\n"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["ssh_key"] == ssh_key(key_type)


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("", "This field is required."),
        ("ssh-dss AAAAB3NzaC1kc3M= me", "SSH key must start with a key type such as ssh-ed25519"),
        ("ssh-ed25519 @@@ me", "SSH key body is not valid base64"),
        (ssh_key("ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1), "SSH key body does not match its key type"),
        (ssh_key() + "\n" + ssh_key(), "SSH key must be a single line"),
    ],
)
def test_bad_keys_get_a_clear_error(key, error):
    form = AccountKeyForm({"ssh_key": key})
    assert not form.is_valid()
    assert form.errors["ssh_key"] == [error]


def test_an_account_needs_a_password_or_a_key():
    form = AccountAddForm({"user": "erin"})
    assert not form.is_valid()
    assert "Give a password, an SSH key, or both" in form.non_field_errors()[0]
    assert AccountAddForm({"user": "erin", "ssh_key": ssh_key()}).is_valid()
