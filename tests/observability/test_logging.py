"""Logging: every line, from structlog or plain `logging`, is scrubbed, carries the request context
and is one JSON object."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog

from app.observability.logging import (
    bind_request_context,
    clear_request_context,
    configure_logging,
    get_logger,
)

EMAIL = "alice.smith@example.com"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1LTEiLCJlbWFpbCI6ImFAYi5jb20ifQ.c2lnbmF0dXJlLWJ5dGVz"
API_KEY = "sk-ant-api03-Xq7vR2mPz9LkT4wB8nYc1dFh6Xq7vR2mPz9LkT4wB8nYc1dFh6AA"
PLANTED = (EMAIL, JWT, API_KEY, "hunter2")
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[str]]]:
    """Configure JSON logging for one test, hand back a reader of the lines written since."""
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    servers = [logging.getLogger(name) for name in UVICORN]
    saved_servers = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in servers]
    configure_logging(json=True, level="INFO")
    capsys.readouterr()

    def read() -> list[str]:
        return capsys.readouterr().err.splitlines()

    yield read
    clear_request_context()
    root.handlers[:] = root_handlers
    root.setLevel(root_level)
    for server, handlers, propagate, level in saved_servers:
        server.handlers[:] = handlers
        server.propagate = propagate
        server.setLevel(level)
    structlog.reset_defaults()


def _events(raw: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw]


def _assert_clean(raw: list[str]) -> None:
    text = "\n".join(raw)
    for secret in PLANTED:
        assert secret not in text, text


class TestEveryPathIsScrubbed:
    def test_stdlib_message_and_percent_args(self, lines: Callable[[], list[str]]) -> None:
        logging.getLogger("some.library").warning(f"login for {EMAIL}: %s rejected key %s", JWT, API_KEY)
        raw = lines()
        _assert_clean(raw)
        assert (
            _events(raw)[0]["event"]
            == "login for [REDACTED:email]: [REDACTED:jwt] rejected key [REDACTED:anthropic_key]"
        )

    def test_stdlib_extra_fields(self, lines: Callable[[], list[str]]) -> None:
        logging.getLogger("some.library").info(
            "called", extra={"password": "hunter2", "who": EMAIL, "headers": {"Authorization": f"Bearer {JWT}"}}
        )
        raw = lines()
        _assert_clean(raw)
        event = _events(raw)[0]
        assert event["password"] == "[REDACTED]"
        assert event["who"] == "[REDACTED:email]"
        assert event["headers"] == {"Authorization": "[REDACTED]"}

    def test_structlog_kwargs_and_positional_args(self, lines: Callable[[], list[str]]) -> None:
        get_logger("app.test").info(
            "provider %s failed", API_KEY, token=JWT, customer={"email": EMAIL}, note="password=hunter2"
        )
        raw = lines()
        _assert_clean(raw)
        event = _events(raw)[0]
        assert event["event"] == "provider [REDACTED:anthropic_key] failed"
        assert event["token"] == "[REDACTED]"
        assert event["note"] == "password=[REDACTED]"

    def test_exception_text_from_both_loggers(self, lines: Callable[[], list[str]]) -> None:
        try:
            raise RuntimeError(f"upstream refused {API_KEY} for {EMAIL}")
        except RuntimeError:
            logging.getLogger("some.library").exception("stdlib failure")
            get_logger("app.test").exception("structlog failure")
        raw = lines()
        _assert_clean(raw)
        for event in _events(raw):
            assert "RuntimeError: upstream refused [REDACTED:anthropic_key] for [REDACTED:email]" in event["exception"]

    def test_uvicorn_lines_come_through_the_same_chain(self, lines: Callable[[], list[str]]) -> None:
        # As uvicorn's dictConfig (log_level="info") leaves it: its own handler, not propagating
        # to the root (the fixture puts it back afterwards).
        access = logging.getLogger("uvicorn.access")
        access.handlers[:] = [logging.StreamHandler()]
        access.propagate = False
        access.setLevel(logging.INFO)
        configure_logging(json=True, level="INFO")
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "203.0.113.7:50000",
            "GET",
            f"/api/v1/files?access_token={JWT}&email={EMAIL}",
            "1.1",
            200,
        )
        raw = lines()
        _assert_clean(raw)
        assert len(raw) == 1
        assert _events(raw)[0]["logger"] == "uvicorn.access"


class TestRequestContext:
    def test_bound_ids_are_on_every_line(self, lines: Callable[[], list[str]]) -> None:
        bind_request_context(
            correlation_id="c0ffee42",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            tenant_id="3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f",
        )
        get_logger("app.test").info("from structlog")
        logging.getLogger("sqlalchemy.engine").warning("from a library")
        logging.getLogger("uvicorn.error").error("from the server")
        events = _events(lines())
        assert len(events) == 3
        for event in events:
            assert event["correlation_id"] == "c0ffee42"
            assert event["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
            assert event["tenant_id"] == "3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f"

    def test_cleared_context_is_gone(self, lines: Callable[[], list[str]]) -> None:
        bind_request_context(correlation_id="c0ffee42")
        clear_request_context()
        get_logger("app.test").info("next request")
        assert "correlation_id" not in _events(lines())[0]


class TestLineFormat:
    def test_each_line_is_one_json_object_with_level_logger_and_utc_time(self, lines: Callable[[], list[str]]) -> None:
        get_logger("app.test").info("multi\nline", detail="a\nb")
        logging.getLogger("some.library").error("plain")
        events = _events(lines())
        assert [e["level"] for e in events] == ["info", "error"]
        assert [e["logger"] for e in events] == ["app.test", "some.library"]
        for event in events:
            assert event["timestamp"].endswith("Z")
            assert datetime.fromisoformat(event["timestamp"]).utcoffset().total_seconds() == 0

    def test_level_filters_both_kinds_of_logger(self, lines: Callable[[], list[str]]) -> None:
        get_logger("app.test").debug("hidden")
        logging.getLogger("some.library").debug("hidden too")
        get_logger("app.test").info("shown")
        assert [e["event"] for e in _events(lines())] == ["shown"]

    def test_configuring_twice_does_not_double_lines(self, lines: Callable[[], list[str]]) -> None:
        configure_logging(json=True, level="INFO")
        logging.getLogger("some.library").info("once")
        assert len(lines()) == 1

    def test_console_rendering_is_scrubbed_too(self, lines: Callable[[], list[str]]) -> None:
        configure_logging(json=False, level="INFO")
        get_logger("app.test").info(f"hello {EMAIL}", password="hunter2")
        try:
            raise ValueError(API_KEY)
        except ValueError:
            logging.getLogger("some.library").exception("failed")
        raw = lines()
        _assert_clean(raw)
        assert "hello [REDACTED:email]" in raw[0]
        assert "ValueError: [REDACTED:anthropic_key]" in "\n".join(raw)
