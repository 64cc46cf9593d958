"""Security headers: on every response (successes, problems, the bare 500, preflights, streams),
HSTS only over TLS (or as a trusted proxy says), a strict CSP for the API and a narrow one for the
docs page, no caching, no server banner."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from starlette.responses import Response

from app.edge.bodies import BodyShapeMiddleware
from app.edge.http import (
    API_CSP,
    BodyLimitMiddleware,
    CorsMiddleware,
    ParameterPollutionMiddleware,
    add_inner_middleware,
    install,
)
from app.idempotency import IdempotencyMiddleware
from app.main import create_app
from tests.support.api import World, settings_for

PROBLEM_JSON = "application/problem+json"
TWO_YEARS = "max-age=63072000; includeSubDomains"
TRUSTED_PEER = ("10.0.0.5", 1234)
UNTRUSTED_PEER = ("203.0.113.50", 1234)

EXPECTED = {
    "content-security-policy": API_CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-permitted-cross-domain-policies": "none",
    "origin-agent-cluster": "?1",
    "cache-control": "no-store",
    "pragma": "no-cache",
}
DENIED_FEATURES = ("camera", "microphone", "geolocation", "payment", "usb", "interest-cohort", "display-capture", "browsing-topics")

# The streaming route waits on this (when set) between its chunks.
_gate: dict[str, asyncio.Event] = {}


def _routes(app: FastAPI) -> None:
    @app.get("/test/boom")
    def boom() -> None:
        raise RuntimeError("an unexpected failure, details never shown")

    @app.get("/test/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            if "event" in _gate:
                await asyncio.wait_for(_gate["event"].wait(), timeout=3)
            yield b"second\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/test/leaky")
    def leaky() -> Response:
        # A route trying to weaken the edge: every one of these is replaced or dropped.
        return Response(b"{}", media_type="application/json", headers={
            "Server": "gunicorn/19.0", "X-Powered-By": "PHP/5.6", "Content-Security-Policy": "default-src *",
            "Cache-Control": "public, max-age=3600", "X-Frame-Options": "ALLOWALL", "Strict-Transport-Security": "max-age=0",
        })


def edge_app(database, idp, **overrides: Any) -> FastAPI:
    settings = settings_for(database, idp, **overrides)
    app = create_app(settings)
    _routes(app)
    return app


@pytest.fixture(scope="module")
def app(database, idp) -> FastAPI:
    return edge_app(database, idp, trusted_proxies=["10.0.0.0/8"], cors_allow_origins=["https://app.example"])


@pytest.fixture(scope="module")
def edge(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False, client=UNTRUSTED_PEER) as c:
        yield c


@pytest.fixture(scope="module")
def edge_https(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=False, client=UNTRUSTED_PEER) as c:
        yield c


@pytest.fixture(scope="module")
def via_proxy(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False, client=TRUSTED_PEER) as c:
        yield c


def assert_security_headers(r: httpx.Response, *, hsts: str | None = None) -> None:
    for name, value in EXPECTED.items():
        assert r.headers.get_list(name) == [value], (name, r.headers.get_list(name))
    policy = r.headers["permissions-policy"]
    for feature in DENIED_FEATURES:
        assert f"{feature}=()" in policy.split(", "), feature
    assert "server" not in r.headers and "x-powered-by" not in r.headers
    assert r.headers.get_list("strict-transport-security") == ([hsts] if hsts else [])


def bearer(world: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.admin.token}"}


class TestOnEveryResponse:
    def test_success(self, edge):
        r = edge.get("/health/live")
        assert r.status_code == 200
        assert_security_headers(r)

    def test_authenticated_success_is_not_stored(self, edge, world: World):
        r = edge.get(f"{world.ws(0)}/documents", headers=bearer(world))
        assert r.status_code == 200, r.text
        assert_security_headers(r)

    def test_unauthenticated_problem(self, edge):
        r = edge.get("/api/v1/tenants")
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM_JSON)
        assert_security_headers(r)
        assert r.headers["www-authenticate"].startswith("Bearer")

    def test_unknown_path(self, edge):
        r = edge.get("/wp-admin/install.php")
        assert r.status_code == 404
        assert_security_headers(r)

    def test_validation_problem(self, edge, world: World):
        r = edge.get(f"{world.ws(0)}/documents?limit=0", headers=bearer(world))
        assert r.status_code == 422, r.text
        assert_security_headers(r)

    def test_wrong_method(self, edge):
        r = edge.delete("/health/live")
        assert r.status_code == 405
        assert_security_headers(r)

    def test_unhandled_exception_500(self, edge):
        # Answered by Starlette's outermost ServerErrorMiddleware: the headers layer wraps even that.
        r = edge.get("/test/boom")
        assert r.status_code == 500
        assert "unexpected failure" not in r.text
        assert_security_headers(r)

    def test_preflight_allowed_and_refused(self, edge):
        ok = edge.options("/api/v1/tenants", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert ok.status_code == 204
        assert_security_headers(ok)
        refused = edge.options("/api/v1/tenants", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 403
        assert_security_headers(refused)

    def test_refusals_of_the_other_edge_layers(self, edge):
        polluted = edge.get("/health/live?a=1&a=2")
        assert polluted.status_code == 400
        assert_security_headers(polluted)
        too_big = edge.post("/api/v1/tenants", content=b"x" * 2_000_000)
        assert too_big.status_code == 413
        assert_security_headers(too_big)

    def test_streaming_response(self, edge):
        r = edge.get("/test/stream")
        assert r.status_code == 200 and r.text == "first\nsecond\n"
        assert_security_headers(r)

    def test_openapi_document(self, edge):
        r = edge.get("/api/v1/openapi.json")
        assert r.status_code == 200
        assert_security_headers(r)


class TestStreamingStillStreams:
    def test_first_chunk_leaves_before_the_generator_finishes(self, app: FastAPI):
        """The route's second chunk waits until the client has the first: any layer that buffered the
        body would deadlock here (and the route time out)."""

        async def run() -> list[dict[str, Any]]:
            event = asyncio.Event()
            _gate["event"] = event
            sent: list[dict[str, Any]] = []
            done = asyncio.Event()
            requested = False

            async def receive() -> dict[str, Any]:
                nonlocal requested
                if not requested:
                    requested = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                await done.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)
                if message["type"] == "http.response.body" and b"first" in message.get("body", b""):
                    event.set()
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    done.set()

            scope = {
                "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "GET",
                "scheme": "http", "path": "/test/stream", "raw_path": b"/test/stream", "root_path": "", "query_string": b"",
                "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
            }
            try:
                await asyncio.wait_for(app(scope, receive, send), timeout=10)
            finally:
                _gate.pop("event", None)
            return sent

        sent = asyncio.run(run())
        start = sent[0]
        assert start["type"] == "http.response.start" and start["status"] == 200
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        assert headers["content-security-policy"] == API_CSP and headers["x-frame-options"] == "DENY"
        bodies = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
        assert bodies[0] == b"first\n" and b"".join(bodies) == b"first\nsecond\n"
        assert len([b for b in bodies if b]) == 2  # two separate chunks, not one buffered body


class TestStrictTransportSecurity:
    def test_not_over_plain_http(self, edge):
        assert "strict-transport-security" not in edge.get("/health/live").headers

    def test_over_https(self, edge_https):
        assert_security_headers(edge_https.get("/health/live"), hsts=TWO_YEARS)

    def test_over_https_on_problems_too(self, edge_https):
        assert_security_headers(edge_https.get("/nope"), hsts=TWO_YEARS)
        assert_security_headers(edge_https.get("/test/boom"), hsts=TWO_YEARS)

    def test_forwarded_https_from_a_trusted_proxy(self, via_proxy):
        r = via_proxy.get("/health/live", headers={"X-Forwarded-Proto": "https"})
        assert_security_headers(r, hsts=TWO_YEARS)

    def test_forwarded_http_from_a_trusted_proxy(self, via_proxy):
        assert "strict-transport-security" not in via_proxy.get("/health/live", headers={"X-Forwarded-Proto": "http"}).headers
        assert "strict-transport-security" not in via_proxy.get("/health/live").headers

    def test_forwarded_https_from_anyone_else_is_ignored(self, edge):
        r = edge.get("/health/live", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in r.headers

    def test_preload_and_max_age_from_settings(self, database, idp):
        app = edge_app(database, idp, hsts_max_age_seconds=31_536_000, hsts_preload=True)
        with TestClient(app, base_url="https://testserver") as c:
            r = c.get("/health/live")
        assert r.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"


class TestRoutesCannotWeakenTheHeaders:
    def test_route_headers_are_replaced(self, edge_https):
        r = edge_https.get("/test/leaky")
        assert_security_headers(r, hsts=TWO_YEARS)

    def test_no_server_banner(self, edge):
        r = edge.get("/test/leaky")
        assert "server" not in r.headers and "x-powered-by" not in r.headers


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.script_srcs: list[str] = []
        self.stylesheets: list[str] = []
        self.icons: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.script_srcs.append(a["src"] or "")
            else:
                self._in_inline = True
                self.inline_scripts.append("")
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a["href"] or "")
        elif tag == "link" and "icon" in (a.get("rel") or ""):
            self.icons.append(a["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline = False

    def handle_data(self, data: str) -> None:
        if self._in_inline:
            self.inline_scripts[-1] += data


def directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


class TestDocsPagePolicy:
    def test_swagger_page_gets_exactly_what_it_loads(self, edge):
        r = edge.get("/api/v1/docs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = _Page()
        page.feed(r.text)
        csp = directives(r.headers["content-security-policy"])
        assert csp["default-src"] == ["'none'"]
        assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'none'"]
        assert page.script_srcs and page.stylesheets and page.inline_scripts
        # Every file the page references is allowed by its exact URL (not the CDN host at large) ...
        for src in page.script_srcs:
            assert src in csp["script-src"], src
        for href in page.stylesheets:
            assert href in csp["style-src"], href
        assert "https://cdn.jsdelivr.net" not in csp["script-src"] and "https://cdn.jsdelivr.net/" not in csp["script-src"]
        # ... the inline bootstrap by its hash ...
        for script in page.inline_scripts:
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp["script-src"]
        # ... and nothing blanket.
        everything = " ".join(r.headers["content-security-policy"].split())
        for loose in ("'unsafe-inline'", "'unsafe-eval'", "*", "'strict-dynamic'", "http:", "https:"):
            assert loose not in everything.split(), loose
        assert csp["connect-src"] == ["'self'"] and csp["img-src"] == ["data:"]
        # No third-party request per page view: the favicon's host is not allowed.
        assert all(icon not in everything for icon in page.icons)
        # The other headers are the usual ones.
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"

    def test_a_page_with_other_inline_script_would_not_run_it(self, edge):
        r = edge.get("/api/v1/docs")
        policy = r.headers["content-security-policy"]
        evil = base64.b64encode(hashlib.sha256(b"alert(document.domain)").digest()).decode()
        assert evil not in policy

    def test_json_and_everything_else_keep_the_api_policy(self, edge):
        assert edge.get("/api/v1/openapi.json").headers["content-security-policy"] == API_CSP
        # Not the docs page itself (and no redirect to it: issue 16 turned slash redirects off).
        other = edge.get("/api/v1/docs/", follow_redirects=False)
        assert other.status_code == 404 and other.headers["content-security-policy"] == API_CSP
        assert edge.get("/health/live").headers["content-security-policy"] == API_CSP


class TestInstallation:
    def test_layers_sit_in_the_designed_order(self, database, idp):
        settings = settings_for(database, idp)
        app = create_app(settings)  # create_app installs the edge last: inside the correlation id
        # Inside the body cap: the response store of Idempotency-Key (app/idempotency.py), then the
        # body-shape check, innermost (app/edge/bodies.py).
        assert [m.cls for m in app.user_middleware][-5:] == [CorsMiddleware, ParameterPollutionMiddleware, BodyLimitMiddleware,
                                                             IdempotencyMiddleware, BodyShapeMiddleware]

        class RateLimitSlot:
            def __init__(self, app, **options):
                self.app = app

            async def __call__(self, scope, receive, send):
                await self.app(scope, receive, send)

        add_inner_middleware(app, RateLimitSlot)
        assert [m.cls for m in app.user_middleware][-5:] == [ParameterPollutionMiddleware, RateLimitSlot, BodyLimitMiddleware,
                                                             IdempotencyMiddleware, BodyShapeMiddleware]
        with pytest.raises(RuntimeError):
            install(app, settings)  # once only
        with TestClient(app) as c:
            assert c.get("/health/live").status_code == 200
        with pytest.raises(RuntimeError):
            add_inner_middleware(app, RateLimitSlot)  # the stack is built: too late

    def test_refusals_carry_the_correlation_id(self, edge):
        r = edge.options("/api/v1/tenants", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                                                     "X-Correlation-ID": "preflight-1"})
        assert r.status_code == 403 and r.headers["x-correlation-id"] == "preflight-1"

    @pytest.mark.parametrize("overrides", [{"trusted_proxies": ["10.0.0.0/33"]}, {"cloudflare_ranges": ["not-a-cidr"]}])
    def test_malformed_proxy_ranges_fail_at_startup(self, database, idp, overrides):
        with pytest.raises(ValueError):
            edge_app(database, idp, **overrides)
