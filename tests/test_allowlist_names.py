"""URL_ALLOWLIST's host-name entries match names only and admit no address (issue 28, finding 13).

A listed name (or a name under a listed wildcard) that resolves to loopback, link-local (the cloud
metadata address), private or any other non-public address is refused unless an IP/CIDR entry lists
that network, and the refusal never says what the name resolved to. The guard's decision is checked
directly (`urlfetch._check` with an injected resolver, `urlfetch._admitted`), so nothing here connects
anywhere but to the gateway under test on 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import socket

import pytest
import requests

from conftest import make_config
from image_gateway import settings, urlfetch
from image_gateway.urlfetch import UrlNotAllowed, UrlPolicy, parse_allowlist

INTERNAL = ["127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "10.0.0.1", "192.168.1.20", "100.64.0.1",
            "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "fd00:ec2::254", "fe80::1", "0.0.0.0"]
KINDS = ("loopback", "link-local", "private", "unspecified", "reserved", "multicast")


def resolver(table: dict[str, list[str]]):
    """A stand-in for DNS: host -> addresses, and a record of the lookups (nothing leaves the process)."""
    lookups: list[str] = []

    def resolve(host: str, port: int) -> tuple:
        lookups.append(host)
        return tuple(ipaddress.ip_address(a) for a in table[host])

    resolve.lookups = lookups
    return resolve


def policy(allowlist: str) -> UrlPolicy:
    return UrlPolicy(allowlist=parse_allowlist(allowlist))


def assert_says_nothing_of(error: pytest.ExceptionInfo, address: str) -> None:
    message = str(error.value)
    assert address not in message and str(ipaddress.ip_address(address)) not in message, message
    assert not any(kind in message for kind in KINDS), message
    assert "non-public address" in message


@pytest.mark.parametrize("address", INTERNAL)
def test_a_listed_name_that_resolves_internally_is_refused(address):
    resolve = resolver({"images.test": [address], "a.cdn.test": [address], "b.a.cdn.test": [address]})
    for host in ("images.test", "a.cdn.test", "b.a.cdn.test"):
        with pytest.raises(UrlNotAllowed, match=f"{host!r} is not allowed") as refused:
            urlfetch._check(f"http://{host}/cat.png", policy("images.test,*.cdn.test"), resolve)
        assert_says_nothing_of(refused, address)
        assert "listed by name" in str(refused.value)
    assert resolve.lookups == ["images.test", "a.cdn.test", "b.a.cdn.test"]


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.0.0.1", "::1"])
def test_an_unlisted_name_that_resolves_internally_is_refused_without_saying_where(address):
    with pytest.raises(UrlNotAllowed) as refused:
        urlfetch._check("http://rebind.test/", policy(""), resolver({"rebind.test": [address]}))
    assert_says_nothing_of(refused, address)
    assert "listed by name" not in str(refused.value)


def test_localhost_listed_by_name_is_still_refused():
    """The real resolver ('localhost' is 127.0.0.1 / ::1 from /etc/hosts); the guard decides before any
    connection, and `_check` has none to make."""
    with pytest.raises(UrlNotAllowed, match="'localhost' is not allowed") as refused:
        urlfetch._check("http://localhost:6379/", policy("localhost"))
    assert_says_nothing_of(refused, "127.0.0.1")
    assert_says_nothing_of(refused, "::1")


def test_a_cidr_entry_admits_its_network_for_names_and_literals_alike():
    resolve = resolver({"images.test": ["10.1.2.3"], "other.test": ["10.1.2.4"], "loop.test": ["127.0.0.1"],
                        "mixed.test": ["10.1.2.5", "10.9.9.9"]})
    both = policy("images.test,10.1.2.0/24")
    assert urlfetch._check("http://images.test/x.png", both, resolve).addrs == (ipaddress.ip_address("10.1.2.3"),)
    assert urlfetch._check("http://other.test/x.png", both, resolve).host == "other.test"    # the network admits
    assert urlfetch._check("http://10.1.2.9/x.png", both, resolve).port == 80
    for host in ("loop.test", "mixed.test"):                                                 # outside it: refused
        with pytest.raises(UrlNotAllowed):
            urlfetch._check(f"http://{host}/x.png", both, resolve)
    loopback = policy("loop.test,127.0.0.0/8")
    assert urlfetch._check("http://loop.test/x.png", loopback, resolve).host == "loop.test"


def test_public_names_pass_with_or_without_a_name_entry():
    resolve = resolver({"images.test": ["93.184.216.34"], "cdn.images.test": ["2606:4700:4700::1111"]})
    for allowlist in ("", "images.test", "*.images.test"):
        assert urlfetch._check("https://images.test/a.jpg", policy(allowlist), resolve).port == 443
        assert urlfetch._check("http://cdn.images.test/a.jpg", policy(allowlist), resolve).host == "cdn.images.test"


@pytest.mark.parametrize("host, means", [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
                                         ("0x7f.0.0.1", "127.0.0.1"), ("0251.0376.0251.0376", "169.254.169.254")])
def test_a_name_entry_never_matches_an_ip_literal_in_any_spelling(host, means):
    """Such an entry is refused as configuration; and a literal host is judged by its address alone."""
    with pytest.raises(ValueError, match=f"odd spelling; write it as {means}"):
        parse_allowlist(host)
    with pytest.raises(ValueError, match="odd spelling"):
        settings.load({"URL_ALLOWLIST": f"images.test,{host}"})
    with pytest.raises(UrlNotAllowed, match="(loopback|link-local) address"):     # the client sent this address
        urlfetch._check(f"http://{host}/", policy("*.0.1,*.0.0.1,*.0376"), resolver({}))


def test_the_decision_function_on_its_own():
    loop, public = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("93.184.216.34")
    urlfetch._admitted("images.test", (public,), ("images.test",))
    urlfetch._admitted("images.test", (loop,), ("images.test", "127.0.0.1/32"))
    with pytest.raises(UrlNotAllowed, match="listed by name, but a name entry admits public addresses only"):
        urlfetch._admitted("images.test", (public, loop), ("images.test",))
    with pytest.raises(UrlNotAllowed, match="loopback address"):
        urlfetch._admitted("127.0.0.1", (loop,), ("images.test",))


def test_through_the_gateway_a_name_listed_url_to_localhost_is_url_not_allowed(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, url_allowlist="localhost,*.localhost"))
    listener = socket.create_server(("127.0.0.1", 0))      # what the URL names: it must never be connected to
    listener.settimeout(0.5)
    try:
        port = listener.getsockname()[1]
        answer = requests.post(web.url + "/predict", json={"url": f"http://localhost:{port}/cat.jpg"}, timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "URL_NOT_ALLOWED"
        assert "127.0.0.1" not in answer.json()["error"]["message"]
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
