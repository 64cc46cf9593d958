"""CORS: an exact allow-list for a credentialed API. Look-alike origins, `null`, other schemes and
ports get nothing; preflights from them are refused with a problem and no CORS headers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.responses import Response

from app.edge.http import CORS_ALLOW_HEADERS, canonical_origin
from app.main import create_app
from tests.support.api import World, settings_for

PROBLEM_JSON = "application/problem+json"
# As an operator might type them: the allow-list is normalised.
CONFIGURED = ["https://app.example", "http://localhost:5173", "HTTPS://Admin.Example:443/", "https://[::1]:8443"]
ALLOWED = ["https://app.example", "http://localhost:5173", "https://admin.example", "https://[::1]:8443"]
REFUSED = [
    "null",
    "*",
    "https://evil-app.example",  # suffix look-alike
    "https://app.example.evil.com",  # allowed name as a subdomain of the attacker's
    "https://evilapp.example",
    "https://app.exampl",
    "https://sub.app.example",
    "http://app.example",  # downgraded scheme
    "https://app.example:8443",  # other port
    "https://app.example:443",  # a browser never sends the default port
    "https://app.example.",  # trailing dot: another origin to a browser
    "https://APP.EXAMPLE",  # browsers serialise lowercase: this is no browser
    "https://App.example",
    "https://user@app.example",  # userinfo
    "https://app.example@evil.example",
    "https://evil.example#@app.example",
    "https://evil.example?x=https://app.example",
    "https://app.example/",
    "https://app.example/path",
    " https://app.example",
    "https://app.example ",
    "https://app.example, https://evil.example",
    "https://app%2eexample",
    "ws://app.example",
    "file://",
    "http://localhost:5174",
    "http://127.0.0.1:5173",
    "https://[::2]:8443",
    "",
]


def edge_app(database, idp, **overrides: Any) -> FastAPI:
    settings = settings_for(database, idp, **overrides)
    app = create_app(settings)

    @app.get("/test/wildcard")
    def wildcard() -> Response:
        # A route that would answer any origin: the CORS layer alone speaks CORS.
        return Response(b"{}", media_type="application/json", headers={
            "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true", "Vary": "Accept-Encoding",
        })

    return app


@pytest.fixture(scope="module")
def edge(database, idp) -> Iterator[TestClient]:
    with TestClient(edge_app(database, idp, cors_allow_origins=CONFIGURED), raise_server_exceptions=False) as c:
        yield c


def preflight(c: TestClient, origin: str, method: str = "POST", headers: str | None = "authorization, content-type",
              path: str = "/api/v1/tenants") -> httpx.Response:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return c.options(path, headers=h)


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def vary(r: httpx.Response) -> set[str]:
    return {token.strip().lower() for value in r.headers.get_list("vary") for token in value.split(",")}


class TestAllowList:
    def test_configured_entries_are_normalised(self):
        assert [canonical_origin(o) for o in CONFIGURED] == ALLOWED

    @pytest.mark.parametrize("bad", ["app.example", "https://", "https://app.example/path", "https://u:p@app.example",
                                     "ftp://app.example", "https://app.example?x", "https://bad_host.example", "null"])
    def test_malformed_configuration_fails_at_startup(self, database, idp, bad):
        with pytest.raises(ValueError):
            edge_app(database, idp, cors_allow_origins=[bad])


class TestSimpleRequests:
    @pytest.mark.parametrize("origin", ALLOWED)
    def test_allowed_origin_is_echoed_with_credentials(self, edge, origin):
        r = edge.get("/health/live", headers={"Origin": origin})
        assert r.status_code == 200
        assert r.headers.get_list("access-control-allow-origin") == [origin]
        assert r.headers["access-control-allow-credentials"] == "true"
        assert "x-correlation-id" in r.headers["access-control-expose-headers"].lower()
        assert "origin" in vary(r)

    @pytest.mark.parametrize("origin", REFUSED)
    def test_refused_origin_proceeds_without_cors_headers(self, edge, origin):
        r = edge.get("/health/live", headers={"Origin": origin})
        assert r.status_code == 200  # the browser, not the server, withholds the answer
        assert cors_headers(r) == {}
        assert "origin" in vary(r)

    def test_two_origin_headers_match_nothing(self, edge):
        r = edge.get("/health/live", headers=[("Origin", "https://app.example"), ("Origin", "https://evil.example")])
        assert cors_headers(r) == {}

    def test_no_origin_no_cors_but_still_vary(self, edge):
        r = edge.get("/health/live")
        assert cors_headers(r) == {} and "origin" in vary(r)

    def test_problems_are_readable_by_the_allowed_origin(self, edge):
        r = edge.get("/api/v1/tenants", headers={"Origin": "https://app.example"})
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == "https://app.example"

    def test_authenticated_call_from_allowed_origin(self, edge, world: World):
        r = edge.get(f"{world.ws(0)}/documents",
                     headers={"Origin": "https://app.example", "Authorization": f"Bearer {world.admin.token}"})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "https://app.example"

    def test_a_route_cannot_open_cors_itself(self, edge):
        r = edge.get("/test/wildcard", headers={"Origin": "https://evil.example"})
        assert cors_headers(r) == {}
        assert {"origin", "accept-encoding"} <= vary(r)
        ok = edge.get("/test/wildcard", headers={"Origin": "https://app.example"})
        assert ok.headers.get_list("access-control-allow-origin") == ["https://app.example"]

    def test_never_a_wildcard(self, edge):
        for origin in [*ALLOWED, *REFUSED]:
            r = edge.get("/test/wildcard", headers={"Origin": origin})
            assert r.headers.get("access-control-allow-origin") != "*"


class TestPreflight:
    @pytest.mark.parametrize("origin", ALLOWED)
    def test_allowed(self, edge, origin):
        r = preflight(edge, origin)
        assert r.status_code == 204 and r.content == b""
        assert r.headers["access-control-allow-origin"] == origin
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-methods"] == "GET, POST, PUT, PATCH, DELETE"
        assert r.headers["access-control-allow-headers"] == ", ".join(CORS_ALLOW_HEADERS)
        assert r.headers["access-control-max-age"] == "600"
        assert {"origin", "access-control-request-method", "access-control-request-headers"} <= vary(r)

    @pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
    def test_each_allowed_method(self, edge, method):
        assert preflight(edge, "https://app.example", method=method).status_code == 204

    @pytest.mark.parametrize("header", ["Authorization", "Content-Type", "X-Correlation-ID", "Idempotency-Key",
                                        "CF-Turnstile-Response", "accept-language"])
    def test_each_allowed_header(self, edge, header):
        assert preflight(edge, "https://app.example", headers=header).status_code == 204

    def test_no_requested_headers(self, edge):
        assert preflight(edge, "https://app.example", method="DELETE", headers=None).status_code == 204

    @pytest.mark.parametrize("origin", REFUSED)
    def test_refused_origin(self, edge, origin):
        r = preflight(edge, origin)
        assert r.status_code == 403
        assert r.headers["content-type"].startswith(PROBLEM_JSON) and r.json()["status"] == 403
        assert cors_headers(r) == {}

    @pytest.mark.parametrize("method", ["TRACE", "CONNECT", "HEAD", "OPTIONS", "patch", "post", "PROPFIND", "GET, POST", ""])
    def test_refused_method(self, edge, method):
        r = preflight(edge, "https://app.example", method=method)
        assert r.status_code == 403 and cors_headers(r) == {}

    @pytest.mark.parametrize("headers", ["x-evil", "authorization, x-api-key", "cookie", "x-forwarded-for", "x-http-method-override"])
    def test_refused_request_header(self, edge, headers):
        r = preflight(edge, "https://app.example", headers=headers)
        assert r.status_code == 403 and cors_headers(r) == {}

    def test_preflight_is_answered_before_auth_and_routing(self, edge):
        # No token, unknown path: the preflight says nothing about either.
        assert preflight(edge, "https://app.example", path="/api/v1/no/such/route").status_code == 204

    def test_options_without_request_method_is_no_preflight(self, edge):
        r = edge.options("/health/live", headers={"Origin": "https://app.example"})
        assert r.status_code == 405
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-methods" not in r.headers


class TestNoOriginsConfigured:
    def test_everything_refused(self, database, idp):
        with TestClient(edge_app(database, idp)) as c:
            assert preflight(c, "https://app.example").status_code == 403
            assert cors_headers(c.get("/health/live", headers={"Origin": "https://app.example"})) == {}
