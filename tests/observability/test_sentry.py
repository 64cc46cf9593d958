"""Sentry: the real SDK reports every error to a local ingest server, and what arrives there is
only what is known to be safe — no secret, and no personal data of any kind.

Personal data is planted everywhere an error report could pick it up: local variables of the
failing function, the exception's message, log records that become the event or its breadcrumbs
(the audit line among them, with the client's IP, IdP subject and user agent), the request's
headers, query string, cookies and body, the user and tags set on the scope. The assertions read
the raw bytes the ingest received.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app import problems
from app.config import Settings
from app.main import create_app
from app.observability import http as observability_http
from app.observability.sentry import BREADCRUMB_LOGGERS, WITHHELD
from app.observability.tracing import configure_tracing, instrument_app
from tests.support.sentry_ingest import Ingest

# --- secrets (as before: the scrubber's formats) ---
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
SECRETS = (EMAIL, JWT, JWT.split(".")[1], ANTHROPIC, OPENAI, GOOGLE, PADDLE, PASSWORD, SESSION, CARD_TOKEN, DB_URL_PASSWORD)

# --- personal data: names and free text have no shape a scrubber could find ---
FIRST_NAME, LAST_NAME = "Margarethe", "Oyelaran"
NAME = f"{FIRST_NAME} {LAST_NAME}"
PHONE = "+44 20 7946 0958"
DOCUMENT = "the patient reported chest pain radiating to the left arm"
ADDRESS = "221B Baker Street"
CLIENT_IP = "198.51.100.23"
SUBJECT = "user-7c41e9d2b8a6"
USER_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) ProbeBrowser/7.3.1"
CARD = "4111 1111 1111 1111"
IBAN = "GB82WEST12345698765432"
SSN = "536-22-1234"
NINO = "AB123456C"
NIR = "1 84 12 76 451 089 46"
SEARCH = "bankruptcy-advice-Oyelaran"  # a query-string value
ORDER_ID = "ord-55c1e0a7"  # an id in the path: kept out, the route template is sent instead
PERSONAL = (FIRST_NAME, LAST_NAME, PHONE, "7946 0958", DOCUMENT, "chest pain", ADDRESS, CLIENT_IP, SUBJECT,
            "ProbeBrowser", CARD, "4111111111111111", IBAN, SSN, NINO, NIR, SEARCH, ORDER_ID)
PLANTED = SECRETS + PERSONAL

CORRELATION_ID = "probe-correlation-1"
AUDIT_LINE = {  # the shape app/audit/service.py logs after a commit
    "tenant_id": "3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f", "seq": 7, "category": "content", "action": "document.create",
    "outcome": "success", "actor_type": "user", "actor_issuer": "https://idp.example.com/realms/acme",
    "actor_subject": SUBJECT, "actor_role": "member", "client_ip": CLIENT_IP, "user_agent": USER_AGENT,
    "correlation_id": CORRELATION_ID, "details": {"title": NAME},
}  # fmt: skip


class BillingRefused(Exception):
    """An exception class of ours whose message is built from personal data."""


def _bill(customer: dict[str, str], note: str) -> None:
    # Locals a debugger would love and Sentry must not get.
    name = customer["name"]
    phone = PHONE
    document_text = note
    card_number, iban, ssn, nino, nir = CARD, IBAN, SSN, NINO, NIR
    api_key, password = OPENAI, PASSWORD
    database_url = f"postgresql://app:{DB_URL_PASSWORD}@db/palisade"
    del phone, document_text, card_number, iban, ssn, nino, nir, api_key, password, database_url
    raise BillingRefused(f"card of {name} at {customer['phone']} refused by {ANTHROPIC}: {customer['note']}")


def _app() -> FastAPI:
    """A small app wired like the real one (tracing, problem handlers, correlation id); each route leaks."""
    app = FastAPI()
    configure_tracing()  # once per process, as create_app does
    instrument_app(app)
    problems.install(app)
    observability_http.install(app)
    alerts_log = logging.getLogger("palisade.alerts")  # allow-listed for breadcrumbs
    audit_log = logging.getLogger("palisade.audit")
    other_log = logging.getLogger("some.library")

    @app.post("/orders/{order_id}")
    async def create_order(order_id: str, request: Request) -> dict[str, str]:
        payload = await request.json()
        sentry_sdk.set_user({"id": SUBJECT, "email": EMAIL, "ip_address": CLIENT_IP, "username": NAME})
        sentry_sdk.set_tag("customer", NAME)
        sentry_sdk.set_context("customer", {"name": NAME, "phone": PHONE})
        sentry_sdk.add_breadcrumb(category="custom", message=f"billing {NAME}", data={"phone": PHONE})
        audit_log.info("audit_event", extra={"audit": AUDIT_LINE})  # the trail's line: never a breadcrumb
        other_log.warning("charging %s via %s at %s", EMAIL, PADDLE, PHONE)  # a library: never a breadcrumb
        alerts_log.warning("alert_fired", extra={"rule": "role_escalation", "count": 3, "severity": "high",
                                                 "key": f"t|ip:{CLIENT_IP}", "who": NAME})
        alerts_log.warning(f"charging {NAME} at {PHONE}")  # allow-listed logger, message not an event name
        _bill({"name": NAME, "phone": PHONE, "note": payload["note"]}, payload["note"])
        return {}

    @app.get("/reports")
    def report() -> object:
        try:
            {}[f"{NAME} {IBAN}"]
        except KeyError:
            logging.getLogger("palisade.alerts").exception("report failed for %s with %s", EMAIL, GOOGLE,
                                                           extra={"phone": PHONE, "rule": "data_export_requested"})
        return problems.problem(500)

    return app


def _send_requests(client: TestClient) -> None:
    response = client.post(
        f"/orders/{ORDER_ID}?access_token={JWT}&email={EMAIL}&q={SEARCH}",
        json={"password": PASSWORD, "contact": EMAIL, "note": DOCUMENT, "address": ADDRESS, "card": CARD},
        headers={
            "Authorization": f"Bearer {JWT}",
            "X-Api-Key": GOOGLE,
            "X-Forwarded-Email": EMAIL,
            "X-Forwarded-For": CLIENT_IP,
            "X-Real-IP": CLIENT_IP,
            "User-Agent": USER_AGENT,
            "Referer": f"https://app.example.com/people/{LAST_NAME}",
            "X-Correlation-ID": CORRELATION_ID,
            "Cookie": f"session_id={SESSION}; name={LAST_NAME}",
        },
    )
    assert response.status_code == 500
    assert client.get("/reports", headers={"User-Agent": USER_AGENT}).status_code == 500
    sentry_sdk.flush(timeout=10)


@pytest.fixture
def sent(ingest: Ingest) -> Ingest:
    with TestClient(_app(), raise_server_exceptions=False, client=(CLIENT_IP, 50000)) as client:
        _send_requests(client)
    return ingest


def _error(sent: Ingest, exc_type: str) -> dict[str, Any]:
    (event,) = [e for e in sent.items("event") if e.get("exception", {}).get("values", [{}])[-1].get("type") == exc_type]
    return event


class TestEveryErrorArrives:
    def test_unhandled_and_logged_errors_are_events(self, sent: Ingest) -> None:
        types = {v["type"] for event in sent.items("event") for v in event.get("exception", {}).get("values", [])}
        assert {"BillingRefused", "KeyError"} <= types

    def test_requests_are_traced_under_their_route_template(self, sent: Ingest) -> None:
        assert {t["transaction"] for t in sent.items("transaction")} >= {"/orders/{order_id}", "/reports"}


class TestNothingPersonalOrSecretArrives:
    def test_no_planted_value_in_any_envelope_byte(self, sent: Ingest) -> None:
        assert len(sent.envelopes) >= 4  # two errors, two transactions
        raw = b"\n".join(sent.envelopes)
        leaked = [value for value in PLANTED if value.encode() in raw]
        assert leaked == [], f"reached Sentry: {leaked}"

    def test_no_locals(self, sent: Ingest) -> None:
        for event in sent.items("event"):
            for value in event["exception"]["values"]:
                for frame in value["stacktrace"]["frames"]:
                    assert "vars" not in frame

    def test_exception_messages_are_withheld(self, sent: Ingest) -> None:
        # Messages are built from whatever the code had at hand; only the type says what happened.
        for exc_type in ("BillingRefused", "KeyError"):
            (value,) = _error(sent, exc_type)["exception"]["values"]
            assert value["value"] == WITHHELD

    def test_no_user_request_details_or_scope_data(self, sent: Ingest) -> None:
        for event in sent.items("event") + sent.items("transaction"):
            assert "user" not in event
            assert "server_name" not in event
            request = event.get("request", {})
            assert set(request) <= {"method", "url", "headers"}
            assert {name.lower() for name in request.get("headers", {})} <= {"content-type", "content-length", "accept",
                                                                              "x-correlation-id"}
            assert set(event.get("tags", {})) <= {"correlation_id", "trace_id", "status_code"}
            assert set(event.get("contexts", {})) <= {"trace", "response", "runtime"}

    def test_audit_line_and_other_loggers_never_become_breadcrumbs(self, sent: Ingest) -> None:
        crumbs = _error(sent, "BillingRefused")["breadcrumbs"]["values"]
        assert {c["category"] for c in crumbs} <= BREADCRUMB_LOGGERS
        assert "palisade.audit" not in BREADCRUMB_LOGGERS
        assert [(c["message"], c.get("data", {})) for c in crumbs] == [
            ("alert_fired", {"rule": "role_escalation", "count": 3, "severity": "high"}),
            (WITHHELD, {}),
        ]


class TestWhatIsKeptIsUseful:
    def test_code_locations_without_values(self, sent: Ingest) -> None:
        (value,) = _error(sent, "BillingRefused")["exception"]["values"]
        frames = value["stacktrace"]["frames"]
        assert [f["function"] for f in frames][-2:] == ["create_order", "_bill"]
        assert all(f["module"] and f["lineno"] for f in frames[-2:])
        assert frames[-1]["module"] == __name__

    def test_route_template_status_correlation_and_trace_ids(self, sent: Ingest) -> None:
        error = _error(sent, "BillingRefused")
        assert error["transaction"] == "/orders/{order_id}"
        assert error["request"]["url"] == "/orders/{order_id}"
        assert error["request"]["method"] == "POST"
        assert error["tags"]["correlation_id"] == CORRELATION_ID
        assert len(error["tags"]["trace_id"]) == 32  # the OpenTelemetry trace id of the request's logs
        assert len(error["contexts"]["trace"]["trace_id"]) == 32
        assert error["release"] == "palisade@test"
        assert error["environment"] == "test"
        (transaction,) = [t for t in sent.items("transaction") if t["transaction"] == "/orders/{order_id}"]
        assert transaction["contexts"]["response"]["status_code"] == 500

    def test_logged_error_keeps_its_event_name_logger_and_safe_fields(self, sent: Ingest) -> None:
        error = _error(sent, "KeyError")
        assert error["logger"] == "palisade.alerts"
        assert error["logentry"] == {"message": WITHHELD}  # "report failed for %s with %s" is prose, not a name
        assert error["extra"] == {"rule": "data_export_requested"}


def test_sdk_options_in_force(ingest: Ingest) -> None:
    options = sentry_sdk.get_client().options
    assert options["include_local_variables"] is False
    assert options["max_request_body_size"] == "never"
    assert not sentry_sdk.get_client().should_send_default_pii()
    collection = options["data_collection"]
    assert collection["user_info"] is False
    assert collection["http_bodies"] == []
    assert collection["cookies"]["mode"] == "off"
    assert collection["url_query_params"]["mode"] == "off"
    assert collection["stack_frame_variables"] is False


def _capture_failure(n: int) -> None:
    try:
        raise RuntimeError(f"failure {n}")
    except RuntimeError:
        sentry_sdk.capture_exception()


def test_the_apps_sampling_ten_percent_of_transactions_every_error(ingest: Ingest) -> None:
    settings = Settings(_env_file=None, database_url="postgresql://palisade@127.0.0.1:1/unused", sentry_dsn=ingest.dsn)
    assert settings.sentry_traces_sample_rate == 0.1  # the shipped default
    create_app(settings)  # starts the SDK as the app does
    options = sentry_sdk.get_client().options
    assert options["dsn"] == ingest.dsn
    assert options["traces_sample_rate"] == 0.1
    assert options["sample_rate"] == 1.0
    assert options["release"] == "palisade@0.1.0"

    # Every error is kept: 25 of 25 arrive (a sample rate below 1 would drop some of them).
    for n in range(25):
        _capture_failure(n)
    sentry_sdk.flush(timeout=10)
    assert len([e for e in ingest.items("event") if e["exception"]["values"][-1]["type"] == "RuntimeError"]) == 25
