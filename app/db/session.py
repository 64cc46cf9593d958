"""Engine and sessions. Every transaction carries its tenant context as transaction-local settings.

The context is set with `set_config(name, value, true)` (never a session-level SET), so a pooled
connection — ours or PgBouncer's in transaction mode — cannot carry one request's tenant into the
next. All settings go in one statement, and that statement costs no round trip of its own:

Design notes (round trips; measured in `bench/roundtrips.py`)
- Each round trip to PostgreSQL costs more than the policies do (~70 µs on loopback, more across
  a network), so the engines made here send what a statement needs ahead of it in the same psycopg
  pipeline: one network write out, one read back. `apply_context` only records the context.
- Reads need no BEGIN or COMMIT. While a transaction has only run plain SELECTs (SQLAlchemy
  `Select` constructs without FOR UPDATE/SHARE), each goes out as `[set_config(context), SELECT,
  Sync]`: PostgreSQL runs what precedes a Sync as one implicit transaction, so the settings are
  transaction-local to that statement and gone at its end. One round trip per read, none for the
  context, none for COMMIT. A read sees its own snapshot, as every statement under READ COMMITTED
  does inside a transaction too.
- Anything else (DML, FOR UPDATE, text SQL, a streamed result) begins a real transaction: `BEGIN`
  and the context ride with that statement; later statements carry the context only when it
  changed; SQLAlchemy's `commit()`/`rollback()` reach psycopg, which sends COMMIT/ROLLBACK because
  the server reports a transaction in progress. Locks and writes behave exactly as before.
- For that, psycopg's connections run with `autocommit = True` and `BEGIN` is ours: psycopg would
  otherwise send its own BEGIN first and wait for the answer. Where a caller asks for something
  our plain `BEGIN` would lose (an isolation level, READ ONLY, DEFERRABLE, as `palisade audit
  verify` and `palisade doctor` do), psycopg begins the transaction itself, as before. A
  connection asked for `AUTOCOMMIT` (the rate limiter's) gets no BEGIN and no context.
- `pool_pre_ping` would add a round trip to every checkout; instead a connection is pinged only
  when it sat in the pool long enough for a server restart or an idle timeout to have closed it.
  The price: after a failover, the first statement on a busy connection fails (that request gets
  a 5xx); SQLAlchemy then invalidates the whole pool, so the next requests reconnect.
- The context lives on the connection only until the SQLAlchemy transaction ends (commit,
  rollback and checkout drop it), so it can never ride into another checkout.
"""

from __future__ import annotations

import math
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import ServerCursor
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, Select, create_engine, event
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

_SET_CONTEXT = (
    "select set_config('app.tenant_id', %(tenant_id)s, true),"
    " set_config('app.workspace_id', %(workspace_id)s, true),"
    " set_config('app.user_id', %(user_id)s, true),"
    " set_config('app.platform_role', %(platform_role)s, true),"
    " set_config('app.vendor_issuer', %(vendor_issuer)s, true),"
    " set_config('app.vendor_subject', %(vendor_subject)s, true)"
)
_CONTEXT = "palisade_context"  # the transaction's context parameters
_SENT = "palisade_context_sent"  # already set inside the current explicit transaction
_IDLE_SINCE = "palisade_idle_since"
# Engines whose statements carry BEGIN and the pending context (made by `make_engine`).
_PIPELINED: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass(frozen=True)
class DbContext:
    """What the row-level security policies read for the current transaction."""

    tenant_id: uuid.UUID | None = None
    workspace_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    platform_role: str | None = None
    # Vendor staff (platform_role internal_admin): who they are, so a grant can name them.
    vendor_issuer: str | None = None
    vendor_subject: str | None = None

    def parameters(self) -> dict[str, str]:
        return {
            "tenant_id": str(self.tenant_id or ""),
            "workspace_id": str(self.workspace_id or ""),
            "user_id": str(self.user_id or ""),
            "platform_role": self.platform_role or "",
            "vendor_issuer": self.vendor_issuer or "",
            "vendor_subject": self.vendor_subject or "",
        }


def apply_context(session: Session, context: DbContext) -> None:
    """Set (or replace) the tenant context of the session's current transaction.

    On the app's engines the settings travel with the next statement (no round trip of their
    own); on any other engine they are sent at once.
    """
    connection = session.connection()
    if connection.engine in _PIPELINED:
        connection.info[_CONTEXT] = context.parameters()
        connection.info[_SENT] = False
    else:
        send_context(connection, context)
    session.info["db_context"] = context


def send_context(connection: Connection, context: DbContext) -> None:
    """Set `context` on `connection` now, in its current transaction (a round trip of its own)."""
    connection.exec_driver_sql(_SET_CONTEXT, context.parameters())


def current_context(session: Session) -> DbContext:
    return session.info.get("db_context", DbContext())


def _plain_read(context: Any, cursor: Any) -> bool:
    """A SELECT that takes no locks, returned in one piece: safe outside an explicit transaction."""
    statement = getattr(getattr(context, "compiled", None), "statement", None)
    # `_for_update_arg` is how SQLAlchemy records with_for_update(); no public accessor exists.
    return isinstance(statement, Select) and statement._for_update_arg is None and not isinstance(cursor, ServerCursor)


def _prologue(connection: Connection, dbapi: Any, cursor: Any, context: Any) -> list[tuple[str, dict[str, str] | None]]:
    """What must precede the statement about to run: our BEGIN, the context, or nothing."""
    try:
        info = connection.info
    except NotImplementedError:  # the dialect's own first-connect checks run on a bare connection
        return []
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return []
    steps: list[tuple[str, dict[str, str] | None]] = []
    if dbapi.pgconn.transaction_status == TransactionStatus.IDLE and dbapi.autocommit:
        if dbapi.isolation_level is not None or dbapi.read_only is not None or dbapi.deferrable is not None:
            dbapi.autocommit = False  # psycopg's own BEGIN carries what was asked for
        elif _plain_read(context, cursor):
            # An implicit transaction of its own: the context goes with every such read.
            return [(_SET_CONTEXT, info[_CONTEXT])] if _CONTEXT in info else []
        else:
            steps.append(("BEGIN", None))
            info[_SENT] = False
    if _CONTEXT in info and not info.get(_SENT):
        steps.append((_SET_CONTEXT, info[_CONTEXT]))
        info[_SENT] = True
    return steps


def _run_pipelined(cursor: Any, context: Any, send: Callable[[], None]) -> bool | None:
    """The prologue and the statement in one psycopg pipeline: one round trip for all of them."""
    dbapi = cursor.connection
    steps = _prologue(context.root_connection, dbapi, cursor, context)
    if not steps:
        return None  # SQLAlchemy runs the statement as usual
    # Server-side cursors (streamed results) cannot run in a pipeline: the prologue goes ahead of them.
    streamed = isinstance(cursor, ServerCursor)
    with dbapi.pipeline():
        for sql, params in steps:
            dbapi.execute(sql, params)
        if not streamed:
            send()
    return None if streamed else True


def _do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
    return _run_pipelined(cursor, context, lambda: cursor.execute(statement, parameters))


def _do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool | None:
    return _run_pipelined(cursor, context, lambda: cursor.execute(statement))


def _do_executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
    return _run_pipelined(cursor, context, lambda: cursor.executemany(statement, parameters))


def _drop_context(info: dict[str, Any]) -> None:
    info.pop(_CONTEXT, None)
    info.pop(_SENT, None)


def _transaction_ended(connection: Connection) -> None:
    try:
        info = connection.info
    except SQLAlchemyError:
        return  # invalidated (the server went away): its record, and the context, are discarded
    _drop_context(info)


def make_engine(url: str, *, pool_size: int = 10, pool_timeout: float = 5.0, ping_after: float = 30.0) -> Engine:
    """The app's engine. A pooled connection idle for more than `ping_after` seconds is pinged
    before use (a dead one is replaced); a busy one is not, which saves a round trip per checkout.
    A checkout waits at most `pool_timeout` seconds (then sqlalchemy.exc.TimeoutError: a 503)."""
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout, hide_parameters=True)
    _PIPELINED.add(engine)

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi: Any, record: Any, proxy: Any) -> None:
        _drop_context(record.info)
        if dbapi.pgconn.transaction_status == TransactionStatus.IDLE:
            # Back to our own BEGIN (SQLAlchemy restores READ COMMITTED after an isolation level was
            # asked for); first, so that the ping below cannot open a transaction.
            dbapi.autocommit, dbapi.isolation_level = True, None
        if time.monotonic() - record.info.get(_IDLE_SINCE, math.inf) > ping_after or dbapi.closed or dbapi.broken:
            try:
                dbapi.execute(";")
            except psycopg.Error:
                raise DisconnectionError() from None  # the pool opens a fresh connection instead

    event.listen(engine, "do_execute", _do_execute)
    event.listen(engine, "do_execute_no_params", _do_execute_no_params)
    event.listen(engine, "do_executemany", _do_executemany)
    for name in ("commit", "rollback"):
        event.listen(engine, name, _transaction_ended)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: reloading them would run outside the tenant context.
    return sessionmaker(engine, expire_on_commit=False)
