"""No session of the app role can wait, or hold others, without bound.

Before: the app role had no statement, lock or idle-in-transaction timeout, and the pool waited
30 s for a connection. One tenant's audit-chain lock held by another session made a write wait
without end (and the 20-connection pool drained behind it); a pool timeout was a 500.
Now the migrations give the role its timeouts (doctor checks them), and a lock or pool timeout
answers 503 problem+json with Retry-After, at once, instead of hanging.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.main import create_app
from tests.db.test_doctor_mutations import doctor, named
from tests.support.api import make_world, person, settings_for
from tests.support.database import superuser_execute
from tests.support.webhook import SECRET, Receiver

SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def role_settings(url: str) -> dict[str, str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        values = {name: conn.execute(text(f"show {name}")).scalar_one() for name in SETTINGS}
    engine.dispose()
    return values


def test_the_app_role_has_every_timeout(database):
    values = role_settings(database.app_url)
    assert all(v not in ("0", "0ms") for v in values.values()), values


@pytest.mark.parametrize("setting", SETTINGS)
def test_doctor_fails_without_a_timeout(fresh_database, setting: str):
    superuser_execute(fresh_database.superuser_url, f'ALTER DATABASE "{fresh_database.name}" RESET {setting}')
    assert ("role_timeouts", setting) in named(doctor(fresh_database))


def test_doctor_fails_on_a_timeout_raised_past_its_bound(fresh_database):
    superuser_execute(fresh_database.superuser_url,
                      f'ALTER ROLE "{fresh_database.app_role}" IN DATABASE "{fresh_database.name}" SET lock_timeout = \'10min\'')
    assert named(doctor(fresh_database)) == {("role_timeouts", "lock_timeout")}


def _in_thread(call: Any) -> tuple[Any, float]:
    """Run `call` with a bound on how long the test waits for it (a hang fails, not blocks)."""
    result: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        result["response"] = call()
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the request is still waiting"
    return result["response"], result["seconds"]


def assert_busy(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1


def test_a_held_lock_is_a_503_not_a_hang(fresh_database, idp):
    # A short lock timeout for this database only, so the test does not wait the default out.
    superuser_execute(fresh_database.superuser_url,
                      f'ALTER ROLE "{fresh_database.app_role}" IN DATABASE "{fresh_database.name}" SET lock_timeout = \'300ms\'')
    with TestClient(create_app(settings_for(fresh_database, idp)), raise_server_exceptions=False) as client:
        world = make_world(client, idp, person(client, idp, roles=["internal_admin"]))
        blocker = create_engine(fresh_database.superuser_db_url)
        with blocker.connect() as conn:
            conn.execute(text("select 1 from audit_chain_heads where tenant_id = :t for update"), {"t": world.tenant_id})
            r, _ = _in_thread(lambda: world.admin.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}))
            assert_busy(r)
            conn.rollback()
        blocker.dispose()
        # Nothing was half-written, and the tenant works again once the lock is gone.
        assert world.admin.get(f"{world.ws(0)}/documents").json()["items"] == []
        assert world.admin.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}).status_code == 201


def test_database_busy_refusals_are_audited_aggregated_and_alert(fresh_database, idp, receiver: Receiver):
    # Before: a database-busy 503 was only a log line, never on the audit trail. Now each is buffered
    # (no I/O while the database is saturated) and the flush writes one aggregated event to the
    # caller's tenant chain, which feeds the `database_busy` alert rule (10 in 5 minutes).
    superuser_execute(fresh_database.superuser_url,
                      f'ALTER ROLE "{fresh_database.app_role}" IN DATABASE "{fresh_database.name}" SET lock_timeout = \'100ms\'')
    settings = settings_for(fresh_database, idp, alert_webhook_url=receiver.url, alert_webhook_secret=SECRET)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        world = make_world(client, idp, person(client, idp, roles=["internal_admin"]))
        url = f"{world.ws(0)}/documents"
        blocker = create_engine(fresh_database.superuser_db_url)
        with blocker.connect() as conn:
            conn.execute(text("select 1 from audit_chain_heads where tenant_id = :t for update"), {"t": world.tenant_id})
            for n in range(10):
                r, _ = _in_thread(lambda n=n: world.admin.post(url, json={"title": "secret-title", "body": "secret-body"},
                                                               headers={"X-Correlation-ID": f"busy-{n}"}))
                assert_busy(r)
            conn.rollback()
        assert app.state.audit_buffer.flush() == 10  # the lock is gone: the tenant's chain takes them
        with blocker.connect() as conn:
            rows = conn.execute(text("select actor_user_id, outcome, correlation_id, details::text as raw, details"
                                     " from audit_events where tenant_id = :t and category = 'availability'"),
                                {"t": world.tenant_id}).mappings().all()
        blocker.dispose()
        assert alerts_engine_flushed(app)
    (event,) = rows
    assert event["outcome"] == "refused" and event["actor_user_id"] == world.user_ids[world.admin.subject]
    details = event["details"]
    assert (details["count"], details["reason"]) == (10, "lock_timeout")
    assert details["route"] == "POST /tenants/{tenant_id}/workspaces/{workspace_id}/documents"
    assert details["first_at"] <= details["last_at"]
    assert event["correlation_id"] == "busy-0" and details["correlation_ids"] == [f"busy-{n}" for n in range(10)]
    assert "secret-" not in event["raw"]  # never the request's content
    (alert,) = [a.json for a in receiver.requests if a.json["rule"] == "database_busy"]
    assert alert["key"] == str(world.tenant_id)


def alerts_engine_flushed(app: Any) -> bool:
    from app import alerts

    engine = alerts.current()
    return engine is not None and engine.flush()


def test_an_exhausted_pool_is_a_quick_503(database, idp):
    app = create_app(settings_for(database, idp, db_pool_size=1, db_pool_timeout_seconds=0.3))
    with TestClient(app, raise_server_exceptions=False) as client:
        world = make_world(client, idp, person(client, idp, roles=["internal_admin"]))
        engine = app.state.engine
        held = [engine.connect() for _ in range(2)]  # pool_size 1 + overflow 1: nothing left
        try:
            r, seconds = _in_thread(lambda: world.admin.get(f"{world.ws(0)}/documents"))
        finally:
            for conn in held:
                conn.close()
        assert_busy(r)
        assert seconds < 5
        assert world.admin.get(f"{world.ws(0)}/documents").status_code == 200
