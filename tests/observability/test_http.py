"""The HTTP-layer observability middlewares: 5xx answers feed the alert, the id is on them too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Response
from fastapi.testclient import TestClient

from app import alerts
from app.main import create_app
from app.observability.http import CorrelationIdMiddleware, ServerErrorsMiddleware
from tests.support.api import settings_for
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any] | None]] = []

    def observe(self, signal: str, key: str, *, value: float = 1.0, details: dict[str, Any] | None = None) -> None:
        self.seen.append((signal, key, details))

    def observe_audit_event(self, event: dict[str, Any]) -> None:
        pass


@pytest.fixture
def observed(database: TestDatabase, idp: TestIdP) -> Iterator[tuple[TestClient, Recorder]]:
    app = create_app(settings_for(database, idp))

    @app.get("/test/boom/{item}")
    def boom(item: str) -> None:
        raise RuntimeError("unexpected failure")

    @app.get("/test/unavailable")
    def unavailable() -> Response:
        return Response(status_code=503)

    with TestClient(app, raise_server_exceptions=False) as client:
        installed, recorder = alerts.current(), Recorder()
        alerts.install(recorder)  # type: ignore[arg-type]
        try:
            yield client, recorder
        finally:
            alerts.install(installed)


def test_they_are_the_outermost_user_middlewares(database: TestDatabase, idp: TestIdP) -> None:
    app = create_app(settings_for(database, idp))
    assert [m.cls for m in app.user_middleware][:2] == [CorrelationIdMiddleware, ServerErrorsMiddleware]


def test_a_5xx_answer_is_observed_by_route_template_and_carries_the_id(observed) -> None:
    client, recorder = observed
    r = client.get("/test/unavailable", headers={"X-Correlation-ID": "five-oh-three"})
    assert r.status_code == 503 and r.headers["X-Correlation-ID"] == "five-oh-three"
    assert recorder.seen == [(alerts.HTTP_5XX, "api|GET /test/unavailable", {"status": 503})]


def test_an_unhandled_exception_is_observed_once_as_a_500(observed) -> None:
    client, recorder = observed
    r = client.get("/test/boom/42")
    assert r.status_code == 500 and "unexpected failure" not in r.text
    assert recorder.seen == [(alerts.HTTP_5XX, "api|GET /test/boom/{item}", {"status": 500})]


def test_other_answers_are_not_observed(observed) -> None:
    client, recorder = observed
    assert client.get("/health/live").status_code == 200
    assert client.get("/api/v1/tenants").status_code == 401
    assert client.get("/no/such/path").status_code == 404
    assert recorder.seen == []
