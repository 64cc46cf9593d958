"""Turnstile on public routes, against a local server speaking siteverify's documented protocol."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.api import Caller, World, person, settings_for

SECRET = "0x4AAAAAAAlocal-test-secret"
GOOD, BAD = "good-token", "bad-token"


@dataclass
class SiteVerify:
    """Answers like https://challenges.cloudflare.com/turnstile/v0/siteverify (form-encoded POST)."""

    url: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)
    hostname: str = "app.example.com"
    action: str = "accept-invitation"
    status: int = 200
    body: bytes | None = None

    def answer(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("secret") != SECRET:
            return {"success": False, "error-codes": ["invalid-input-secret"]}
        if form.get("response") != GOOD:
            return {"success": False, "error-codes": ["invalid-input-response"]}
        return {"success": True, "challenge_ts": "2026-11-24T12:00:00.000Z", "hostname": self.hostname,
                "error-codes": [], "action": self.action, "cdata": ""}


@pytest.fixture
def siteverify() -> Iterator[SiteVerify]:
    sv = SiteVerify()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            form = dict(urllib.parse.parse_qsl(raw))
            sv.calls.append(form)
            payload = sv.body if sv.body is not None else json.dumps(sv.answer(form)).encode()
            self.send_response(sv.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sv.url = f"http://127.0.0.1:{server.server_address[1]}/turnstile/v0/siteverify"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield sv
    server.shutdown()
    server.server_close()


@pytest.fixture
def guarded(database, idp, siteverify: SiteVerify) -> Iterator[TestClient]:
    settings = settings_for(database, idp, turnstile_secret=SECRET, turnstile_siteverify_url=siteverify.url,
                            turnstile_expected_hostname="app.example.com", turnstile_expected_action="accept-invitation")
    with TestClient(create_app(settings), client=("203.0.113.9", 5000)) as c:
        yield c


INVITEE = "turnstile-invitee@people.example"


def invitation(world: World) -> str:
    r = world.admin.post(f"{world.base}/invitations",
                         json={"email": INVITEE, "workspace_id": str(world.workspaces[0]), "workspace_role": "member"})
    return r.json()["token"]


def accept(guarded: TestClient, newcomer: Caller, token: str, turnstile: str | None, cid: str):
    headers = {"Authorization": f"Bearer {newcomer.token}", "X-Correlation-ID": cid}
    if turnstile is not None:
        headers["CF-Turnstile-Response"] = turnstile
    return guarded.post("/api/v1/invitations/accept", json={"token": token}, headers=headers)


class TestAccepted:
    def test_good_token_passes_and_siteverify_sees_secret_and_client_ip(self, world, client, idp, guarded, siteverify):
        r = accept(guarded, person(client, idp, email=INVITEE), invitation(world), GOOD, "ts-ok")
        assert r.status_code == 200, r.text
        (call,) = siteverify.calls
        assert (call["secret"], call["response"], call["remoteip"]) == (SECRET, GOOD, "203.0.113.9")
        assert call["idempotency_key"]


class TestRefused:
    @pytest.mark.parametrize("turnstile", [None, "", BAD, "x" * 2049])
    def test_missing_or_invalid_token_is_400_audited_and_changes_nothing(self, world, client, idp, guarded, vendor, turnstile):
        newcomer, token = person(client, idp, email=INVITEE), invitation(world)
        r = accept(guarded, newcomer, token, turnstile, "ts-bad")
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        assert BAD not in r.text and SECRET not in r.text
        events = vendor.get("/api/v1/audit-events", params={"correlation_id": "ts-bad"}).json()["items"]
        assert [(e["category"], e["action"]) for e in events][:1] == [("authentication", "turnstile.failed")]
        # The invitation was not spent.
        assert accept(guarded, newcomer, token, GOOD, "ts-after").status_code == 200

    @pytest.mark.parametrize(("hostname", "action"), [("evil.example.com", "accept-invitation"), ("app.example.com", "login")])
    def test_token_for_another_site_or_action_is_400(self, world, client, idp, guarded, siteverify, hostname, action):
        siteverify.hostname, siteverify.action = hostname, action
        assert accept(guarded, person(client, idp, email=INVITEE), invitation(world), GOOD, "ts-mismatch").status_code == 400


class TestOutageFailsClosed:
    @pytest.mark.parametrize(("status", "body"), [(500, b"oops"), (200, b"<html>captive portal</html>"), (200, b"[]")])
    def test_siteverify_errors_are_503(self, world, client, idp, guarded, siteverify, vendor, status, body):
        siteverify.status, siteverify.body = status, body
        r = accept(guarded, person(client, idp, email=INVITEE), invitation(world), GOOD, "ts-down")
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        events = vendor.get("/api/v1/audit-events", params={"correlation_id": "ts-down"}).json()["items"]
        assert [e["action"] for e in events][:1] == ["turnstile.unavailable"]

    def test_siteverify_unreachable_is_503(self, world, client, idp, database):
        settings = settings_for(database, idp, turnstile_secret=SECRET, turnstile_siteverify_url="http://127.0.0.1:9/siteverify")
        with TestClient(create_app(settings)) as c:
            assert accept(c, person(client, idp, email=INVITEE), invitation(world), GOOD, "ts-unreach").status_code == 503


class TestTurnedOff:
    def test_off_wins_over_a_configured_secret(self, world, client, idp, database, siteverify):
        settings = settings_for(database, idp, turnstile="off", turnstile_secret=SECRET, turnstile_siteverify_url=siteverify.url)
        with TestClient(create_app(settings)) as c:
            assert accept(c, person(client, idp, email=INVITEE), invitation(world), None, "ts-off").status_code == 200
        assert siteverify.calls == []
