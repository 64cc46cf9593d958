"""No answer is built from the client's `Host`: the other slash form of a path is a 404, not a redirect.

Before (issue 16, item 3): `GET /api/v1/tenants/` with no token and `Host: evil.example` got a
307 to `http://evil.example/api/v1/tenants` (Starlette's `redirect_slashes`, which builds an
absolute URL from the request's Host), in every mode, production over TLS included — a cache or a
proxy that keys on the path would hand that redirect to the next caller.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.api import World, settings_for

SPOOFED = "evil.example"
APP_HOST = "palisade.example.com"


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), template)


def _other_forms(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) for every route of the app, with its trailing slash added or removed."""
    found = []
    for route in iter_route_contexts(client.app.routes):
        if not getattr(route, "methods", None) or not route.path or route.path == "/":
            continue
        path = _concrete(route.path)
        other = path.removesuffix("/") if path.endswith("/") else path + "/"
        found += [(method, other) for method in sorted(route.methods - {"HEAD"})]
    return found


def _assert_not_found(r, *, spoofed: str | None = None) -> None:
    assert r.status_code == 404, (r.status_code, r.headers.get("location"))
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json() == {"type": "about:blank", "title": "Not Found", "status": 404}
    if spoofed:
        assert spoofed not in r.text


def test_the_other_slash_form_of_every_route_is_a_404_without_location(client: TestClient):
    forms = _other_forms(client)
    assert len(forms) > 30  # the walk found the API, not just the probes
    for method, path in forms:
        r = client.request(method, path, headers={"Host": SPOOFED}, follow_redirects=False)
        _assert_not_found(r, spoofed=SPOOFED)


@pytest.mark.parametrize("path", ["/api/v1/tenants/", "/health/live/", "/api/v1/openapi.json/"])
def test_a_spoofed_host_is_never_echoed_into_a_location(client: TestClient, path: str):
    for host in (SPOOFED, f"{SPOOFED}:8443", "127.0.0.1"):
        r = client.get(path, headers={"Host": host, "X-Forwarded-Host": SPOOFED}, follow_redirects=False)
        _assert_not_found(r, spoofed=SPOOFED)


def test_the_exact_path_still_routes(client: TestClient, world: World):
    assert client.get("/api/v1/tenants").status_code == 401
    assert world.admin.get(f"{world.ws(0)}/documents").status_code == 200
    _assert_not_found(world.admin.get(f"{world.ws(0)}/documents/", follow_redirects=False))


@pytest.fixture(scope="module")
def tls_edge(database, idp) -> Iterator[TestClient]:
    app = create_app(settings_for(database, idp, allowed_hosts=[APP_HOST]))
    with TestClient(app, raise_server_exceptions=False, base_url=f"https://{APP_HOST}") as c:
        yield c


def test_over_tls_for_the_served_host_name_too(tls_edge: TestClient, world: World):
    token = {"Authorization": f"Bearer {world.admin.token}"}
    assert tls_edge.get(f"{world.ws(0)}/documents", headers=token).status_code == 200
    _assert_not_found(tls_edge.get(f"{world.ws(0)}/documents/", headers=token, follow_redirects=False))
    _assert_not_found(tls_edge.get("/api/v1/tenants/", follow_redirects=False))
