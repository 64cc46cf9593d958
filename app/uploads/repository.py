"""File queries; the tenant and workspace come from the transaction's context (RLS)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, undefer

from app.uploads.models import StoredFile


def get(session: Session, file_id: uuid.UUID) -> StoredFile | None:
    """The metadata only: the bytes stay in the database."""
    return session.scalars(select(StoredFile).where(StoredFile.id == file_id)).first()


def get_with_content(session: Session, file_id: uuid.UUID) -> StoredFile | None:
    """Metadata and bytes in one round trip: the download."""
    return session.scalars(select(StoredFile).options(undefer(StoredFile.content)).where(StoredFile.id == file_id)).first()


def latest(
    session: Session, *, workspace_id: uuid.UUID, limit: int, purpose: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[StoredFile]:
    """Newest first, keyset-paginated on (created_at, id); served by the tenant-leading index."""
    query = select(StoredFile).where(StoredFile.workspace_id == workspace_id)
    if purpose is not None:
        query = query.where(StoredFile.purpose == purpose)
    if before is not None:
        query = query.where(tuple_(StoredFile.created_at, StoredFile.id) < tuple_(*before))
    return session.scalars(query.order_by(StoredFile.created_at.desc(), StoredFile.id.desc()).limit(limit)).all()
