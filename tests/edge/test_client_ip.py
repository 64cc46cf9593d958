"""The client's address comes only from proxies we trust; what anyone else claims is ignored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.api import World, settings_for

PROXY = "10.1.2.3"
CLOUDFLARE = "173.245.48.7"


@pytest.fixture
def behind(database, idp) -> Iterator:
    """Builds a client whose TCP peer is `peer`, with nginx (10.0.0.0/8) and a Cloudflare range trusted."""
    opened: list[TestClient] = []

    def make(peer: str) -> TestClient:
        settings = settings_for(database, idp, trusted_proxies=["10.0.0.0/8"], cloudflare_ranges=["173.245.48.0/20"])
        c = TestClient(create_app(settings), client=(peer, 40000)).__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def recorded_ip(world: World, c: TestClient, cid: str, **headers: str) -> str:
    auth = {"Authorization": f"Bearer {world.admin.token}", "X-Correlation-ID": cid}
    created = c.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}, headers={**auth, **headers})
    assert created.status_code == 201, created.text
    (event,) = world.admin.get(f"{world.base}/audit-events", params={"correlation_id": cid}).json()["items"]
    return event["client_ip"]


class TestUntrustedPeer:
    def test_spoofed_forwarding_headers_are_ignored(self, world: World, behind):
        c = behind("198.51.100.9")
        ip = recorded_ip(world, c, "ip-1", **{"X-Forwarded-For": "1.2.3.4", "CF-Connecting-IP": "5.6.7.8", "X-Real-IP": "9.9.9.9"})
        assert ip == "198.51.100.9"


class TestTrustedProxy:
    def test_client_is_the_rightmost_untrusted_hop(self, world: World, behind):
        c = behind(PROXY)
        # The client wrote "6.6.6.6" itself; nginx appended the address it saw.
        assert recorded_ip(world, c, "ip-2", **{"X-Forwarded-For": "6.6.6.6, 203.0.113.50"}) == "203.0.113.50"

    def test_chained_trusted_proxies_are_skipped(self, world: World, behind):
        c = behind(PROXY)
        assert recorded_ip(world, c, "ip-3", **{"X-Forwarded-For": "203.0.113.51, 10.9.9.9"}) == "203.0.113.51"

    def test_without_forwarding_header_the_proxy_is_the_client(self, world: World, behind):
        assert recorded_ip(world, behind(PROXY), "ip-4") == PROXY

    def test_garbage_in_the_chain_stops_belief(self, world: World, behind):
        assert recorded_ip(world, behind(PROXY), "ip-5", **{"X-Forwarded-For": "6.6.6.6, not-an-ip"}) == PROXY

    def test_cf_connecting_ip_from_a_trusted_proxy_is_not_enough(self, world: World, behind):
        # Our own proxy forwards it, but the hop before it is not Cloudflare: it is the client's claim.
        ip = recorded_ip(world, behind(PROXY), "ip-6", **{"X-Forwarded-For": "203.0.113.52", "CF-Connecting-IP": "5.6.7.8"})
        assert ip == "203.0.113.52"


class TestCloudflare:
    def test_cloudflare_peer_names_the_client(self, world: World, behind):
        assert recorded_ip(world, behind(CLOUDFLARE), "ip-7", **{"CF-Connecting-IP": "203.0.113.60"}) == "203.0.113.60"

    def test_cloudflare_through_our_ingress(self, world: World, behind):
        ip = recorded_ip(world, behind(PROXY), "ip-8", **{"X-Forwarded-For": f"6.6.6.6, {CLOUDFLARE}", "CF-Connecting-IP": "203.0.113.61"})
        assert ip == "203.0.113.61"

    def test_ipv6_client(self, world: World, behind):
        assert recorded_ip(world, behind(CLOUDFLARE), "ip-9", **{"CF-Connecting-IP": "2001:db8::7"}) == "2001:db8::7"
