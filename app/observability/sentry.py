"""Sentry error reporting: every event, transaction and breadcrumb passes the log scrubber first."""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration

from app.observability.scrub import is_secret_key, scrub


def _strip_request(event: dict[str, Any]) -> None:
    # Credentials are removed outright, not masked: their presence is all a reader needs, and
    # the request shows it as an absent header.
    request = event.get("request")
    if not isinstance(request, dict):
        return
    request.pop("cookies", None)
    headers = request.get("headers")
    if isinstance(headers, dict):
        request["headers"] = {name: value for name, value in headers.items() if not is_secret_key(name)}


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    _strip_request(event)
    return scrub(event)  # type: ignore[no-any-return]


def _before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    return scrub(crumb)  # type: ignore[no-any-return]


def _before_send_log(log: Any, hint: dict[str, Any]) -> Any:
    return scrub(log)


def init_sentry(*, dsn: str, environment: str, traces_sample_rate: float, release: str | None = None) -> None:
    """Start the Sentry SDK (no-op without a DSN) with scrubbing on everything it sends."""
    if not dsn:
        return
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        traces_sample_rate=traces_sample_rate,
        # `send_default_pii` is left unset: unset means off (no user IP, cookies, user ids), and
        # the locked SDK deprecates passing it in favour of `data_collection`.
        # Local variables help debugging and pass `_before_send` like the rest of the event.
        include_local_variables=True,
        # Request bodies are tenant content (documents, prompts): the scrubber knows secret
        # formats, not a client's personal data, so bodies are not collected at all.
        max_request_body_size="never",
        before_send=_before_send,
        before_send_transaction=_before_send,
        before_breadcrumb=_before_breadcrumb,
        before_send_log=_before_send_log,
        integrations=[
            # Every unhandled error (also those answered by problems.py's 500 handler) is captured.
            StarletteIntegration(failed_request_status_codes={*range(500, 600)}),
            FastApiIntegration(failed_request_status_codes={*range(500, 600)}),
            # INFO and up become breadcrumbs, ERROR and up (log.exception) become events.
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    )
