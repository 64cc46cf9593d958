"""OpenTelemetry tracing: one tracer provider per process, and the three things we instrument.

- `configure_tracing()` builds the SDK `TracerProvider` once (service.name / service.version as
  resource), sets it as the global provider and returns it; later calls return the same provider.
  Spans are *exported* only when the standard OTEL settings ask for it: `OTEL_TRACES_EXPORTER=otlp`
  (or `console`), or — with `OTEL_TRACES_EXPORTER` unset — an `OTEL_EXPORTER_OTLP_ENDPOINT` /
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. The OTLP exporter is the http/protobuf one and reads its own
  `OTEL_EXPORTER_OTLP_*` settings (endpoint, headers, timeout, certificate). Sampling is the SDK's
  `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parentbased_always_on). In development
  with none of these set nothing leaves the process — and nothing is recorded either: until a span
  processor is attached (an exporter from the settings, or `configure_tracing(exporter=...)`), every
  span is a non-recording one. It still has a fresh trace id (or the caller's, from `traceparent`),
  so log lines and audit rows keep theirs; what is skipped is building, timing and ending span
  objects nobody reads (measured ~1 ms of CPU per API request).
- `instrument_app()` — the FastAPI server span per request (the `/health/*` probes excluded).
- `instrument_engine()` — one client span per SQL statement, through SQLAlchemy's events. Only the
  statement text with its placeholders is recorded, never the bound parameters (they hold tenant
  data); sqlcommenter stays off. The psycopg instrumentation is deliberately not used as well: it
  would record every statement a second time.
- `instrument_httpx_client()` — the token verifier's calls to the IdP (discovery, JWKS).

Every `instrument_*` call is idempotent per object. `current_trace_id()` and `set_span_attribute()`
are what the rest of the app (logs, the correlation-id middleware) uses; `untraced()` silences the
instrumentations for a block (the readiness probe).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, format_trace_id
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes, AttributeValue

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

# The span attribute carrying the request's correlation id (X-Correlation-ID).
CORRELATION_ID_ATTRIBUTE = "palisade.correlation_id"

# Probes are frequent and say nothing: no spans. Matched against "scheme://host/path" (no query).
HEALTH_EXCLUDED_URLS = r"^[a-z]+://[^/]+/health/"

# Should anyone turn on header capture (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST),
# these are still written as "[REDACTED]".
_ALWAYS_SANITIZED_HEADERS = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", ".*token.*", ".*secret.*"]

_lock = threading.Lock()
_provider: TracerProvider | None = None
_attached_exporters: list[SpanExporter] = []
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _package_version() -> str:
    try:
        return metadata.version("palisade")
    except metadata.PackageNotFoundError:
        return "unknown"


def _resource(service_name: str) -> Resource:
    # Our values are defaults: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win, as operators expect.
    attributes: dict[str, AttributeValue] = {SERVICE_NAME: service_name, SERVICE_VERSION: _package_version()}
    attributes.update(OTELResourceDetector().detect().attributes)
    return Resource.create(attributes)


def _exporter_names() -> list[str]:
    """The exporters the standard settings ask for; none unless something is set."""
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [n for n in (part.strip().lower() for part in raw.split(",")) if n and n != "none"]


def span_processors_from_env() -> list[BatchSpanProcessor]:
    """The exporting processors the standard OTEL_* settings ask for (an empty list by default)."""
    processors = []
    for name in _exporter_names():
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol and protocol != "http/protobuf":
                log.warning("otel_protocol_unsupported", extra={"protocol": protocol, "used": "http/protobuf"})
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Endpoint, headers, timeout, compression and certificates come from OTEL_EXPORTER_OTLP_*.
            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("otel_exporter_unsupported", extra={"exporter": name})
    return processors


class _WhileExporting(Sampler):
    """The configured sampler once something exports spans; until then, no span is recorded."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate
        self.exporting = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = self.delegate if self.exporting else ALWAYS_OFF
        return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"WhileExporting{{{self.delegate.get_description()}}}"


class _Provider(TracerProvider):
    """The SDK provider, recording spans only once a span processor (an exporter) is attached.

    Without one the SDK would still build, time and end every span, only to hand it to nobody.
    A DROP decision makes a non-recording span that carries a valid trace id all the same.
    """

    def __init__(self, *, resource: Resource) -> None:
        super().__init__(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
        self._gate = _WhileExporting(self.sampler)
        self.sampler = self._gate  # read by every tracer this provider makes

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._gate.exporting = True


def configure_tracing(*, service_name: str = "palisade", exporter: SpanExporter | None = None) -> TracerProvider:
    """The process's tracer provider: created and set globally on the first call, returned after.

    `exporter` (tests, debugging) is attached with a SimpleSpanProcessor — synchronously, on the
    provider whether it is new or not; the same exporter object is never attached twice.
    """
    global _provider
    with _lock:
        if _provider is None:
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                # Someone (e.g. `opentelemetry-instrument`) configured the SDK already: use theirs,
                # with their exporters, rather than export everything twice.
                _provider = current
            else:
                # No sampler argument: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
                provider = _Provider(resource=_resource(service_name))
                for processor in span_processors_from_env():
                    provider.add_span_processor(processor)
                trace.set_tracer_provider(provider)
                _provider = provider
        if exporter is not None and not any(e is exporter for e in _attached_exporters):
            _provider.add_span_processor(SimpleSpanProcessor(exporter))
            _attached_exporters.append(exporter)
        return _provider


def instrument_app(app: FastAPI) -> None:
    """A server span per HTTP request (not for /health/*). Call before the app serves its first request."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.util.http import OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS, get_custom_headers

    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        return
    sanitize = _ALWAYS_SANITIZED_HEADERS + get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS)
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=HEALTH_EXCLUDED_URLS,
        http_capture_headers_sanitize_fields=sanitize,
        # The per-message "http receive" / "http send" spans add volume, not insight.
        exclude_spans=["receive", "send"],
    )


def instrument_engine(engine: Engine) -> None:
    """A client span per SQL statement on this engine: statement text only, never parameters.

    This attaches the SQLAlchemy instrumentation's own event listeners (its `EngineTracer`) to this
    one engine, which is what `SQLAlchemyInstrumentor().instrument(engine=...)` does minus its
    process-wide patches. Those patches are avoided on purpose: with SQLAlchemy 2.1 and no greenlet
    installed, `instrument()` raises ImportError (it wraps `sqlalchemy.ext.asyncio`), it declares
    "sqlalchemy < 2.1" and otherwise refuses, it is a singleton that takes its engines only once,
    and it would also trace every other engine created afterwards (migrations, doctor).
    """
    from opentelemetry import metrics
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.semconv.metrics import MetricInstruments

    with _lock:
        if engine in _engines:
            return
        scope = "opentelemetry.instrumentation.sqlalchemy"
        connections = metrics.get_meter(scope, __version__).create_up_down_counter(
            name=MetricInstruments.DB_CLIENT_CONNECTIONS_USAGE,
            unit="connections",
            description="The number of connections that are currently in state described by the state attribute.",
        )
        # sqlcommenter off: no trace context written into the SQL text (or into db.statement).
        EngineTracer(trace.get_tracer(scope, __version__), engine, connections, enable_commenter=False)
        _engines.add(engine)
    _warn_if_psycopg_instrumented()


def _warn_if_psycopg_instrumented() -> None:
    try:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    except ImportError:  # pragma: no cover - the package is a dependency
        return
    if PsycopgInstrumentor().is_instrumented_by_opentelemetry:
        log.warning("otel_psycopg_also_instrumented", extra={"effect": "every SQL statement is traced twice"})


def instrument_httpx_client(client: httpx.Client) -> None:
    """Client spans (and traceparent headers) for the calls this httpx client makes."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if getattr(client, "_is_instrumented_by_opentelemetry", False):
        return
    HTTPXClientInstrumentor.instrument_client(client)


def current_trace_id() -> str | None:
    """The current trace id as 32 lowercase hex digits, or None outside a (valid) span."""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else None


@contextmanager
def untraced() -> Iterator[None]:
    """No spans from instrumented libraries inside this block (e.g. the readiness probe's SELECT 1)."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def set_span_attribute(key: str, value: AttributeValue) -> None:
    """Set an attribute on the current span, if it is being recorded (else do nothing)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)
