"""Document queries; the tenant and workspace come from the transaction's context (RLS)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from app.knowledge.models import Document


def get(session: Session, document_id: uuid.UUID) -> Document | None:
    return session.scalars(select(Document).where(Document.id == document_id)).first()


def latest_query(*, workspace_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None = None) -> Select[tuple[Document]]:
    """Newest first, keyset-paginated on (created_at, id); served by the tenant-leading index."""
    query = select(Document).where(Document.workspace_id == workspace_id)
    if before is not None:
        query = query.where(tuple_(Document.created_at, Document.id) < tuple_(*before))
    return query.order_by(Document.created_at.desc(), Document.id.desc()).limit(limit)


def latest(session: Session, *, workspace_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None = None) -> Sequence[Document]:
    return session.scalars(latest_query(workspace_id=workspace_id, limit=limit, before=before)).all()


def count_query() -> Select[tuple[int]]:
    return select(func.count()).select_from(Document)


def count(session: Session) -> int:
    """Documents the transaction's context can see: those of its workspace (RLS)."""
    return session.scalar(count_query()) or 0
