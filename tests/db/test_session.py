"""The app's engine (`make_engine`): the context rides with the next statement, plain reads run as
implicit transactions, everything else in a real one; none of it may loosen the boundary."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from app.tenancy.models import Tenant
from bench.roundtrips import ProtocolTrace

SETTING = select(func.current_setting("app.tenant_id", True))


@pytest.fixture
def engine(database):
    engine = make_engine(database.app_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine):
    return make_session_factory(engine)


def _superuser(database):
    return create_engine(database.superuser_db_url, isolation_level="AUTOCOMMIT")


class TestContext:
    def test_the_next_statement_sees_the_context_and_the_next_transaction_does_not(self, sessions) -> None:
        tenant = uuid.uuid4()
        with sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=tenant))
            assert s.scalar(SETTING) == str(tenant)
            assert s.scalar(SETTING) == str(tenant), "every plain read carries it again"
        with sessions() as s, s.begin():  # the same pooled connection (pool_size=1)
            assert s.scalar(SETTING) in ("", None)

    def test_a_changed_context_reaches_the_next_statement_inside_a_transaction(self, sessions) -> None:
        first, second = uuid.uuid4(), uuid.uuid4()
        with sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=first))
            s.execute(text("select 1"))  # text SQL opens a real transaction
            assert s.scalar(SETTING) == str(first)
            apply_context(s, DbContext(tenant_id=second))
            assert s.scalar(SETTING) == str(second)

    def test_rows_of_another_tenant_stay_invisible(self, sessions, database) -> None:
        mine, theirs = uuid.uuid4(), uuid.uuid4()
        with _superuser(database).connect() as su:
            for t in (mine, theirs):
                su.execute(text("insert into tenants (id, name, slug) values (:t, 'T', :s)"), {"t": t, "s": f"s-{t.hex[:12]}"})
        with sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=mine))
            assert s.scalars(select(Tenant.id).where(Tenant.id.in_([mine, theirs]))).all() == [mine]
        with sessions() as s, s.begin():  # no context: no rows, not all rows
            assert s.scalars(select(Tenant.id).where(Tenant.id.in_([mine, theirs]))).all() == []


class TestRoundTrips:
    def test_a_read_is_one_round_trip_with_its_context_and_no_begin_or_commit(self, engine, sessions, tmp_path: Path) -> None:
        trace = ProtocolTrace(engine, tmp_path)
        with trace.counting() as trips:
            with sessions() as s, s.begin():
                apply_context(s, DbContext(tenant_id=uuid.uuid4()))
                s.scalar(SETTING)
        assert len(trips) == 1, trips
        assert "set_config" in trips[0][0] and "current_setting" in trips[0][-1]

    def test_a_write_opens_its_transaction_in_the_same_round_trip(self, engine, sessions, tmp_path: Path) -> None:
        trace = ProtocolTrace(engine, tmp_path)
        with trace.counting() as trips:
            with sessions() as s, s.begin():
                apply_context(s, DbContext(tenant_id=uuid.uuid4()))
                s.execute(text("select txid_current()"))
        assert len(trips) == 2, trips  # BEGIN + context + statement, then COMMIT
        assert "BEGIN" in trips[0][0] and "set_config" in trips[0][1] and "txid_current" in trips[0][2]
        assert "COMMIT" in trips[1][0]


class TestTransactions:
    def test_writes_roll_back_together(self, sessions, database) -> None:
        slug = f"s-{uuid.uuid4().hex[:12]}"
        with pytest.raises(RuntimeError), sessions() as s, s.begin():
            tenant = uuid.uuid4()
            apply_context(s, DbContext(tenant_id=tenant))
            s.execute(text("insert into tenants (id, name, slug) values (:t, 'T', :s)"), {"t": tenant, "s": slug})
            raise RuntimeError
        with _superuser(database).connect() as su:
            assert su.scalar(text("select count(*) from tenants where slug = :s"), {"s": slug}) == 0

    def test_for_update_holds_its_lock_until_commit(self, sessions, database) -> None:
        tenant = uuid.uuid4()
        with _superuser(database).connect() as su:
            su.execute(text("insert into tenants (id, name, slug) values (:t, 'T', :s)"), {"t": tenant, "s": f"s-{tenant.hex[:12]}"})
        with sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=tenant))
            assert s.scalars(select(Tenant).where(Tenant.id == tenant).with_for_update()).one()
            with _superuser(database).connect() as other, pytest.raises(OperationalError, match="could not obtain lock"):
                other.execute(text("select 1 from tenants where id = :t for update nowait"), {"t": tenant})

    def test_an_isolation_level_asked_for_is_honoured(self, sessions) -> None:
        with sessions() as s:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            assert s.scalar(text("show transaction_isolation")) == "repeatable read"
            s.commit()
        with sessions() as s, s.begin():
            assert s.scalar(text("show transaction_isolation")) == "read committed"


class TestLostServer:
    def test_after_the_backend_is_terminated_one_statement_fails_and_the_next_reconnects(self, sessions, database) -> None:
        with sessions() as s, s.begin():
            pid = s.scalar(select(func.pg_backend_pid()))
        with _superuser(database).connect() as su:
            su.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
        def read() -> str | None:
            with sessions() as s, s.begin():
                apply_context(s, DbContext(tenant_id=uuid.uuid4()))
                return s.scalar(SETTING)

        with pytest.raises(OperationalError):
            read()
        assert read()  # a fresh connection, no PendingRollbackError, no stuck pool


class TestIdleConnections:
    def test_an_idle_connection_is_pinged_and_still_serves_autocommit_and_transactions(self, database) -> None:
        engine = make_engine(database.app_url, pool_size=1, ping_after=0)
        try:
            for _ in range(2):  # the second checkout finds it idle "long enough" and pings it first
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    assert conn.execute(text("select 1")).scalar() == 1
                sessions = make_session_factory(engine)
                with sessions() as s, s.begin():
                    apply_context(s, DbContext(tenant_id=uuid.uuid4()))
                    assert s.scalar(SETTING)
        finally:
            engine.dispose()
