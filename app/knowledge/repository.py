"""Document queries; the tenant and workspace come from the transaction's context (RLS)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.knowledge.models import Document


def get(session: Session, document_id: uuid.UUID) -> Document | None:
    return session.scalars(select(Document).where(Document.id == document_id)).first()


def latest(session: Session, *, workspace_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None = None) -> Sequence[Document]:
    """Newest first, keyset-paginated on (created_at, id); served by the tenant-leading index."""
    query = select(Document).where(Document.workspace_id == workspace_id)
    if before is not None:
        query = query.where(tuple_(Document.created_at, Document.id) < tuple_(*before))
    return session.scalars(query.order_by(Document.created_at.desc(), Document.id.desc()).limit(limit)).all()
