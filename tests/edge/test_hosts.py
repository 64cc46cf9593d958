"""Allowed host names: with `allowed_hosts` set, the API answers only for its own name.

Behind a Cloudflare Tunnel the app's Azure default name is not routed at all; this is the second
lock: a request that reaches a replica by another name (the platform's default host name, an IP,
a name someone else pointed at it) is refused before routing, authentication or any database work.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.api import World, settings_for

APP_HOST = "palisade.example.com"
AZURE_DEFAULT = "ca-palisade-api.happy-sky-0123abcd.westeurope.azurecontainerapps.io"


@pytest.fixture(scope="module")
def edge(database, idp) -> Iterator[TestClient]:
    app = create_app(settings_for(database, idp, allowed_hosts=[APP_HOST]))
    with TestClient(app, raise_server_exceptions=False, base_url=f"https://{APP_HOST}") as c:
        yield c


def get(edge: TestClient, world: World, host: str | None, path: str | None = None):
    headers = {"Authorization": f"Bearer {world.admin.token}"}
    if host is not None:
        headers["Host"] = host
    return edge.get(path or f"{world.ws(0)}/documents", headers=headers)


def test_the_app_host_name_is_served(edge, world: World):
    assert get(edge, world, APP_HOST).status_code == 200
    assert get(edge, world, "PALISADE.example.com.:443").status_code == 200


@pytest.mark.parametrize("host", [AZURE_DEFAULT, "10.0.2.4", "[::1]", "evil.example", f"{APP_HOST}.evil.example", ""])
def test_any_other_host_is_refused_before_routing(edge, world: World, host: str):
    r = get(edge, world, host)
    assert r.status_code == 421, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] == "This host name is not served here."
    assert host.strip("[]") not in r.text or not host
    # The edge's headers are on the refusal too.
    assert r.headers["x-content-type-options"] == "nosniff"


def test_a_refused_host_reaches_no_route(edge, world: World):
    # A path that does not exist answers 421 too: nothing about the route space shows.
    assert get(edge, world, AZURE_DEFAULT, "/api/v1/nowhere").status_code == 421


def test_probes_answer_any_host(edge, world: World):
    # Container Apps probes address the replica by IP.
    assert get(edge, world, "10.0.2.4", "/health/live").status_code == 200


def test_without_the_setting_every_host_is_served(client: TestClient, world: World):
    assert get(client, world, AZURE_DEFAULT).status_code == 200
