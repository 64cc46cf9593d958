"""The request's observability at the HTTP layer: the correlation id and the 5xx counter.

`install(app)` adds two pure-ASGI middlewares (no BaseHTTPMiddleware: no extra task, no memory
stream, no response object rebuilt per request; a streaming response keeps streaming). They are the
outermost of the user middlewares, inside the tracing middleware (so the request's span is current)
and outside `app.edge.http`'s CORS / parameter / body layers and the rate limiter (so their
refusals, 429s included, are counted and carry the id). From the outside in:

1. `CorrelationIdMiddleware` — keeps a well-formed incoming `X-Correlation-ID`
   (`[A-Za-z0-9._:-]{1,128}`), else makes one (32 hex digits); puts it on `request.state.correlation_id`
   (the audit trail reads it there), on the request's span (`palisade.correlation_id`), and — with
   the trace id — on every log line of the request and as tags on its Sentry events; echoes it in `X-Correlation-ID` on every
   response that passes through it (replacing any value an inner layer set). The log context is
   cleared when the response has been sent, or the request failed.
2. `ServerErrorsMiddleware` — every answer with a 5xx status feeds the `http_5xx_rate` alert,
   keyed by route template (`api|METHOD /path/{param}`). An exception that escapes before any
   answer started counts as a 500: Starlette's outermost ServerErrorMiddleware answers it (a bare
   500 problem), outside these layers.
"""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import alerts
from app.authz.denials import route_label
from app.observability.logging import bind_request_context, clear_request_context
from app.observability.sentry import tag_request
from app.observability.tracing import CORRELATION_ID_ATTRIBUTE, current_trace_id, set_span_attribute

__all__ = ["CORRELATION_ID_HEADER", "CorrelationIdMiddleware", "ServerErrorsMiddleware", "install"]

CORRELATION_ID_HEADER = "X-Correlation-ID"
_HEADER = CORRELATION_ID_HEADER.lower().encode("latin-1")
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _incoming(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == _HEADER:
            return value.decode("latin-1")  # the first one, as `request.headers.get` reads it
    return ""


class CorrelationIdMiddleware:
    """One id per request: on `request.state`, the span, every log line and the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _incoming(scope)
        correlation_id = incoming if _CORRELATION_ID.fullmatch(incoming) else uuid.uuid4().hex
        # `request.state` is this dict: every Request made from the scope later sees the id.
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        set_span_attribute(CORRELATION_ID_ATTRIBUTE, correlation_id)
        # Every log line of this request carries both ids, and so does any Sentry event of it.
        trace_id = current_trace_id()
        bind_request_context(correlation_id=correlation_id, trace_id=trace_id)
        tag_request(correlation_id, trace_id)
        echoed = (_HEADER, correlation_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                headers.append(echoed)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            clear_request_context()


class ServerErrorsMiddleware:
    """Feeds the 5xx-rate alert from every 5xx answer (and every exception no layer answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_observed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 500:
                    _observe(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            if not started:
                _observe(scope, 500)  # Starlette's ServerErrorMiddleware answers it, outside this layer
            raise


def _observe(scope: Scope, status: int) -> None:
    alerts.observe(alerts.HTTP_5XX, f"api|{route_label(Request(scope))}", details={"status": status})


def install(app: FastAPI) -> None:
    """Add both middlewares as the outermost user middlewares (call before `app.edge.http.install`)."""
    if app.middleware_stack is not None:
        raise RuntimeError("install() must run before the app serves its first request")
    # add_middleware inserts at the front: the correlation id ends up outside the 5xx counter.
    app.add_middleware(ServerErrorsMiddleware)
    app.add_middleware(CorrelationIdMiddleware)
