"""Reading the audit trail (under the transaction's tenant context, like every query)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from app.audit.models import AuditChainHead, AuditEvent


@dataclass(frozen=True)
class EventFilter:
    category: str | None = None
    actor: str | None = None  # a user id or an IdP subject
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None


def _filtered(tenant_id: uuid.UUID, f: EventFilter) -> Select[tuple[AuditEvent]]:
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if f.category:
        query = query.where(AuditEvent.category == f.category)
    if f.actor:
        actor_match = [AuditEvent.actor_subject == f.actor]
        try:
            actor_match.append(AuditEvent.actor_user_id == uuid.UUID(f.actor))
        except ValueError:
            pass
        query = query.where(or_(*actor_match))
    if f.target_id:
        query = query.where(AuditEvent.target_id == f.target_id)
    if f.since:
        query = query.where(AuditEvent.occurred_at >= f.since)
    if f.until:
        query = query.where(AuditEvent.occurred_at < f.until)
    if f.correlation_id:
        query = query.where(AuditEvent.correlation_id == f.correlation_id)
    return query


def page(session: Session, tenant_id: uuid.UUID, f: EventFilter, *, limit: int, before_seq: int | None) -> Sequence[AuditEvent]:
    """Newest first, keyset-paginated on the chain's sequence number."""
    query = _filtered(tenant_id, f)
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    return session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)).all()


def stream(session: Session, tenant_id: uuid.UUID, f: EventFilter | None = None, *, batch: int = 500) -> Iterator[AuditEvent]:
    """Oldest first through a server-side cursor: memory stays flat however long the trail."""
    query = _filtered(tenant_id, f or EventFilter()).order_by(AuditEvent.seq)
    yield from session.scalars(query.execution_options(yield_per=batch))


def head(session: Session, tenant_id: uuid.UUID) -> tuple[int, str] | None:
    row = session.get(AuditChainHead, tenant_id)
    return (row.seq, row.hash) if row else None


def chained_tenants(session: Session) -> Sequence[uuid.UUID]:
    """Tenants whose chain head is visible in the current context."""
    return session.scalars(select(AuditChainHead.tenant_id)).all()
