"""Round trips: what one authenticated, tenant-scoped read costs in database round trips.

Counted: `GET /api/v1/tenants/{t}/workspaces/{w}/documents` through the real app (a token from the
real test IdP, every middleware and dependency), in process, against the data set. The counter is
libpq's own protocol trace (`PQtrace`) on every connection the app's engine checks out during the
request: a round trip is each Sync or simple Query message, after which the client waits for the
server's ReadyForQuery (a prepared statement shows as its Bind, without a Parse). The statements in each round trip are saved with the results.

Compared: the DB work of that request — the rate-limit hit, the RBAC lookups, the documents query
and COMMIT, run by the same functions the request runs (`RateLimiter`'s store,
`WorkspaceAccess`, `knowledge.service.list_documents`) — against the floor: the same documents
query with an explicit WHERE as one autocommit statement (one round trip, no auth, no context).
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from psycopg import pq
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session
from starlette.requests import Request

from app.audit.service import RequestMeta
from app.auth.principal import Principal
from app.authz.dependencies import WorkspaceAccess
from app.authz.roles import WorkspaceRole
from app.config import IssuerConfig, Mode, Settings
from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from app.edge.ratelimit import PostgresStore
from app.knowledge import repository as repo
from app.knowledge import service
from app.knowledge.models import Document
from app.main import create_app
from bench.dataset import Dataset, point_users_at
from bench.kit import Context, Row, Section, side_by_side
from tests.support.idp import start_idp

NAME = "roundtrips"
TITLE = "Round trips"
AUDIENCE = "palisade-bench"
TARGET = 0.90


class ProtocolTrace:
    """libpq's trace of every connection `engine` checks out while `counting()` is active."""

    def __init__(self, engine: Engine, workdir: Path) -> None:
        self.workdir = workdir
        self._traced: dict[int, tuple[Any, Any]] = {}
        self._on = False
        self._lock = threading.Lock()
        event.listen(engine, "checkout", self._checkout)

    def _checkout(self, dbapi: Any, record: Any, proxy: Any) -> None:
        # Traced from its first checkout inside the block to the block's end, in one file.
        if self._on and id(dbapi) not in self._traced:
            with self._lock:
                handle = open(self.workdir / f"conn-{id(dbapi)}.trace", "w")  # noqa: SIM115
                self._traced[id(dbapi)] = (dbapi, handle)
            dbapi.pgconn.trace(handle.fileno())
            dbapi.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    @contextmanager
    def counting(self) -> Iterator[list[list[str]]]:
        """Yields the round trips seen inside the block: each a list of the client's messages."""
        trips: list[list[str]] = []
        self._on = True
        try:
            yield trips
        finally:
            self._on = False
            with self._lock:
                for dbapi, handle in self._traced.values():
                    dbapi.pgconn.untrace()
                    handle.close()
                for path in sorted(self.workdir.glob("conn-*.trace")):
                    trips.extend(parse_trace(path.read_text()))
                    path.unlink()
                self._traced.clear()


def parse_trace(trace: str) -> list[list[str]]:
    """Round trips in a libpq trace: every Sync or simple Query the client sends is a point where
    it waits for the server's ReadyForQuery; the messages since the previous one travel with it."""
    trips: list[list[str]] = []
    sent: list[str] = []
    last = ""
    for line in trace.splitlines():
        direction, _, rest = line.partition("\t")
        if direction not in ("F", "B"):
            if last == "F" and sent and sent[-1].startswith("Parse"):
                sent[-1] += " " + line.strip()  # a multi-line statement's next line
            continue
        last = direction
        if direction == "B":
            continue
        message = rest.split("\t", 1)[1] if "\t" in rest else rest
        fields = message.split('"')
        if message.startswith(("Parse", "Query")):
            sent.append(message)
        elif message.startswith("Bind") and len(fields) > 3 and fields[3]:
            sent.append(f"prepared statement {fields[3]}")  # psycopg prepares a statement after a few runs
        if message.startswith(("Sync", "Query")):
            trips.append(sent or [message])
            sent = []
    return trips


def _describe(trip: list[str]) -> str:
    def short(m: str) -> str:
        if m.startswith("Parse"):
            text = m.split('"', 3)[3] if m.count('"') >= 4 else m
            return " ".join(text.split())[:120]
        return m
    return " + ".join(short(m) for m in trip)


def _only_context(trip: list[str]) -> bool:
    """A round trip that carries nothing but tenant-context settings (what pipelining must avoid)."""
    statements = [m for m in trip if m.startswith(("Parse", "Query"))]
    return bool(statements) and all("set_config" in m for m in statements)


def _count_request(ctx: Context, dataset: Dataset, workdir: Path) -> tuple[list[list[str]], int]:
    idp = start_idp(audience=AUDIENCE, workdir=workdir)
    try:
        point_users_at(dataset, idp.issuer)
        settings = Settings(_env_file=None, mode=Mode.development, database_url=dataset.db.app_url, log_level="WARNING",
                            issuers=[IssuerConfig(issuer=idp.issuer, audience=idp.audience)],
                            rate_limit_per_minute=1_000_000)
        tenant = dataset.tenants[0]
        url = f"/api/v1/tenants/{tenant.tenant_id}/workspaces/{tenant.workspaces[0]}/documents"
        headers = {"Authorization": f"Bearer {idp.token(tenant.subject)}"}
        with TestClient(create_app(settings), client=("203.0.113.7", 50000)) as client:
            trace = ProtocolTrace(client.app.state.engine, workdir)
            for _ in range(3):  # warm: JWKS fetched, pool connections open, statements known
                assert client.get(url, headers=headers).status_code == 200
            with trace.counting() as trips:
                response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        return trips, len(response.json()["items"])
    finally:
        idp.stop()


class _Path:
    """The request's database work, by the functions the request runs, for one caller."""

    def __init__(self, dataset: Dataset, app_engine: Engine, admin_engine: Engine, seed: int) -> None:
        self.sessions = make_session_factory(app_engine)
        self.store = PostgresStore(app_engine)
        self.floor_engine = admin_engine
        self.tenants = dataset.tenants
        self.rng = random.Random(seed)
        self.issuer = dataset_issuer(dataset)
        self.meta = RequestMeta(client_ip="203.0.113.7")
        self.workspace_access = WorkspaceAccess(WorkspaceRole.viewer)

    def _pick(self) -> tuple[Any, Any]:
        tenant = self.tenants[self.rng.randrange(len(self.tenants))]
        return tenant, tenant.workspaces[self.rng.randrange(len(tenant.workspaces))]

    def secured(self, *, rate_limit: bool) -> None:
        tenant, workspace = self._pick()
        principal = Principal(self.issuer, tenant.subject)
        if rate_limit:
            self.store.hit(f"bench|{tenant.subject}", limit=1_000_000_000, window_seconds=60)
        request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {}})
        with self.sessions() as session, session.begin():
            workspace_scope = self.workspace_access(request, principal, session, self.meta, tenant.tenant_id, workspace)
            docs, _ = service.list_documents(workspace_scope, limit=50, cursor=None)
            assert docs

    def scoped_read(self) -> None:
        """The tenant-scoped read alone, as the session machinery sends it: context + documents query."""
        tenant, workspace = self._pick()
        with self.sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant.tenant_id, workspace_id=workspace, user_id=tenant.user_id))
            assert repo.latest(session, workspace_id=workspace, limit=51)

    def floor(self) -> None:
        tenant, workspace = self._pick()
        statement = repo.latest_query(workspace_id=workspace, limit=51).where(Document.tenant_id == tenant.tenant_id)
        with Session(self.floor_engine) as session:
            assert session.scalars(statement).all()


def dataset_issuer(dataset: Dataset) -> str:
    from sqlalchemy import text

    engine = create_engine(dataset.db.admin_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("select issuer from users limit 1")).scalar_one()
    finally:
        engine.dispose()


def run(ctx: Context) -> Section:
    dataset: Dataset = ctx.dataset
    section = Section(NAME, TITLE)
    with tempfile.TemporaryDirectory(prefix="palisade-bench-rt-") as tmp:
        trips, items = _count_request(ctx, dataset, Path(tmp))
    context_only = sum(1 for t in trips if _only_context(t))
    section.artifacts["round_trips"] = [_describe(t) for t in trips]
    section.add(Row(metric="database round trips of one authenticated GET documents (real request path)",
                    value=len(trips), unit="", baseline=1, ratio=len(trips), target=None, met=None,
                    note="; ".join(f"{i + 1}: {_describe(t)[:80]}" for i, t in enumerate(trips))))
    section.add(Row(metric="of those, round trips that only set the tenant/workspace/user context",
                    value=context_only, unit="", target="0", met=context_only == 0))

    app_engine = make_engine(dataset.db.app_url, pool_size=2)
    floor_engine = create_engine(dataset.db.admin_url, pool_size=1, isolation_level="AUTOCOMMIT")
    try:
        path = _Path(dataset, app_engine, floor_engine, seed=5)
        floor_path = _Path(dataset, app_engine, floor_engine, seed=5)
        shapes: list[tuple[str, Callable[[], None]]] = [
            ("tenant-scoped read (context + documents query, as app/db/session.py sends it)", path.scoped_read),
            ("the request's database work (RBAC lookups + documents query)", lambda: path.secured(rate_limit=False)),
            ("the request's database work + its rate-limit hit", lambda: path.secured(rate_limit=True)),
        ]
        for label, measured in shapes:
            comparison = side_by_side(measured, floor_path.floor, scale=ctx.scale)
            secured_rate, floor_rate = comparison.rate(comparison.measured), comparison.rate(comparison.baseline)
            ratio = secured_rate / floor_rate
            section.add(Row(metric=f"{label} vs one explicit-WHERE statement: transactions/s",
                            value=secured_rate, unit="/s", baseline=floor_rate, ratio=ratio, target=f"≥ {TARGET}",
                            met=ratio >= TARGET))
    finally:
        app_engine.dispose()
        floor_engine.dispose()
    section.artifacts["items_returned"] = items
    return section
