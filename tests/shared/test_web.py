"""shared.web.client_address: X-Forwarded-For is believed only from a trusted proxy."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from shared.web import client_address


def _request(peer: str | None, forwarded: str | None = None) -> Request:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": headers,
        "client": (peer, 50000) if peer is not None else None,
    }
    return Request(scope)


PROXIES = frozenset({"127.0.0.1", "10.0.0.5"})


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # Straight from the internet: the header is whatever the client wants; ignored.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("203.0.113.9", None, "203.0.113.9"),
        # Through our proxy: the hop it saw.
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        # A client that forges the header in front of our proxy: the proxy appends the real peer.
        ("127.0.0.1", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        # Two of our proxies in a row: skip both.
        ("127.0.0.1", "198.51.100.1, 10.0.0.5", "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6,198.51.100.1 , 127.0.0.1", "198.51.100.1"),
        # A trusted proxy without the header, or with an empty one: the proxy itself.
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", " , ", "127.0.0.1"),
        # Only our proxies in the chain.
        ("127.0.0.1", "10.0.0.5", "127.0.0.1"),
        # No client at all (some test transports).
        (None, "198.51.100.1", ""),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, expected: str
) -> None:
    assert client_address(_request(peer, forwarded), PROXIES) == expected


def test_nothing_trusted_means_the_peer() -> None:
    assert client_address(_request("127.0.0.1", "198.51.100.1"), frozenset()) == "127.0.0.1"


def test_trusted_proxies_may_be_networks_and_ipv6() -> None:
    proxies = frozenset({"172.18.0.0/16", "::1"})
    assert client_address(_request("172.18.3.4", "198.51.100.1"), proxies) == "198.51.100.1"
    assert client_address(_request("0:0::1", "2001:db8::7"), proxies) == "2001:db8::7"
    assert client_address(_request("172.19.0.1", "198.51.100.1"), proxies) == "172.19.0.1"


def test_several_forwarded_for_headers_are_one_list() -> None:
    # Two header lines are the same as one comma-joined line (RFC 9110); the last one is nearest.
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.1")],
        "client": ("127.0.0.1", 50000),
    }
    assert client_address(Request(scope), PROXIES) == "198.51.100.1"
