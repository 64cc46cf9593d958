"""`audit.record` in one statement: PostgreSQL hashes exactly what `palisade audit verify` recomputes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.audit import repository as repo
from app.audit.chain import GENESIS, canonical, canonical_around_link, event_hash, link_canonical
from app.audit.service import Actor, Category, RequestMeta, as_dict, install_log_hooks, record
from app.audit.verify import verify_tenant
from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from tests.audit.test_canonical import TRICKY, _event

ACTOR = Actor(issuer="https://idp.example/realms/ünï", subject='s "q" \\ \n', user_id=uuid.uuid4(), role="owner")


@pytest.mark.parametrize("fields", TRICKY)
def test_the_link_fills_the_canonical_form(fields: dict[str, object]) -> None:
    event = _event(**fields)
    parts = canonical_around_link(event)
    for prev_hash, seq in ((GENESIS, 1), ("f" * 64, 2**62), ("ab" * 32, 0)):
        assert link_canonical(parts, prev_hash, seq) == canonical({**event, "prev_hash": prev_hash, "seq": seq})


@pytest.fixture
def sessions(database) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database.app_url, pool_size=8)
    factory = make_session_factory(engine)
    install_log_hooks(factory)
    yield factory
    engine.dispose()


def _record(sessions: sessionmaker[Session], tenant_id: uuid.UUID, **fields: object) -> dict[str, object]:
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        fields.setdefault("category", Category.configuration_change)
        fields.setdefault("action", "test.record")
        fields.setdefault("meta", RequestMeta())
        return record(session, tenant_id=tenant_id, actor=ACTOR, **fields)  # type: ignore[arg-type]


def _stored(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> list[dict[str, object]]:
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        return [as_dict(e) for e in repo.stream(session, tenant_id)]


def _head(database, tenant_id: uuid.UUID) -> tuple[int, str] | None:
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        row = conn.execute(text("select seq, hash from audit_chain_heads where tenant_id = :t"), {"t": tenant_id}).one_or_none()
    engine.dispose()
    return (row[0], row[1]) if row else None


def test_stored_hashes_are_the_rows_own(sessions, database) -> None:
    tenant_id = uuid.uuid4()
    returned = [
        _record(sessions, tenant_id),
        _record(sessions, tenant_id, meta=RequestMeta(client_ip="2001:db8::1", user_agent="Ünïcødé ✓ 𝄞 \u2028 \"q\" \\ \t",
                                                      correlation_id="c-1"),
                workspace_id=uuid.uuid4(), target_type="document", target_id=uuid.uuid4(), outcome="denied",
                details={"b": [1, 2.5, None, True, {"z": "é", "a": []}], "a": {"nested": {"y": 1}}, "é": "ü\n"}),
        _record(sessions, tenant_id, meta=RequestMeta(client_ip="::ffff:1.2.3.4", user_agent="x" * 600), target_id="t" * 128,
                details={"n": 10**30, "small": 1e-7}),
        _record(sessions, tenant_id, meta=RequestMeta(client_ip="not an ip")),
    ]
    stored = _stored(sessions, tenant_id)
    assert [e["seq"] for e in stored] == [1, 2, 3, 4]
    assert stored[0]["prev_hash"] == GENESIS
    for before, after in zip(stored, stored[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    for row, mine in zip(stored, returned, strict=True):
        assert row["hash"] == event_hash(row) == mine["hash"]  # what verify recomputes from the row
        assert (row["id"], row["seq"], row["prev_hash"]) == (mine["id"], mine["seq"], mine["prev_hash"])
    assert len(stored[2]["user_agent"]) == 512
    assert stored[3]["client_ip"] is None
    assert _head(database, tenant_id) == (4, stored[-1]["hash"])
    assert verify_tenant(sessions, tenant_id).broken is None


def test_an_overlong_value_fails_the_write_instead_of_being_cut(sessions, database) -> None:
    tenant_id = uuid.uuid4()
    _record(sessions, tenant_id)
    with pytest.raises(DBAPIError, match="value too long"):
        _record(sessions, tenant_id, target_id="t" * 129)
    assert [e["seq"] for e in _stored(sessions, tenant_id)] == [1]
    assert verify_tenant(sessions, tenant_id).broken is None


def test_a_rolled_back_first_event_leaves_no_chain(sessions, database) -> None:
    tenant_id = uuid.uuid4()
    with sessions() as session, session.begin() as tx:
        apply_context(session, DbContext(tenant_id=tenant_id))
        record(session, tenant_id=tenant_id, actor=ACTOR, meta=RequestMeta(), category=Category.configuration_change, action="a")
        tx.rollback()
    assert _head(database, tenant_id) is None
    assert _stored(sessions, tenant_id) == []
    assert _record(sessions, tenant_id)["seq"] == 1


def test_racing_first_writers_of_a_new_chain_queue(sessions, database) -> None:
    """Every writer finds no head at first; one creates it, the others wait for it and follow."""
    tenant_id = uuid.uuid4()
    writers, each = 8, 5
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(each):
                _record(sessions, tenant_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    stored = _stored(sessions, tenant_id)
    assert [e["seq"] for e in stored] == list(range(1, writers * each + 1))
    assert _head(database, tenant_id) == (writers * each, stored[-1]["hash"])
    assert verify_tenant(sessions, tenant_id).broken is None
