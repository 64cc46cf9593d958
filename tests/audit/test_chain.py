"""The audit trail proves itself: a gap-free hash chain per tenant that `palisade audit verify` checks."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, pool, text

from app.audit.service import ANONYMOUS, Category, RequestMeta, install_log_hooks, record
from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from app.main import create_app
from tests.support.api import World, settings_for
from tests.support.database import ROOT
from tests.support.webhook import SECRET, Receiver, verify_signature


def verify_cli(database, *tenants: uuid.UUID, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [arg for t in tenants for arg in ("--tenant", str(t))]
    return subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PALISADE_DATABASE_URL": database.app_url, **(env or {})}, timeout=120)


def tamper(database, tenant_id: uuid.UUID, *statements: str) -> None:
    """As the admin role (the schema owner), the way an insider with the migration credentials would."""
    engine = create_engine(database.admin_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("select set_config('app.tenant_id', :t, true)"), {"t": str(tenant_id)})
        for statement in statements:
            conn.execute(text(statement), {"t": tenant_id})
    engine.dispose()


def chain(database, tenant_id: uuid.UUID) -> list[tuple[int, str, str]]:
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text("select seq, prev_hash, hash from audit_events where tenant_id = :t order by seq"), {"t": tenant_id}).all()
    engine.dispose()
    return [tuple(r) for r in rows]


@pytest.fixture
def busy_world(world: World) -> World:
    """A tenant with a few dozen events of several kinds."""
    member = world.join(workspace=0, role="member")
    for i in range(5):
        assert member.post(f"{world.ws(0)}/documents", json={"title": f"d{i}", "body": "x"}).status_code == 201
    assert world.admin.patch(world.ws(1), json={"name": "Renamed"}).status_code == 200
    return world


class TestChainShape:
    def test_sequence_is_gap_free_and_linked(self, busy_world: World, database):
        rows = chain(database, busy_world.tenant_id)
        assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
        assert rows[0][1] == "0" * 64
        assert all(rows[i][1] == rows[i - 1][2] for i in range(1, len(rows)))

    def test_verify_passes_on_an_untouched_chain(self, busy_world: World, database):
        result = verify_cli(database, busy_world.tenant_id)
        assert result.returncode == 0, result.stderr
        assert f"ok {busy_world.tenant_id}: {len(chain(database, busy_world.tenant_id))} events" in result.stdout

    def test_verify_without_tenant_checks_every_chain(self, busy_world: World, database):
        result = verify_cli(database)
        assert result.returncode == 0, result.stderr
        assert str(busy_world.tenant_id) in result.stdout
        assert "ok 00000000-0000-0000-0000-000000000000" in result.stdout  # the platform chain


class TestTamperingIsFound:
    def test_edited_event(self, busy_world: World, database):
        tamper(database, busy_world.tenant_id, "update audit_events set details = '{\"changed\": [\"nothing\"]}' where tenant_id = :t and seq = 4")
        result = verify_cli(database, busy_world.tenant_id)
        assert result.returncode == 1
        assert "altered" in result.stderr and "seq 4 " in result.stderr

    def test_edited_event_with_its_hash_recomputed(self, busy_world: World, database):
        # An insider who rewrites the row and its hash still breaks the next event's link.
        tamper(database, busy_world.tenant_id, "update audit_events set outcome = 'failure', hash = repeat('a', 64) where tenant_id = :t and seq = 3")
        result = verify_cli(database, busy_world.tenant_id)
        assert result.returncode == 1
        assert "seq 3 " in result.stderr

    def test_deleted_event(self, busy_world: World, database):
        tamper(database, busy_world.tenant_id, "delete from audit_events where tenant_id = :t and seq = 5")
        result = verify_cli(database, busy_world.tenant_id)
        assert result.returncode == 1
        assert "missing" in result.stderr and "seq 5 is missing" in result.stderr

    def test_reordered_events(self, busy_world: World, database):
        tamper(
            database, busy_world.tenant_id,
            "update audit_events set seq = -6 where tenant_id = :t and seq = 6",
            "update audit_events set seq = 6 where tenant_id = :t and seq = 7",
            "update audit_events set seq = 7 where tenant_id = :t and seq = -6",
        )
        result = verify_cli(database, busy_world.tenant_id)
        assert result.returncode == 1
        assert "reordered" in result.stderr and "seq 6 " in result.stderr

    def test_removed_tail(self, busy_world: World, database):
        last = len(chain(database, busy_world.tenant_id))
        tamper(database, busy_world.tenant_id, f"delete from audit_events where tenant_id = :t and seq = {last}")
        result = verify_cli(database, busy_world.tenant_id)
        assert result.returncode == 1
        assert "truncated" in result.stderr

    def test_a_break_notifies_the_alert_webhook(self, busy_world: World, database, receiver: Receiver):
        tamper(database, busy_world.tenant_id, "delete from audit_events where tenant_id = :t and seq = 3")
        result = verify_cli(database, busy_world.tenant_id,
                            env={"PALISADE_ALERT_WEBHOOK_URL": receiver.url, "PALISADE_ALERT_WEBHOOK_SECRET": SECRET})
        assert result.returncode == 1
        (delivery,) = receiver.requests
        verify_signature(delivery)
        assert (delivery.json["rule"], delivery.json["key"]) == ("audit_chain_broken", str(busy_world.tenant_id))
        assert delivery.json["details"]["kind"] == "missing"

    def test_other_tenants_stay_verified(self, busy_world: World, other_world: World, database):
        tamper(database, busy_world.tenant_id, "delete from audit_events where tenant_id = :t and seq = 2")
        result = verify_cli(database, busy_world.tenant_id, other_world.tenant_id)
        assert result.returncode == 1
        assert f"ok {other_world.tenant_id}" in result.stdout
        assert f"BROKEN {busy_world.tenant_id}" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(database, idp) -> Iterator[str]:
    """The app under uvicorn on a real socket: requests really run in parallel."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings_for(database, idp, db_pool_size=20)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


class TestConcurrentWriters:
    def test_parallel_requests_keep_one_valid_gap_free_chain(self, world: World, database, live_server: str):
        before = len(chain(database, world.tenant_id))
        headers = {"Authorization": f"Bearer {world.admin.token}"}
        url = f"{live_server}{world.ws(0)}/documents"

        def create(i: int) -> int:
            return httpx.post(url, json={"title": f"p{i}", "body": "b"}, headers=headers, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool_:
            statuses = list(pool_.map(create, range(80)))
        assert statuses == [201] * 80
        rows = chain(database, world.tenant_id)
        assert len(rows) == before + 80
        assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
        assert verify_cli(database, world.tenant_id).returncode == 0


class TestDualPersistence:
    """The row commits with the action; the log line follows the commit, and only a commit."""

    @pytest.fixture
    def sessions(self, database):
        engine = make_engine(database.app_url, pool_size=1)
        factory = make_session_factory(engine)
        install_log_hooks(factory)
        yield factory
        engine.dispose()

    def _write(self, sessions, world: World, *, commit: bool) -> uuid.UUID:
        with sessions() as session:
            with session.begin() as tx:
                apply_context(session, DbContext(tenant_id=world.tenant_id))
                evt = record(session, tenant_id=world.tenant_id, actor=ANONYMOUS, meta=RequestMeta(correlation_id="dual-1"),
                             category=Category.configuration_change, action="test.dual")
                if not commit:
                    tx.rollback()
            return evt["id"]

    def test_one_log_line_after_commit(self, sessions, world: World, caplog):
        with caplog.at_level(logging.INFO, logger="palisade.audit"):
            event_id = self._write(sessions, world, commit=True)
        lines = [r for r in caplog.records if r.getMessage() == "audit_event"]
        assert [r.audit["id"] for r in lines] == [str(event_id)]
        assert lines[0].audit["hash"] and lines[0].audit["seq"] >= 1

    def test_nothing_logged_or_stored_on_rollback(self, sessions, world: World, database, caplog):
        before = chain(database, world.tenant_id)
        with caplog.at_level(logging.INFO, logger="palisade.audit"):
            self._write(sessions, world, commit=False)
        assert [r for r in caplog.records if r.getMessage() == "audit_event"] == []
        assert chain(database, world.tenant_id) == before  # no row, and the head did not move
        self._write(sessions, world, commit=True)
        assert verify_cli(database, world.tenant_id).returncode == 0
