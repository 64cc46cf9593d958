"""Body size: refused before anything reads or parses it — at once by Content-Length, or while it
streams in (chunked), so the app never holds more than the limit; upload routes get their own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app.edge import http as edge_http
from app.edge.http import body_limit_for, register_body_limit
from app.main import create_app
from tests.support.api import World, settings_for

PROBLEM_JSON = "application/problem+json"
CAP = 1024
UPLOAD_CAP = 4096
UPLOADS = "/test/tenants/{tenant_id}/uploads"

# What the echo route actually received, per request.
seen: list[int] = []


def edge_app(database, idp, **overrides: Any) -> FastAPI:
    settings = settings_for(database, idp, max_body_bytes=CAP, upload_max_bytes=UPLOAD_CAP, **overrides)
    app = create_app(settings)

    async def echo(request: Request) -> dict[str, int]:
        count = 0
        try:
            async for chunk in request.stream():
                count += len(chunk)
        finally:
            seen.append(count)
        return {"bytes": count}

    for path in ("/test/echo", "/test/tenants/{t}/uploads", "/test/tenants/{t}/uploads/{u}/content", "/test/tenants/{t}/other",
                 "/test/tenants/{t}/uploadsX"):
        app.add_api_route(path, echo, methods=["POST"])
    register_body_limit(UPLOADS, "upload_max_bytes")
    return app


@pytest.fixture(scope="module")
def app(database, idp) -> Iterator[FastAPI]:
    yield edge_app(database, idp)
    # The rule table is process-wide: leave it as other tests expect it.
    edge_http._BODY_LIMIT_RULES[:] = [rule for rule in edge_http._BODY_LIMIT_RULES if rule.template != UPLOADS]


@pytest.fixture(scope="module")
def edge(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    seen.clear()


def too_large(r: httpx.Response, limit: int = CAP) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert r.json()["status"] == 413 and r.json()["max_body_bytes"] == limit
    assert r.headers["connection"] == "close"
    assert r.headers["x-frame-options"] == "DENY"  # the edge headers, as on every answer


def chunks(total: int, size: int = 100) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


class TestByContentLength:
    def test_at_the_limit_is_fine(self, edge):
        r = edge.post("/test/echo", content=b"x" * CAP)
        assert r.status_code == 200 and r.json() == {"bytes": CAP}

    def test_one_byte_over_is_refused_without_calling_the_app(self, edge):
        too_large(edge.post("/test/echo", content=b"x" * (CAP + 1)))
        assert seen == []

    def test_refused_before_auth_and_parsing(self, edge):
        r = edge.post("/api/v1/tenants", content=b"{" * 10_000, headers={"Content-Type": "application/json"})
        too_large(r)

    def test_real_route_refuses_and_creates_nothing(self, edge, world: World):
        auth = {"Authorization": f"Bearer {world.admin.token}"}
        r = edge.post(f"{world.ws(0)}/documents", json={"title": "oversized", "body": "x" * 5000}, headers=auth)
        too_large(r)
        titles = [d["title"] for d in edge.get(f"{world.ws(0)}/documents", headers=auth).json()["items"]]
        assert "oversized" not in titles
        ok = edge.post(f"{world.ws(0)}/documents", json={"title": "small", "body": "x" * 100}, headers=auth)
        assert ok.status_code == 201, ok.text

    def test_a_declared_huge_body_is_never_read(self, app: FastAPI):
        """Content-Length: 10 GB, and a receive() that must not be called at all."""

        async def receive() -> dict[str, Any]:
            raise AssertionError("the body was read")

        sent = run_asgi(app, [(b"content-length", b"10000000000")], receive)
        assert sent[0]["status"] == 413
        assert seen == []

    @pytest.mark.parametrize("value", [b"abc", b"-1", b"1e3", b"0x10", b"", b"12 34"])
    def test_malformed_content_length(self, app: FastAPI, value):
        sent = run_asgi(app, [(b"content-length", value)], body_messages([b"x"]))
        assert sent[0]["status"] == 400
        assert seen == []

    def test_two_content_lengths(self, app: FastAPI):
        sent = run_asgi(app, [(b"content-length", b"1"), (b"content-length", b"5000")], body_messages([b"x"]))
        assert sent[0]["status"] == 400


class TestWhileStreaming:
    def test_chunked_within_the_limit(self, edge):
        r = edge.post("/test/echo", content=chunks(CAP))
        assert r.status_code == 200 and r.json() == {"bytes": CAP}

    def test_chunked_over_the_limit(self, edge):
        r = edge.post("/test/echo", content=chunks(50_000))
        assert "content-length" not in r.request.headers  # really sent without a length
        too_large(r)
        assert seen and max(seen) <= CAP

    def test_app_never_sees_more_than_the_limit(self, app: FastAPI):
        pieces = [b"x" * 300] * 20  # 6000 bytes, no Content-Length
        receive = body_messages(pieces)
        sent = run_asgi(app, [], receive)
        assert sent[0]["status"] == 413
        assert seen == [900]  # three chunks; the fourth would cross 1024 and is withheld
        assert receive.calls == 4  # and nothing after it is even pulled from the client
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert b'"status":413' in body

    def test_real_route_chunked(self, edge, world: World):
        auth = {"Authorization": f"Bearer {world.admin.token}", "Content-Type": "application/json"}
        payload = b'{"title": "chunked", "body": "' + b"x" * 5000 + b'"}'
        r = edge.post(f"{world.ws(0)}/documents", content=iter([payload[i:i + 256] for i in range(0, len(payload), 256)]),
                      headers=auth)
        too_large(r)


class TestRouteLimits:
    def test_upload_subtree_gets_the_upload_limit(self, edge):
        for path in ("/test/tenants/t1/uploads", "/test/tenants/t1/uploads/u1/content"):
            r = edge.post(path, content=b"x" * 3000)
            assert r.status_code == 200, (path, r.text)
            too_large(edge.post(path, content=b"x" * (UPLOAD_CAP + 1)), UPLOAD_CAP)
            too_large(edge.post(path, content=chunks(UPLOAD_CAP + 1)), UPLOAD_CAP)

    @pytest.mark.parametrize("path", ["/test/tenants/t1/other", "/test/tenants/t1/uploadsX", "/test/echo"])
    def test_elsewhere_the_default_limit(self, edge, path):
        too_large(edge.post(path, content=b"x" * 3000))

    def test_overhead_is_added(self, app: FastAPI):
        template = "/test/framed/{id}"
        register_body_limit(template, "upload_max_bytes", overhead_bytes=100)
        try:
            assert body_limit_for("/test/framed/1/part", app.state.settings) == UPLOAD_CAP + 100
        finally:
            edge_http._BODY_LIMIT_RULES[:] = [r for r in edge_http._BODY_LIMIT_RULES if r.template != template]

    def test_lookup(self, app: FastAPI):
        settings = app.state.settings
        assert body_limit_for("/test/tenants/a/uploads", settings) == UPLOAD_CAP
        assert body_limit_for("/test/tenants/a/uploads/", settings) == UPLOAD_CAP
        assert body_limit_for("/test/tenants/a/b/uploads", settings) == CAP  # {tenant_id} is one segment
        assert body_limit_for("/test/tenants//uploads", settings) == CAP
        assert body_limit_for("/api/v1/tenants", settings) == CAP

    def test_registration_is_checked(self):
        register_body_limit(UPLOADS, "upload_max_bytes")  # the same pair again: fine
        with pytest.raises(ValueError):
            register_body_limit(UPLOADS, "max_body_bytes")  # another limit for the same routes
        with pytest.raises(ValueError):
            register_body_limit(UPLOADS, "upload_max_bytes", overhead_bytes=1)
        with pytest.raises(ValueError):
            register_body_limit("/x", "upload_max_bytes", overhead_bytes=-1)
        with pytest.raises(ValueError):
            register_body_limit("/x", "no_such_setting")
        with pytest.raises(ValueError):
            register_body_limit("/x", "cors_allow_origins")  # not an integer
        with pytest.raises(ValueError):
            register_body_limit("x/{y}", "upload_max_bytes")  # not a path
        with pytest.raises(ValueError):
            register_body_limit("/x/{y:path}", "upload_max_bytes")


# --- raw ASGI, for what an HTTP client library will not send ------------------------------------


class body_messages:
    """A receive() that hands out the given chunks and counts how often it was called."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.pieces:
            piece = self.pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(self.pieces)}
        await asyncio.sleep(3600)  # the client is still there, sending nothing
        return {"type": "http.disconnect"}


def run_asgi(app: FastAPI, headers: list[tuple[bytes, bytes]], receive: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/test/echo", "raw_path": b"/test/echo", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    return sent
