"""Sentry: the real SDK reports every error to a local ingest server, and nothing it sends holds a
planted secret or e-mail address."""

from __future__ import annotations

import logging

import pytest
import sentry_sdk
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app import problems
from tests.support.sentry_ingest import Ingest

EMAIL = "alice.smith@example.com"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1LTEiLCJ0ZW5hbnQiOiJ0LTEifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
ANTHROPIC = "sk-ant-api03-Xq7vR2mPz9LkT4wB8nYc1dFh6Xq7vR2mPz9LkT4wB8nYc1dFh6AA"
OPENAI = "sk-proj-Gh7Jk2Lm9Np4Qr6St8Uv1Wx3Yz5Ab0CdGh7Jk2Lm9Np4Qr6St8"
GOOGLE = "AIzaSyD4f9Kq2Lm7Np1Rt6Vx8Zb3Cd5Ef0Gh2Jk"
PADDLE = "pdl_live_apikey_01gtgztp8f4kek3yd4g1wrksa3_q6TGTJyvoIz7LDtXT65bX7_AQO"
PASSWORD = "Tr0ub4dor-and-3"
SESSION = "sess-9f8e7d6c5b4a3f2e"
CARD_TOKEN = "tok-4c3b2a1f0e9d8c7b"
DB_URL_PASSWORD = "db-pw-0a9b8c7d"
# Every one of these is somewhere in the requests, locals, logs or exceptions below.
PLANTED = (
    EMAIL,
    JWT,
    JWT.split(".")[1],
    ANTHROPIC,
    OPENAI,
    GOOGLE,
    PADDLE,
    PASSWORD,
    SESSION,
    CARD_TOKEN,
    DB_URL_PASSWORD,
)


def _app() -> FastAPI:
    """A small app with the real problem handlers; each route leaks on purpose."""
    app = FastAPI()
    problems.install(app)
    log = logging.getLogger("palisade.test")

    @app.post("/orders/{order_id}")
    async def create_order(order_id: str, request: Request) -> dict[str, str]:
        payload = await request.json()
        api_key = OPENAI  # noqa: F841 (a local Sentry would capture)
        password = PASSWORD  # noqa: F841
        database_url = f"postgresql://app:{DB_URL_PASSWORD}@db/palisade"  # noqa: F841
        customer = {"email": EMAIL, "card": {"token": CARD_TOKEN}}  # noqa: F841
        log.warning("charging %s via %s", EMAIL, PADDLE)  # becomes a breadcrumb
        raise RuntimeError(f"provider refused {ANTHROPIC} for {payload['contact']}")

    @app.get("/reports")
    def report() -> object:
        try:
            {}["missing"]
        except KeyError:
            log.exception("report failed for %s with %s", EMAIL, GOOGLE)
        return problems.problem(500)

    return app


def _send_requests(client: TestClient) -> None:
    response = client.post(
        f"/orders/42?access_token={JWT}&email={EMAIL}",
        json={"password": PASSWORD, "contact": EMAIL, "card": {"token": CARD_TOKEN}},
        headers={
            "Authorization": f"Bearer {JWT}",
            "X-Api-Key": GOOGLE,
            "X-Forwarded-Email": EMAIL,
            "Cookie": f"session_id={SESSION}; theme=dark",
        },
    )
    assert response.status_code == 500
    assert client.get("/reports").status_code == 500
    sentry_sdk.flush(timeout=10)


@pytest.fixture
def sent(ingest: Ingest) -> Ingest:
    with TestClient(_app(), raise_server_exceptions=False) as client:
        _send_requests(client)
    return ingest


class TestEveryErrorArrives:
    def test_unhandled_and_logged_errors_are_events(self, sent: Ingest) -> None:
        types = {
            value["type"] for event in sent.items("event") for value in event.get("exception", {}).get("values", [])
        }
        assert {"RuntimeError", "KeyError"} <= types

    def test_requests_are_traced(self, sent: Ingest) -> None:
        assert {t["transaction"] for t in sent.items("transaction")} >= {"/orders/{order_id}", "/reports"}


class TestNothingSecretLeaves:
    def test_no_planted_secret_in_any_envelope(self, sent: Ingest) -> None:
        assert sent.envelopes
        for envelope in sent.envelopes:
            text = envelope.decode()
            for secret in PLANTED:
                assert secret not in text, f"{secret!r} reached Sentry"

    def test_credential_headers_and_cookies_are_gone(self, sent: Ingest) -> None:
        for event in sent.items("event") + sent.items("transaction"):
            request = event.get("request", {})
            headers = {name.lower() for name in request.get("headers", {})}
            assert not headers & {"authorization", "cookie", "x-api-key"}
            assert "cookies" not in request
            assert not request.get("data")  # request bodies are not collected

    def test_locals_are_sent_scrubbed(self, sent: Ingest) -> None:
        # Local variables stay useful for debugging; their secrets do not.
        (error,) = [e for e in sent.items("event") if e["exception"]["values"][-1]["type"] == "RuntimeError"]
        frame = next(
            f for f in error["exception"]["values"][-1]["stacktrace"]["frames"] if f["function"] == "create_order"
        )
        assert frame["vars"]["password"] == "[REDACTED]"
        assert frame["vars"]["api_key"] == "[REDACTED]"
        assert "[REDACTED:password]" in frame["vars"]["database_url"]
        assert frame["vars"]["order_id"] == "'42'"

    def test_exception_message_and_breadcrumb_are_scrubbed(self, sent: Ingest) -> None:
        (error,) = [e for e in sent.items("event") if e["exception"]["values"][-1]["type"] == "RuntimeError"]
        assert (
            error["exception"]["values"][-1]["value"]
            == "provider refused [REDACTED:anthropic_key] for [REDACTED:email]"
        )
        crumbs = [c["message"] for c in error["breadcrumbs"]["values"] if c.get("category") == "palisade.test"]
        assert "charging [REDACTED:email] via [REDACTED:paddle_key]" in crumbs

    def test_no_personal_data_by_default(self, ingest: Ingest) -> None:
        assert not sentry_sdk.get_client().should_send_default_pii()
