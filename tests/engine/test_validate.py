"""Validators: what they accept is safe to hand to a program, what they refuse says why."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vservers.engine import validate
from vservers.engine.errors import InvalidInput

SHELL_META = set(";&|`$(){}<>*?[]!~'\"\\\n\r\t ")


@given(st.text(max_size=80))
def test_server_names_accepted_are_plain(value):
    try:
        clean = validate.server_name(value)
    except InvalidInput:
        return
    assert clean == value
    assert set(clean) <= set(string.ascii_lowercase + string.digits + "-")
    assert not clean.startswith("-") and "/" not in clean and ".." not in clean


@given(st.text(max_size=300))
def test_hostnames_accepted_contain_no_shell_characters(value):
    try:
        clean = validate.hostname(value)
    except InvalidInput:
        return
    assert not set(clean) & SHELL_META
    assert all(0 < len(label) <= 63 for label in clean.split("."))


@given(st.text(max_size=40))
def test_user_names_accepted_cannot_be_options_or_paths(value):
    try:
        clean = validate.user_name(value)
    except InvalidInput:
        return
    assert not clean.startswith("-") and "/" not in clean and ":" not in clean
    assert not set(clean) & SHELL_META


@given(st.text(max_size=200))
def test_passwords_accepted_fit_on_one_chpasswd_line(value):
    try:
        clean = validate.password(value)
    except InvalidInput:
        return
    assert "\n" not in clean and ":" not in clean and "\x00" not in clean


@given(st.text(max_size=30))
def test_sizes_parse_or_fail_cleanly(value):
    try:
        number = validate.size(value)
    except InvalidInput:
        return
    assert isinstance(number, int) and number >= 0


@given(st.text(max_size=60))
def test_addresses_parse_or_fail_cleanly(value):
    try:
        clean = validate.guest_address(value)
    except InvalidInput:
        return
    assert "/" in clean and not set(clean) & (SHELL_META - {"/"})


@pytest.mark.parametrize(
    "text, expected",
    [("64M", 64 * 2**20), ("1.5G", 3 * 2**29), ("512KiB", 512 * 1024), ("4096", 4096), ("2 G", 2 * 2**30)],
)
def test_sizes_in_binary_units(text, expected):
    assert validate.size(text) == expected


@pytest.mark.parametrize("value", ["web", "a", "web-01", "x" * 32])
def test_good_server_names(value):
    assert validate.server_name(value) == value


@pytest.mark.parametrize("value", ["", "Web", "-web", "web-", "x" * 33, "a b", "a/b", "a;b", "..", "é"])
def test_bad_server_names(value):
    with pytest.raises(InvalidInput, match="invalid server name"):
        validate.server_name(value)


@pytest.mark.parametrize("value", ["198.18.0.10/16", "fd00::10/64"])
def test_good_addresses(value):
    assert validate.guest_address(value) == value


@pytest.mark.parametrize(
    "value", ["198.18.0.10", "198.18.0.0/16", "198.18.255.255/16", "127.0.0.1/8", "224.0.0.1/4", "fe80::1/64",
              "198.18.0.10/32", "host/16", "198.18.0.10/16; reboot"],
)
def test_bad_addresses(value):
    with pytest.raises(InvalidInput):
        validate.guest_address(value)


def test_ssh_keys_must_match_their_declared_type():
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"
    assert validate.ssh_public_key(good) == good
    with pytest.raises(InvalidInput, match="does not match"):
        validate.ssh_public_key(good.replace("ssh-ed25519", "ssh-rsa", 1))
    with pytest.raises(InvalidInput, match="single line"):
        validate.ssh_public_key(good + "\nssh-ed25519 AAAA")
    with pytest.raises(InvalidInput, match="base64"):
        validate.ssh_public_key("ssh-ed25519 not-base64!!")


def test_reserved_user_names_are_refused():
    with pytest.raises(InvalidInput, match="reserved"):
        validate.user_name("root")
    assert validate.user_name("root", allow_reserved=True) == "root"


def test_uid_ranges_never_overlap():
    from vservers.engine.userns import allocate_base

    taken = [1_000_000, 1_065_536, 1_196_608]
    base = allocate_base(1_000_000, taken)
    assert base == 1_131_072
    assert all(abs(base - other) >= 65536 for other in taken)


@pytest.mark.parametrize("value", ["vsbr0", "vs-test.1", "x" * 15])
def test_good_bridge_names(value):
    assert validate.bridge_name(value) == value


@pytest.mark.parametrize("value", ["", ".", "..", "x" * 16, "br 0", "br/0", "br;0", None])
def test_bad_bridge_names(value):
    with pytest.raises(InvalidInput, match="invalid bridge name"):
        validate.bridge_name(value)


def test_password_hashes_are_sha512_crypt_and_fit_on_one_chpasswd_line():
    good = "$6$saltsalt$" + "a" * 86
    assert validate.password_hash(good) == good
    assert validate.password_hash("$6$rounds=5000$salt$" + "./" * 43) == "$6$rounds=5000$salt$" + "./" * 43
    for bad in ["", "secret pass", "$1$salt$" + "a" * 22, good + "\nroot:x", good[:-1], good + ":0",
                "$6$salt:x$" + "a" * 86, "$6$" + "s" * 17 + "$" + "a" * 86, None]:
        with pytest.raises(InvalidInput, match="SHA-512 crypt"):
            validate.password_hash(bad)  # type: ignore[arg-type]


@given(st.text(max_size=120))
def test_password_hashes_accepted_fit_on_one_chpasswd_line(value):
    try:
        clean = validate.password_hash(value)
    except InvalidInput:
        return
    assert "\n" not in clean and ":" not in clean and "\x00" not in clean
