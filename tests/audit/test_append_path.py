"""The appliance's own append path: `private.audit_append` computes the link itself, for the
transaction's tenant only.

Issue 16: the app role could INSERT a well-formed event of its own making (any seq, any prev_hash)
and move a chain head. This release appends through a SECURITY DEFINER function that locks the
head and computes the link (migration 0010, the expand step); the app role's INSERT and UPDATE on
the chain's tables are revoked by a later release's contract migration, once no running release
appends directly (README, "The audit trail").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.audit.chain import GENESIS, canonical_around_link, event_hash
from app.audit.service import ANONYMOUS, Category, RequestMeta, record
from app.audit.verify import verify_tenant
from app.db.session import DbContext, apply_context, make_engine, make_session_factory


@pytest.fixture
def sessions(database) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database.app_url, pool_size=2)
    yield make_session_factory(engine)
    engine.dispose()


def _append(sessions: sessionmaker[Session], tenant_id: uuid.UUID, action: str = "test.append") -> dict[str, object]:
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        return record(session, tenant_id=tenant_id, actor=ANONYMOUS, meta=RequestMeta(), category=Category.configuration_change,
                      action=action)


def _as_app(sessions: sessionmaker[Session], tenant_id: uuid.UUID, statement: str, params: dict[str, object]) -> None:
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        session.connection().exec_driver_sql(statement, params)


def _forged_next(tenant_id: uuid.UUID, seq: int, prev_hash: str) -> dict[str, object]:
    """A well-formed event that links to the chain's head: what an attacker with the app role would write."""
    event: dict[str, object] = {
        "tenant_id": tenant_id, "seq": seq, "id": uuid.uuid4(), "occurred_at": datetime.now(UTC), "category": "role_change",
        "action": "role.grant", "outcome": "success", "workspace_id": None, "actor_type": "service", "actor_user_id": None,
        "actor_issuer": None, "actor_subject": None, "actor_role": None, "target_type": None, "target_id": None,
        "client_ip": None, "user_agent": None, "correlation_id": None, "trace_id": None, "details": {}, "prev_hash": prev_hash,
    }
    event["hash"] = event_hash(event)
    return event


def _refused(exc: pytest.ExceptionInfo[DBAPIError]) -> str:
    assert getattr(exc.value.orig, "sqlstate", None) == "42501", exc.value
    return str(exc.value.orig)


def _call_append(tenant_id: uuid.UUID) -> tuple[str, dict[str, object]]:
    event = _forged_next(tenant_id, 0, GENESIS)
    before, _, after = canonical_around_link(event)
    statement = ("select * from private.audit_append(p_tenant_id => %(tenant_id)s, p_id => %(id)s, p_occurred_at => %(occurred_at)s,"
                 " p_category => 'role_change', p_action => 'role.grant', p_outcome => 'success', p_actor_type => 'service',"
                 " p_details => '{}', p_before => %(before)s, p_after => %(after)s)")
    return statement, {**event, "before": before, "after": after}


def test_the_append_function_refuses_another_tenants_chain(sessions, database) -> None:
    victim, attacker = uuid.uuid4(), uuid.uuid4()
    _append(sessions, victim)
    statement, params = _call_append(victim)
    with pytest.raises(DBAPIError) as exc:
        _as_app(sessions, attacker, statement, params)  # the context names the attacker's tenant
    assert "not the tenant of this transaction" in _refused(exc)
    with pytest.raises(DBAPIError) as exc:  # nor with no tenant in the context at all
        with sessions() as session, session.begin():
            session.connection().exec_driver_sql(statement, params)
    assert "not the tenant of this transaction" in _refused(exc)
    _as_app(sessions, victim, statement, params)  # its own tenant: appended as seq 2, linked by the function
    assert _append(sessions, victim)["seq"] == 3
    assert verify_tenant(sessions, victim).broken is None


def test_only_the_app_role_may_call_the_append_function(database) -> None:
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        (owner, definer, config, public_execute, app_execute) = conn.execute(text(
            "select pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig,"
            " has_function_privilege('public', p.oid, 'EXECUTE'), has_function_privilege(:app, p.oid, 'EXECUTE')"
            " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'private' and p.proname = 'audit_append'"), {"app": database.app_role}).one()
    engine.dispose()
    assert (owner, definer, config) == (database.admin_role, True, ["search_path=pg_catalog, pg_temp"])
    assert (public_execute, app_execute) == (False, True)
