"""Tracing: one request is one trace (server span → SQL and IdP client spans), nothing secret in it.

The app is built the way `create_app` wires tracing: `configure_tracing()` once per process,
`instrument_app(app)` before it serves, then — once the lifespan has made them — the engine and
the token verifier's httpx client. Spans are collected by an in-memory exporter added to the
process's (single, global) tracer provider.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id
from sqlalchemy import text

from app import alerts
from app.main import create_app
from app.observability.tracing import (
    CORRELATION_ID_ATTRIBUTE,
    configure_tracing,
    current_trace_id,
    instrument_app,
    instrument_engine,
    instrument_httpx_client,
    set_span_attribute,
    span_processors_from_env,
    untraced,
)
from tests.support.api import World, settings_for
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP

_STATEMENT_KEYS = ("db.statement", "db.query.text")


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing(exporter=exporter)
    yield exporter
    # The provider lives on (process-wide); a shut-down exporter stores nothing more.
    exporter.shutdown()


@pytest.fixture
def traced(database: TestDatabase, idp: TestIdP, spans: InMemorySpanExporter) -> Iterator[TestClient]:
    """A fresh app, traced as `create_app` wires it (fresh verifier: its first request fetches discovery + JWKS)."""
    with TestClient(create_app(settings_for(database, idp)), raise_server_exceptions=False) as client:
        spans.clear()
        yield client


def _statement(span: ReadableSpan) -> str | None:
    for key in _STATEMENT_KEYS:
        value = (span.attributes or {}).get(key)
        if isinstance(value, str):
            return value
    return None


def _strings(span: ReadableSpan) -> Iterator[str]:
    """Every string a span would carry out of the process: name, attributes, event attributes."""
    yield span.name
    attribute_sets = [span.attributes or {}, *((e.attributes or {}) for e in span.events)]
    for attributes in attribute_sets:
        for key, value in attributes.items():
            yield key
            if isinstance(value, (list, tuple)):
                yield from (str(v) for v in value)
            else:
                yield str(value)


def _chain_reaches(span: ReadableSpan, root: ReadableSpan, by_id: dict[int, ReadableSpan]) -> bool:
    current = span
    for _ in range(len(by_id) + 1):
        if current.context.span_id == root.context.span_id:
            return True
        if current.parent is None or current.parent.span_id not in by_id:
            return False
        current = by_id[current.parent.span_id]
    return False


def _start_collecting(spans: InMemorySpanExporter) -> None:
    """Forget the spans so far, once no background work is left that could still add some.

    Building a world grants roles, and each grant is an observation the alert engine counts on its
    own thread, with SQL on an instrumented engine: spans of traces of their own. Counted late (a
    loaded machine), they landed among the next request's spans. So the engine is drained first:
    after this, every span collected was caused by what the test does next.
    """
    engine = alerts.current()
    if engine is not None:
        assert engine.flush(timeout=30), "the alert engine drained its queue"
    spans.clear()


def _server_spans(finished: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in finished if s.kind is SpanKind.SERVER]


def test_one_request_is_one_trace_with_sql_and_idp_spans_as_children(traced: TestClient, world: World, spans: InMemorySpanExporter) -> None:
    _start_collecting(spans)  # the world was built through the session's app
    response = traced.get(f"{world.base}/workspaces", headers={"Authorization": f"Bearer {world.admin.token}"})
    assert response.status_code == 200, response.text
    assert {w["id"] for w in response.json()} == {str(w) for w in world.workspaces}

    finished = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {finished[0].context.trace_id}, "every span shares one trace id"

    servers = _server_spans(finished)
    assert len(servers) == 1
    server = servers[0]
    assert server.parent is None
    assert (server.attributes or {}).get("http.route") == "/api/v1/tenants/{tenant_id}/workspaces"

    by_id = {s.context.span_id: s for s in finished}
    # The endpoint and its dependencies run in the threadpool: their spans must still hang under
    # the request's server span, never start traces of their own.
    orphans = [s.name for s in finished if not _chain_reaches(s, server, by_id)]
    assert orphans == []

    sql = [s for s in finished if _statement(s) is not None]
    assert sql, "SQL statements become spans"
    assert all(s.kind is SpanKind.CLIENT and s.parent is not None for s in sql)
    assert any("workspaces" in _statement(s) for s in sql)  # type: ignore[operator]
    # The tenant context rides, as bound parameters, with the first statement (app/db/session.py):
    # no SQL span records its values.
    assert not any(str(world.tenant_id) in str(v) for s in sql for v in (s.attributes or {}).values())

    # The fresh verifier fetched the IdP's discovery document and JWKS, inside the same trace.
    idp_calls = [s for s in finished if s.kind is SpanKind.CLIENT and _statement(s) is None and s.name != "connect"]
    assert any(".well-known/openid-configuration" in str(v) for s in idp_calls for v in (s.attributes or {}).values())


def test_the_audit_row_carries_the_requests_trace_id(traced: TestClient, world: World, spans: InMemorySpanExporter) -> None:
    _start_collecting(spans)
    headers = {"Authorization": f"Bearer {world.admin.token}", "X-Correlation-ID": "trace-audit-1"}
    created = traced.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}, headers=headers)
    assert created.status_code == 201, created.text
    (server,) = _server_spans(spans.get_finished_spans())
    assert (server.attributes or {}).get(CORRELATION_ID_ATTRIBUTE) == "trace-audit-1"
    listed = traced.get(f"{world.base}/audit-events", params={"correlation_id": "trace-audit-1"}, headers=headers)
    (event,) = listed.json()["items"]
    assert event["trace_id"] == format(server.context.trace_id, "032x")


def test_no_span_carries_the_token_or_sql_parameter_values(traced: TestClient, world: World, spans: InMemorySpanExporter) -> None:
    _start_collecting(spans)
    response = traced.get(f"{world.base}/workspaces", headers={"Authorization": f"Bearer {world.admin.token}"})
    assert response.status_code == 200, response.text
    finished = spans.get_finished_spans()
    assert finished

    token = world.admin.token
    signature = token.rsplit(".", 1)[-1]
    for span in finished:
        for value in _strings(span):
            assert token not in value and signature not in value, f"token in span {span.name!r}"

    # Values that only ever reach the database as parameters: the caller's identity and ids.
    # (The tenant id is in the URL path, so the server span may carry it; SQL spans may not.)
    user_id = str(world.user_ids[world.admin.subject])
    secrets_by_parameter = [world.admin.subject, user_id, str(world.tenant_id)]
    for span in finished:
        values = list(_strings(span))
        assert not any(world.admin.subject in v or user_id in v for v in values), f"identity in span {span.name!r}"
        if _statement(span) is not None:
            assert not any(p in v for p in secrets_by_parameter for v in values), f"parameter value in {span.name!r}"


def test_health_probes_make_no_server_spans(traced: TestClient, spans: InMemorySpanExporter) -> None:
    _start_collecting(spans)
    assert traced.get("/health/live").status_code == 200
    assert traced.get("/health/ready").status_code == 200
    assert _server_spans(spans.get_finished_spans()) == []
    # An API path is traced (even when refused): the exclusion is anchored at the path start.
    assert traced.get("/api/v1/tenants").status_code == 401
    assert len(_server_spans(spans.get_finished_spans())) == 1


def test_untraced_block_makes_no_sql_spans(traced: TestClient, spans: InMemorySpanExporter) -> None:
    engine = traced.app.state.engine
    _start_collecting(spans)
    with untraced(), engine.connect() as conn:
        conn.execute(text("select 1"))
    assert spans.get_finished_spans() == ()
    with engine.connect() as conn:
        conn.execute(text("select 1 as probe_marker"))
    assert any("probe_marker" in (_statement(s) or "") for s in spans.get_finished_spans())


def test_instrumenting_twice_does_not_double_the_spans(traced: TestClient, world: World, spans: InMemorySpanExporter) -> None:
    engine = traced.app.state.engine
    instrument_engine(engine)
    instrument_app(traced.app)
    instrument_httpx_client(traced.app.state.verifier.http)
    _start_collecting(spans)
    response = traced.get(f"{world.base}/workspaces", headers={"Authorization": f"Bearer {world.admin.token}"})
    assert response.status_code == 200, response.text
    assert len(_server_spans(spans.get_finished_spans())) == 1
    urls = [(s.attributes or {}).get("http.url") or (s.attributes or {}).get("url.full") for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT and _statement(s) is None]
    assert len(urls) == len(set(urls)) == 2  # discovery + JWKS, once each
    _start_collecting(spans)
    with engine.connect() as conn:
        conn.execute(text("select 2 as twice_marker"))
    assert len([s for s in spans.get_finished_spans() if "twice_marker" in (_statement(s) or "")]) == 1


def test_configure_tracing_is_one_provider_per_process(spans: InMemorySpanExporter) -> None:
    provider = configure_tracing()
    assert configure_tracing(service_name="other") is provider
    assert configure_tracing(exporter=spans) is provider  # the same exporter is not attached twice
    assert trace.get_tracer_provider() is provider
    assert provider.resource.attributes["service.name"] == "palisade"
    assert provider.resource.attributes["service.version"] == metadata.version("palisade")

    _start_collecting(spans)
    with trace.get_tracer("test").start_as_current_span("once"):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["once"]


def test_current_trace_id_and_span_attribute(spans: InMemorySpanExporter) -> None:
    assert current_trace_id() is None
    set_span_attribute(CORRELATION_ID_ATTRIBUTE, "ignored")  # no current span: a no-op
    _start_collecting(spans)
    with trace.get_tracer("test").start_as_current_span("work") as span:
        trace_id = current_trace_id()
        set_span_attribute(CORRELATION_ID_ATTRIBUTE, "abc-123")
    assert trace_id == format_trace_id(span.get_span_context().trace_id)
    assert trace_id is not None and len(trace_id) == 32 and int(trace_id, 16)
    (finished,) = spans.get_finished_spans()
    assert finished.attributes[CORRELATION_ID_ATTRIBUTE] == "abc-123"


def test_without_a_span_processor_nothing_is_recorded_yet_trace_ids_exist() -> None:
    from opentelemetry.sdk.resources import Resource

    from app.observability.tracing import _Provider

    provider = _Provider(resource=Resource.create({}))  # as configure_tracing builds it, before any exporter
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("unexported") as span:
        assert not span.is_recording()
        trace_id = current_trace_id()
        with tracer.start_as_current_span("child") as child:
            assert child.get_span_context().trace_id == span.get_span_context().trace_id
    assert trace_id is not None and len(trace_id) == 32 and int(trace_id, 16)

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # an exporter: spans are recorded from now on
    with provider.get_tracer("test").start_as_current_span("exported") as span:
        assert span.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["exported"]
    provider.shutdown()


# --- export settings: nothing by default, OTLP/HTTP protobuf when the OTEL_* settings say so ---

_OTEL_VARS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
              "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_PROTOCOL",
              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}],
    ids=["unset", "none", "none-with-endpoint"],
)
def test_nothing_is_exported_unless_asked(otel_env: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        otel_env.setenv(name, value)
    assert span_processors_from_env() == []


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A loopback OTLP/HTTP receiver (protobuf over POST /v1/traces)."""
    received: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("exporter_setting", [None, "otlp"], ids=["endpoint-only", "otlp"])
def test_otlp_http_export_follows_the_standard_settings(otel_env: pytest.MonkeyPatch, collector, exporter_setting: str | None) -> None:
    base, received = collector
    if exporter_setting:
        otel_env.setenv("OTEL_TRACES_EXPORTER", exporter_setting)
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
    otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k-123")

    processors = span_processors_from_env()
    assert len(processors) == 1
    assert isinstance(processors[0], BatchSpanProcessor)
    assert isinstance(processors[0].span_exporter, OTLPSpanExporter)

    # A private provider (the process's global one is already set), fed by exactly those processors.
    provider = TracerProvider(resource=configure_tracing().resource)
    provider.add_span_processor(processors[0])
    with provider.get_tracer("test").start_as_current_span("exported-span"):
        pass
    assert provider.force_flush()
    provider.shutdown()

    assert received, "the exporter posted to the configured endpoint"
    path, headers, body = received[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-collector-key"] == "k-123"
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "palisade"
    assert [s.name for scope in resource_spans.scope_spans for s in scope.spans] == ["exported-span"]
