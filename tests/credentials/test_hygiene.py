"""A planted credential travels every path (add, list, read, refused inputs, replace, use, rotation,
re-wrapping, a tampered row, deletion, shredding) with every logger at DEBUG, SQL statements and
their parameters included, Sentry sending to a local ingest and every span captured: its value
shows up in no log line, Sentry envelope, span, response, audit row or table."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sentry_sdk
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.crypto.datakeys import destroy_tenant_keys, reencrypt, rewrap_all
from app.crypto.envelope import EnvelopeError
from app.crypto.kek import LocalKeyWrapper
from app.observability.tracing import configure_tracing
from tests.credentials.helpers import Api, new_secret, reveal, rows, superuser_exec
from tests.support.sentry_ingest import Ingest

LOGGERS = ("", "sqlalchemy.engine", "sqlalchemy.pool", "palisade", "app", "httpx", "fastapi", "uvicorn", "alembic")


def database_text(superuser) -> str:
    """Every row of every table in the schema, as PostgreSQL renders it (bytea as hex)."""
    tables = [r["table_name"] for r in rows(superuser, "select table_name from information_schema.tables "
                                                       "where table_schema = 'public' and table_type = 'BASE TABLE'")]
    parts = []
    for table in tables:
        parts += [r["t"] for r in rows(superuser, f'select t::text as t from public."{table}" t')]
    return "\n".join(parts)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing(exporter=exporter)
    yield exporter
    exporter.shutdown()


def span_text(exporter: InMemorySpanExporter) -> str:
    return "\n".join(f"{s.name} {dict(s.attributes or {})} {[dict(e.attributes or {}) for e in s.events]}"
                     for s in exporter.get_finished_spans())


def test_the_value_appears_nowhere(api: Api, other_api: Api, sessions, superuser, wrapper, kek_dir, data_keys,
                                   caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
                                   ingest: Ingest, spans: InMemorySpanExporter) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    secret, replacement = new_secret(), new_secret()
    tenant, ws = api.world.tenant_id, api.world.workspaces[0]
    responses = []

    def call(method: str, url: str, expect: int, **kw):
        r = api.admin.request(method, url, **kw)
        assert r.status_code == expect, r.text
        responses.append(r)
        return r

    created = call("POST", api.url(), 201, json={"provider": "openai", "label": "planted", "secret": secret}).json()
    decoy = api.add(0)
    call("GET", api.url(), 200)
    call("GET", api.url(0, created["id"]), 200)
    # Refused inputs that carry the value: too long, a line break, inside the label, a taken label,
    # an unknown field, the wrong type.
    call("POST", api.url(), 422, json={"provider": "openai", "label": "long", "secret": secret * 400})
    call("POST", api.url(), 400, json={"provider": "openai", "label": "ctl", "secret": f"{secret}\nx"})
    call("POST", api.url(), 400, json={"provider": "openai", "label": f"mine {secret}", "secret": secret})
    call("POST", api.url(), 409, json={"provider": "openai", "label": "planted", "secret": secret})
    call("POST", api.url(), 422, json={"provider": "openai", "label": "extra", "secret": secret, "value": secret})
    call("POST", api.url(), 422, json={"provider": "openai", "label": "typed", "secret": [secret]})
    call("PUT", api.url(0, created["id"]), 422, json={"secret": secret, "note": secret})
    assert reveal(sessions, tenant, ws, created["id"]) == secret

    call("PUT", api.url(0, created["id"]), 200, json={"secret": replacement})
    assert reveal(sessions, tenant, ws, created["id"]) == replacement
    reencrypt(sessions, wrapper, batch_size=1, tenant_ids=[tenant])
    LocalKeyWrapper.create_version(kek_dir)
    rewrap_all(sessions, wrapper, tenant_ids=[tenant])
    assert reveal(sessions, tenant, ws, created["id"]) == replacement

    # A tampered row: the decoy gets the planted ciphertext; the error must not carry it.
    superuser_exec(superuser, "update provider_credentials d set ciphertext = s.ciphertext from provider_credentials s "
                   "where s.tenant_id = :t and s.id = :s and d.tenant_id = :t and d.id = :d", t=tenant, s=created["id"], d=decoy["id"])
    with pytest.raises(EnvelopeError) as tampered:
        reveal(sessions, tenant, ws, decoy["id"])
    logging.getLogger("palisade.test").exception("credential use failed", exc_info=tampered.value)

    call("DELETE", api.url(0, decoy["id"]), 204)
    stored = database_text(superuser)  # before shredding: the rows are all there
    with sessions() as session, session.begin():
        destroy_tenant_keys(session, tenant, keys=data_keys)
    with pytest.raises(EnvelopeError) as shredded:
        reveal(sessions, tenant, ws, created["id"])
    logging.getLogger("palisade.test").exception("credential use failed", exc_info=shredded.value)
    call("DELETE", api.url(0, created["id"]), 204)

    sentry_sdk.flush(timeout=10)
    captured = capfd.readouterr()
    records = caplog.records
    # Sentry and tracing saw the run: the logged failures became events, the requests spans.
    assert ingest.items("event") and any("provider_credentials" in str(s.attributes) for s in spans.get_finished_spans())
    # The capture did see the traffic it is meant to vouch for, SQL parameters included.
    assert any(r.name.startswith("sqlalchemy.engine") and "provider_credentials" in r.getMessage() for r in records)
    assert any(r.name == "palisade.credentials" for r in records)
    assert any(getattr(r, "audit", {}).get("action") == "credential.replace" for r in records)
    everything = {
        "log messages": caplog.text,
        "log records": "\n".join(repr(r.__dict__) for r in records),
        "stdout": captured.out,
        "stderr": captured.err,
        "responses": "\n".join(f"{r.headers}\n{r.text}" for r in responses),
        "errors": f"{tampered.value!r} {shredded.value!r}",
        "audit rows": repr(rows(superuser, "select * from audit_events where tenant_id = :t", t=tenant)),
        "database": stored + "\n" + database_text(superuser),
        "sentry envelopes": b"\n".join(ingest.envelopes).decode("utf-8", "replace"),
        "spans": span_text(spans),
    }
    for where, text in everything.items():
        for value in (secret, replacement):
            assert value not in text, where
            assert value.encode().hex() not in text, where
            assert value[8:28] not in text, where  # no fragment either
