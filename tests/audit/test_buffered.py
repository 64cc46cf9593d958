"""Failed sign-ins and database-busy refusals reach the audit trail aggregated, from a buffer (app/audit/buffered.py).

The real app on a database of its own, real IdP tokens, the chain verified as `palisade audit verify` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, pool, text

from app.audit.buffered import AuditBuffer
from app.audit.chain import PLATFORM_TENANT
from app.audit.service import ANONYMOUS, Category, RequestMeta
from app.audit.verify import verify_tenant
from app.main import create_app
from tests.support.api import person, settings_for
from tests.support.database import TestDatabase, superuser_execute
from tests.support.idp import TestIdP

_addresses = (f"192.0.2.{i}" for i in itertools.count(10))


def platform_events(database: TestDatabase, action: str) -> list[dict]:
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "select seq, host(client_ip) as client_ip, actor_subject, correlation_id, details from audit_events"
                " where tenant_id = :t and category = 'authentication' and action = :a order by seq"),
                {"t": PLATFORM_TENANT, "a": action}).mappings().all()
    finally:
        engine.dispose()
    return [dict(r) for r in rows]


@pytest.fixture
def app(fresh_database: TestDatabase, idp: TestIdP) -> FastAPI:
    return create_app(settings_for(fresh_database, idp))


@contextmanager
def running(app: FastAPI) -> Iterator[None]:
    with TestClient(app):
        yield


def fail(app: FastAPI, address: str, correlation_id: str | None = None) -> int:
    client = TestClient(app, raise_server_exceptions=False, client=(address, 50000))
    headers = {"Authorization": "Bearer not-a-token", **({"X-Correlation-ID": correlation_id} if correlation_id else {})}
    return client.get("/api/v1/tenants", headers=headers).status_code


def test_failures_are_written_aggregated_per_address(app: FastAPI, fresh_database: TestDatabase) -> None:
    first, second = next(_addresses), next(_addresses)
    with running(app):
        for n in range(12):
            assert fail(app, first, f"agg-{n}") == 401
        assert fail(app, second, "other-1") == 401
        assert app.state.audit_buffer.pending() == 13
        assert app.state.audit_buffer.flush() == 13
        assert app.state.audit_buffer.pending() == 0
        result = verify_tenant(app.state.sessions, PLATFORM_TENANT)
    events = {e["client_ip"]: e for e in platform_events(fresh_database, "token.rejected")}
    assert set(events) == {first, second}
    many = events[first]
    assert many["details"]["count"] == 12
    assert many["correlation_id"] == "agg-0"
    assert many["details"]["correlation_ids"] == [f"agg-{n}" for n in range(10)]  # at most 10 kept
    assert many["details"]["first_at"] <= many["details"]["last_at"]
    assert events[second]["details"]["count"] == 1
    assert result.broken is None and result.events == 2  # two appends for thirteen failures


def test_a_locked_platform_chain_neither_delays_nor_loses_failed_sign_ins(app: FastAPI, fresh_database: TestDatabase) -> None:
    # A flood of failed sign-ins used to take the platform chain's head lock once each, in a
    # transaction of its own: behind another writer's lock each waited, then was lost at lock_timeout.
    holder = create_engine(fresh_database.superuser_db_url, poolclass=pool.NullPool)
    address = next(_addresses)
    with running(app), holder.connect() as conn:
        conn.execute(text("select 1 from audit_chain_heads where tenant_id = :t for update"), {"t": PLATFORM_TENANT})
        for _ in range(20):
            assert fail(app, address) == 401
        assert app.state.audit_buffer.pending() == 20
        conn.rollback()  # the other writer is done
        assert app.state.audit_buffer.flush() == 20
    holder.dispose()
    (event,) = platform_events(fresh_database, "token.rejected")
    assert (event["client_ip"], event["details"]["count"]) == (address, 20)


def test_failed_sign_ins_are_counted_and_audited_while_the_database_is_down(
        fresh_database: TestDatabase, idp: TestIdP, pg_superuser_url: str) -> None:
    app = create_app(settings_for(fresh_database, idp, rate_limit_classes={"auth-failure": 3, "auth-failure-subject": 10**6}))
    address = next(_addresses)
    down = (f"ALTER DATABASE {fresh_database.name} WITH ALLOW_CONNECTIONS false",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{fresh_database.name}'"
            " AND pid <> pg_backend_pid()")
    with running(app):
        vendor = person(TestClient(app, client=(next(_addresses), 50000)), idp, roles=["internal_admin"])
        assert vendor.get("/api/v1/tenants").status_code == 200
        superuser_execute(pg_superuser_url, *down)
        try:
            assert vendor.get("/api/v1/tenants").status_code == 503  # the rate limit fails closed for the valid caller
            # Failures are still counted (in this process) and refused past the limit...
            assert [fail(app, address) for _ in range(4)] == [401, 401, 401, 429]
            # ... and buffered for the trail (the refused one too: an attempt all the same); a
            # flush now keeps them.
            assert app.state.audit_buffer.flush() == 0
            assert app.state.audit_buffer.pending() == 4
        finally:
            superuser_execute(pg_superuser_url, f"ALTER DATABASE {fresh_database.name} WITH ALLOW_CONNECTIONS true")
        assert app.state.audit_buffer.flush() == 4
    (event,) = platform_events(fresh_database, "token.rejected")
    assert (event["client_ip"], event["details"]["count"]) == (address, 4)


def test_a_flood_from_random_addresses_keeps_memory_bounded_and_counts_everything(app: FastAPI, fresh_database: TestDatabase) -> None:
    with running(app):  # a buffer of its own, with a small bound
        buffer = AuditBuffer(app.state.sessions, max_keys=5)
        for n in range(50):
            buffer.add(category=Category.authentication, action="token.rejected", actor=ANONYMOUS, meta=RequestMeta(client_ip=f"198.18.0.{n}"))
        assert buffer.pending() == 50
        assert buffer.flush() == 50
    events = platform_events(fresh_database, "token.rejected")
    assert len(events) == 6  # five addresses, then one overflow aggregate without an address
    (overflow,) = [e for e in events if e["details"].get("overflow")]
    assert (overflow["client_ip"], overflow["details"]["count"]) == (None, 45)
    assert sum(e["details"]["count"] for e in events) == 50
