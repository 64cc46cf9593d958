"""The verifier's fast paths compute exactly what the slow, obvious definitions compute."""

from __future__ import annotations

import enum
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address

import pytest
from sqlalchemy import create_engine, pool, text

from app.audit import repository as repo
from app.audit.chain import CHAINED_FIELDS, GENESIS, canonical, event_hash, reference_canonical, verify_chain
from app.audit.service import as_dict
from app.db.session import DbContext, apply_context, make_engine, make_session_factory


class Level(enum.IntEnum):
    high = 3


class Tag(enum.StrEnum):
    x = "x"


def _event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "tenant_id": uuid.uuid4(), "seq": 7, "id": uuid.uuid4(), "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "category": "content_change", "action": "document.create", "outcome": "success", "workspace_id": None,
        "actor_type": "user", "actor_user_id": uuid.uuid4(), "actor_issuer": "https://idp.example/", "actor_subject": "s",
        "actor_role": "owner", "target_type": "document", "target_id": "t", "client_ip": ip_address("203.0.113.9"),
        "user_agent": "UA", "correlation_id": "c", "trace_id": None, "details": {}, "prev_hash": GENESIS, "hash": "h",
    }
    return {**base, **fields}


TRICKY = [
    {},
    {"user_agent": 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f'},
    {"user_agent": "Ünïcødé ✓ 𝄞 \u2028 \u2029 \ud7ff"},
    {"details": {"b": [1, 2.5, None, True, False, {"z": "é", "a": []}], "a": {"nested": {"y": 1, "x": -0.0}}}},
    {"details": {"n": 1e300, "small": 1e-7, "big": 10**30}},
    {"details": {"é": 1, "A": 2, "a": 3, "10": 4, "9": 5}},
    {"seq": 0, "workspace_id": uuid.UUID(int=0), "target_id": ""},
    {"seq": 2**62, "outcome": True, "action": False},
    {"seq": Level.high, "category": Tag.x},
    {"occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-7)))},
    {"client_ip": ip_address("::ffff:1.2.3.4"), "details": []},
    {"client_ip": "10.0.0.1", "details": {"k": "v"}, "correlation_id": None},
    {"details": [1.5, "x"], "trace_id": 12},
    {"trace_id": 2.5, "target_id": ("a", 1), "details": {"f": float("inf")}},
]


@pytest.mark.parametrize("fields", TRICKY)
def test_canonical_is_json_dumps_sorted_and_compact(fields: dict[str, object]) -> None:
    event = _event(**fields)
    assert canonical(event) == reference_canonical(event)
    assert json.loads(canonical(event)).keys() == set(CHAINED_FIELDS)


def test_missing_fields_are_null() -> None:
    assert canonical({"seq": 1}) == reference_canonical({"seq": 1})


def _insert(database, tenant_id: uuid.UUID, rows: list[dict[str, object]]) -> None:
    engine = create_engine(database.admin_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("select set_config('app.tenant_id', :t, true)"), {"t": str(tenant_id)})
        for row in rows:
            conn.execute(text(
                "insert into audit_events (tenant_id, id, seq, prev_hash, hash, occurred_at, category, action, outcome, "
                "workspace_id, client_ip, user_agent, details) values (:tenant_id, :id, :seq, :prev_hash, :hash, :occurred_at, "
                "'c', 'a', 'o', :workspace_id, cast(:client_ip as inet), :user_agent, cast(:details as jsonb))"), row)
    engine.dispose()


IPS = [None, "10.0.0.1", "10.0.0.1/32", "10.0.0.1/24", "10.0.0.0/8", "::1", "::1/128", "2001:db8::1",
       "::ffff:1.2.3.4", "2001:0db8:0000:0000:0000:ff00:0042:8329", "fe80::1/64"]


def test_chain_links_hash_like_the_stored_rows(database) -> None:
    tenant_id = uuid.uuid4()
    _insert(database, tenant_id, [
        {"tenant_id": tenant_id, "id": uuid.uuid4(), "seq": i, "prev_hash": "p", "hash": "h",
         "occurred_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=i * 7919),
         "workspace_id": uuid.uuid4() if i % 2 else None, "client_ip": ip, "user_agent": 'Ünï "q" \\ \n',
         "details": json.dumps({"b": [1, 2.5, {"z": None}], "a": True} if i % 3 else {})}
        for i, ip in enumerate(IPS, 1)
    ])
    engine = make_engine(database.app_url, pool_size=1)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant_id))
            orm = [reference_canonical(as_dict(e)) for e in repo.stream(session, tenant_id)]
            core = [canonical(e) for e in repo.chain_links(session, tenant_id, batch=3)]
    finally:
        engine.dispose()
    assert len(core) == len(IPS)
    assert core == orm


def test_a_break_stops_the_read_ahead(database) -> None:
    tenant_id = uuid.uuid4()
    rows, prev = [], GENESIS
    for seq in range(1, 51):
        row = {"tenant_id": tenant_id, "id": uuid.uuid4(), "seq": seq, "prev_hash": prev,
               "occurred_at": datetime(2026, 1, 1, tzinfo=UTC), "workspace_id": None, "client_ip": None,
               "user_agent": None, "details": "{}"}
        event = {**row, "category": "c", "action": "a", "outcome": "o", "details": {}}
        row["hash"] = prev = event_hash(event) if seq != 5 else "0" * 64  # seq 5 altered
        rows.append(row)
    _insert(database, tenant_id, rows)
    engine = make_engine(database.app_url, pool_size=1)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant_id))
            checked, broken = verify_chain(tenant_id, repo.chain_links(session, tenant_id, batch=4), (50, prev))
            assert (checked, broken and broken.kind, broken and broken.seq) == (4, "altered", 5)
            assert broken is not None and broken.event_id == rows[4]["id"]
            assert not [t for t in threading.enumerate() if t.name == "audit-chain-read-ahead"]
            assert session.execute(text("select 1")).scalar() == 1  # the connection is free again
    finally:
        engine.dispose()
