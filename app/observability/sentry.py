"""Sentry error reporting by allow-list: an event keeps only fields known to carry no personal data.

A scrubber can only remove what it recognises (secret formats, e-mail addresses, numbers with a
shape); a person's name, an address or a document's text have no shape. So nothing unknown is
sent: `_allowed_event` rebuilds every event and transaction from the fields listed here, and
`_allowed_breadcrumb` every breadcrumb. What an event carries, and nothing else:

- exception types and code locations: per frame its file name (relative), module, function, line
  and column, in-app flag and source lines (code, for `.py` files only) — never local variables
  (`include_local_variables=False`, and `vars` is not on the list either);
- exception messages only for the classes in `MESSAGE_TYPES` (their text is ours and holds no
  data); every other message is replaced by `WITHHELD`, because messages are built from whatever
  the code had at hand (`f"card of {name} refused"`), and the type plus the stack tell what failed;
- log messages only when they are an event name (`alert_fired`, `unhandled_error`: the app logs
  event names and puts data in fields), and of a record's fields only those in `SAFE_FIELDS`;
- the route template as transaction name and request URL (never the raw path, query string,
  body, cookies or headers other than `SAFE_HEADERS`), the request method, the response status;
- correlation id and trace ids (Sentry's own, and the OpenTelemetry trace id as the `trace_id`
  tag, as on the request's log lines), release, environment, level, the logger's name;
- breadcrumbs only from the loggers in `BREADCRUMB_LOGGERS` — `palisade.audit` is not one of
  them, ever: its line carries the client's IP, IdP subject and user agent on purpose, for the
  trail in the logs — with their messages and fields filtered the same way.

No user, IP address, subject, user agent, server name, tags or contexts set by code, installed
modules or `sys.argv`. Strings that are kept still pass the log scrubber (defence in depth).
The SDK is also told not to collect what is dropped here (`data_collection`, no local variables,
no request bodies), so most of it is never even gathered.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration

from app.observability.scrub import scrub

WITHHELD = "[withheld]"

# Loggers whose lines may become breadcrumbs: the app's operational loggers, whose messages are
# event names and whose fields are ids, counts and outcomes. Not `palisade.audit` (the trail: IP,
# subject, user agent), not `palisade.credentials`, not libraries or servers (uvicorn's access
# line holds the client address and the raw path).
BREADCRUMB_LOGGERS = frozenset({
    "palisade.alerts", "palisade.ratelimit", "palisade.crypto",
    "app.main", "app.problems", "app.auth.oidc", "app.edge.turnstile", "app.observability.tracing", "app.db.cluster",
})  # fmt: skip

# Field names (a log record's extra fields, tags, span data) whose values are kept: ids of the
# request, names of rules and checks, counts, durations, outcomes, exception type names.
SAFE_FIELDS = frozenset({
    "correlation_id", "trace_id", "span_id", "status", "status_code", "http.response.status_code",
    "http.request.method", "method", "route", "duration_ms", "rule", "severity", "count", "attempt",
    "attempts", "outcome", "error", "reason", "retry_in", "pending", "effect", "exporter", "protocol",
    "used", "check", "dek_version", "kek_version", "dek_versions",
})  # fmt: skip

SAFE_HEADERS = frozenset({"content-type", "content-length", "accept", "x-correlation-id"})

# Exception classes (module.qualname) whose messages are kept: written by us or a library from
# configuration and counts, never from request data.
MESSAGE_TYPES = frozenset({
    "sqlalchemy.exc.TimeoutError",  # "QueuePool limit of size 5 overflow 10 reached, ..."
    "app.main.StartupRefused",  # `palisade doctor` findings: database object names
})  # fmt: skip

# Transaction name sources that name code, not a request: a route template, a function.
_NAMED_SOURCES = frozenset({"route", "component", "view", "task"})
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_FRAME_KEYS = ("filename", "module", "function", "lineno", "colno", "in_app")
_CONTEXT_KEYS = ("pre_context", "context_line", "post_context")
_MECHANISM_KEYS = ("type", "handled", "synthetic", "exception_id", "parent_id", "source", "is_exception_group")
_TRACE_KEYS = ("trace_id", "span_id", "parent_span_id", "op", "status", "origin", "type")
_SPAN_KEYS = ("span_id", "parent_span_id", "trace_id", "same_process_as_parent", "op", "status", "start_timestamp",
              "timestamp", "origin")
_SPAN_DESCRIBED_OPS = ("middleware.", "http.server", "function", "event.starlette")
_TOP_KEYS = ("event_id", "timestamp", "start_timestamp", "type", "level", "platform", "logger", "release", "environment")
_MAX_TEXT = 200


def _text(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return scrub(value[:_MAX_TEXT])
    if isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
        return [_text(v) for v in value[:20]]
    return WITHHELD


def _fields(values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        return {}
    return {name: _text(value) for name, value in values.items() if name in SAFE_FIELDS}


def _message(message: Any) -> str:
    return message if isinstance(message, str) and _EVENT_NAME.fullmatch(message) else WITHHELD


def _frame(frame: dict[str, Any]) -> dict[str, Any]:
    kept = {k: frame[k] for k in _FRAME_KEYS if k in frame}
    if str(frame.get("filename", "")).endswith(".py"):  # source code, not data (templates, eval'd text)
        kept.update({k: frame[k] for k in _CONTEXT_KEYS if k in frame})
    return kept


def _exception(value: dict[str, Any]) -> dict[str, Any]:
    exc_type, module = value.get("type"), value.get("module")
    kept: dict[str, Any] = {"type": exc_type, "module": module}
    qualified = f"{module or 'builtins'}.{exc_type}"
    if "value" in value:
        kept["value"] = scrub(value["value"]) if qualified in MESSAGE_TYPES else WITHHELD
    mechanism = value.get("mechanism")
    if isinstance(mechanism, dict):
        kept["mechanism"] = {k: mechanism[k] for k in _MECHANISM_KEYS if k in mechanism}
    stacktrace = value.get("stacktrace")
    if isinstance(stacktrace, dict):
        kept["stacktrace"] = {"frames": [_frame(f) for f in stacktrace.get("frames", []) if isinstance(f, dict)]}
    return kept


def _span(span: dict[str, Any]) -> dict[str, Any]:
    kept = {k: span[k] for k in _SPAN_KEYS if k in span}
    op = str(span.get("op", ""))
    if op.startswith(_SPAN_DESCRIBED_OPS) and "description" in span:
        kept["description"] = _text(span["description"])
    for key in ("tags", "data"):
        if fields := _fields(span.get(key)):
            kept[key] = fields
    return kept


def _allowed_breadcrumb(crumb: dict[str, Any]) -> dict[str, Any] | None:
    if crumb.get("category") not in BREADCRUMB_LOGGERS:
        return None
    kept = {k: crumb[k] for k in ("type", "category", "level", "timestamp") if k in crumb}
    kept["message"] = _message(crumb.get("message"))
    if fields := _fields(crumb.get("data")):
        kept["data"] = fields
    return kept


def _allowed_event(event: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {k: event[k] for k in _TOP_KEYS if k in event}
    if isinstance(event.get("sdk"), dict):
        kept["sdk"] = {k: event["sdk"][k] for k in ("name", "version") if k in event["sdk"]}

    info = event.get("transaction_info") if isinstance(event.get("transaction_info"), dict) else {}
    named = info.get("source") in _NAMED_SOURCES and isinstance(event.get("transaction"), str)
    if "transaction" in event:
        kept["transaction"] = event["transaction"] if named else WITHHELD
        kept["transaction_info"] = {"source": info.get("source", "unknown")}

    request = event.get("request")
    if isinstance(request, dict):
        kept_request: dict[str, Any] = {}
        if isinstance(request.get("method"), str):
            kept_request["method"] = request["method"][:16]
        if named:
            kept_request["url"] = event["transaction"]  # the route template, never the raw path
        headers = request.get("headers")
        if isinstance(headers, dict):
            safe = {k: _text(v) for k, v in headers.items() if isinstance(k, str) and k.lower() in SAFE_HEADERS}
            if safe:
                kept_request["headers"] = safe
        kept["request"] = kept_request

    exception = event.get("exception")
    if isinstance(exception, dict):
        kept["exception"] = {"values": [_exception(v) for v in exception.get("values", []) if isinstance(v, dict)]}

    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        kept["logentry"] = {"message": _message(logentry.get("message"))}
    if "message" in event:
        kept["message"] = _message(event["message"])

    if fields := _fields(event.get("extra")):
        kept["extra"] = fields
    if fields := _fields(event.get("tags")):
        kept["tags"] = fields

    contexts = event.get("contexts") if isinstance(event.get("contexts"), dict) else {}
    kept_contexts: dict[str, Any] = {}
    if isinstance(contexts.get("trace"), dict):
        kept_contexts["trace"] = {k: contexts["trace"][k] for k in _TRACE_KEYS if k in contexts["trace"]}
    if isinstance(contexts.get("response"), dict) and "status_code" in contexts["response"]:
        kept_contexts["response"] = {"status_code": contexts["response"]["status_code"]}
    if isinstance(contexts.get("runtime"), dict):
        kept_contexts["runtime"] = {k: contexts["runtime"][k] for k in ("name", "version") if k in contexts["runtime"]}
    if kept_contexts:
        kept["contexts"] = kept_contexts

    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values", []) if isinstance(breadcrumbs, dict) else []
    crumbs = [c for c in (_allowed_breadcrumb(v) for v in values if isinstance(v, dict)) if c is not None]
    if crumbs:
        kept["breadcrumbs"] = {"values": crumbs}

    if isinstance(event.get("spans"), list):
        kept["spans"] = [_span(s) for s in event["spans"] if isinstance(s, dict)]
    return kept


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    return _allowed_event(event)


def _before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    return _allowed_breadcrumb(crumb)


def _before_send_log(log: Any, hint: dict[str, Any]) -> None:
    return None  # Sentry Logs are off (`enable_logs` unset); should they be turned on, none is sent


def init_sentry(*, dsn: str, environment: str, traces_sample_rate: float, release: str | None = None) -> None:
    """Start the Sentry SDK (no-op without a DSN): every error, sampled transactions, allow-listed fields."""
    if not dsn:
        return
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        sample_rate=1.0,  # every error event
        traces_sample_rate=traces_sample_rate,
        # What the SDK's integrations collect: no user, cookies, bodies, query strings, frame
        # variables, SQL parameters or AI inputs. (`send_default_pii` is deprecated in the locked
        # SDK in favour of this; left unset, `should_send_default_pii()` is False.)
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "allowlist", "terms": sorted(SAFE_HEADERS)}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "graphql": {"document": False, "variables": False},
            "gen_ai": {"inputs": False, "outputs": False},
            "database_query_data": False,
            "queues": False,
            "stack_frame_variables": False,
        },
        include_local_variables=False,
        max_request_body_size="never",
        server_name="",
        before_send=_before_send,
        before_send_transaction=_before_send,
        before_breadcrumb=_before_breadcrumb,
        before_send_log=_before_send_log,
        integrations=[
            # Every unhandled error (also those answered by problems.py's 500 handler) is captured;
            # transactions are named by route template.
            StarletteIntegration(transaction_style="url", failed_request_status_codes={*range(500, 600)}),
            FastApiIntegration(transaction_style="url", failed_request_status_codes={*range(500, 600)}),
            # INFO and up may become breadcrumbs (only from BREADCRUMB_LOGGERS), ERROR and up events.
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    )


def tag_request(correlation_id: str, trace_id: str | None) -> None:
    """Put the request's correlation id and OpenTelemetry trace id on its Sentry events."""
    if not sentry_sdk.get_client().is_active():
        return
    sentry_sdk.set_tag("correlation_id", correlation_id)
    if trace_id:
        sentry_sdk.set_tag("trace_id", trace_id)
