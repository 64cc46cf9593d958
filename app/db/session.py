"""Engine and sessions. Every transaction carries its tenant context as transaction-local settings.

The context is set with `set_config(name, value, true)` (never a session-level SET), so a pooled
connection — ours or PgBouncer's in transaction mode — cannot carry one request's tenant into the
next. All settings go in one statement: each extra round trip costs more than the policies do.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

_SET_CONTEXT = text(
    "select set_config('app.tenant_id', :tenant_id, true),"
    " set_config('app.workspace_id', :workspace_id, true),"
    " set_config('app.user_id', :user_id, true),"
    " set_config('app.platform_role', :platform_role, true)"
)


@dataclass(frozen=True)
class DbContext:
    """What the row-level security policies read for the current transaction."""

    tenant_id: uuid.UUID | None = None
    workspace_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    platform_role: str | None = None


def apply_context(session: Session, context: DbContext) -> None:
    """Set (or replace) the tenant context of the session's current transaction."""
    session.execute(
        _SET_CONTEXT,
        {
            "tenant_id": str(context.tenant_id or ""),
            "workspace_id": str(context.workspace_id or ""),
            "user_id": str(context.user_id or ""),
            "platform_role": context.platform_role or "",
        },
    )
    session.info["db_context"] = context


def current_context(session: Session) -> DbContext:
    return session.info.get("db_context", DbContext())


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: reloading them would run outside the tenant context.
    return sessionmaker(engine, expire_on_commit=False)
