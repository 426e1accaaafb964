"""Which address a request comes from (accounts.addresses): REMOTE_ADDR, unless a trusted
proxy forwarded the request; then the right-most address in X-Forwarded-For that is not a
trusted proxy. Whatever a client writes into the header itself can never change the answer."""

from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.addresses import client_ip, throttle_key
from panel import env

FACTORY = RequestFactory()


def request(remote: str | None, forwarded: str | None = None):
    meta = {}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    made = FACTORY.get("/", **meta)
    if remote is None:
        del made.META["REMOTE_ADDR"]
    else:
        made.META["REMOTE_ADDR"] = remote
    return made


@pytest.fixture
def proxies(settings):
    def trust(*values: str) -> None:
        settings.PANEL_TRUSTED_PROXIES = list(values)

    trust()
    return trust


def test_without_trusted_proxies_the_header_is_not_read(proxies):
    assert client_ip(request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"
    assert client_ip(request("127.0.0.1", "198.51.100.1")) == "127.0.0.1"


def test_a_header_from_an_untrusted_peer_is_not_read(proxies):
    proxies("127.0.0.1")
    assert client_ip(request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("1.2.3.4, 198.51.100.1", "198.51.100.1"),  # the left one is the client's own claim
        ("198.51.100.1, 10.0.0.7", "198.51.100.1"),  # a second trusted proxy in between
        ("garbage, 198.51.100.1", "198.51.100.1"),
        ("198.51.100.1, garbage", "127.0.0.1"),  # unreadable where the proxy writes: the proxy
        ("", "127.0.0.1"),
        ("10.0.0.7", "10.0.0.7"),  # only proxies: the farthest one
        ("::ffff:198.51.100.1", "198.51.100.1"),
        (" 2001:db8::1 ", "2001:db8::1"),
    ],
)
def test_behind_trusted_proxies_the_right_most_other_address_counts(proxies, forwarded, expected):
    proxies("127.0.0.1", "10.0.0.0/8")
    assert client_ip(request("127.0.0.1", forwarded)) == expected


def test_without_a_header_the_proxy_itself_counts(proxies):
    proxies("127.0.0.1")
    assert client_ip(request("127.0.0.1")) == "127.0.0.1"


def test_a_missing_or_malformed_remote_addr_is_no_address(proxies):
    assert client_ip(request(None)) is None
    assert client_ip(request("not-an-address")) is None


def ip(text: str):
    """An address as accounts.addresses sees it (IPv4-mapped IPv6 addresses are IPv4)."""
    address = ipaddress.ip_address(text)
    return (address.ipv4_mapped or address) if address.version == 6 else address


ADDRESSES = st.ip_addresses().map(str)
CLAIMS = st.lists(st.one_of(ADDRESSES, st.text(alphabet=st.characters(exclude_characters=","), max_size=20)),
                  max_size=5)


@settings(max_examples=300)
@given(claims=CLAIMS, client=ADDRESSES.filter(lambda a: ip(a) not in ipaddress.ip_network("127.0.0.0/8")))
def test_what_a_client_writes_into_the_header_never_matters(claims, client):
    """The trusted proxy appends the address it saw: CLIENT; anything left of it is forged."""
    from django.test import override_settings

    with override_settings(PANEL_TRUSTED_PROXIES=["127.0.0.0/8"]):
        forwarded = ", ".join([*claims, client])
        assert client_ip(request("127.0.0.1", forwarded)) == str(ip(client))


def test_throttle_keys():
    assert throttle_key("203.0.113.9") == "203.0.113.9"
    assert throttle_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert throttle_key("2001:db8:1:2::1") == throttle_key("2001:db8:1:2:ffff::9")
    assert throttle_key("2001:db8:1:3::1") != throttle_key("2001:db8:1:2::1")
    assert throttle_key(None) == throttle_key("bogus") == "unknown"


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1,10.0.0.0/8", "::1, fd00::/8"])
def test_trusted_proxies_from_the_environment(value):
    assert env.env_networks({"PANEL_TRUSTED_PROXIES": value}, "PANEL_TRUSTED_PROXIES") == [
        item.strip() for item in value.split(",")
    ]


@pytest.mark.parametrize("value", ["proxy.example", "127.0.0.1,", "10.0.0.0/33", ""])
def test_trusted_proxies_must_be_addresses(value):
    with pytest.raises(ImproperlyConfigured, match="PANEL_TRUSTED_PROXIES"):
        env.env_networks({"PANEL_TRUSTED_PROXIES": value}, "PANEL_TRUSTED_PROXIES")
