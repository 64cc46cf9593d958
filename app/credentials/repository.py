"""Credential queries; the tenant and workspace come from the transaction's context (RLS)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.credentials.models import ProviderCredential


def get(session: Session, credential_id: uuid.UUID, *, for_update: bool = False) -> ProviderCredential | None:
    query = select(ProviderCredential).where(ProviderCredential.id == credential_id)
    return session.scalars(query.with_for_update() if for_update else query).first()


def in_workspace(session: Session, *, workspace_id: uuid.UUID) -> Sequence[ProviderCredential]:
    """Oldest first; served by the tenant-leading (workspace, created_at, id) index."""
    return session.scalars(
        select(ProviderCredential)
        .where(ProviderCredential.workspace_id == workspace_id)
        .order_by(ProviderCredential.created_at, ProviderCredential.id)
    ).all()


def count_in_workspace(session: Session, *, workspace_id: uuid.UUID) -> int:
    query = select(func.count()).select_from(ProviderCredential).where(ProviderCredential.workspace_id == workspace_id)
    return session.scalar(query) or 0


def label_taken(session: Session, *, workspace_id: uuid.UUID, label: str) -> bool:
    query = select(ProviderCredential.id).where(
        ProviderCredential.workspace_id == workspace_id, ProviderCredential.label == label
    )
    return session.scalar(query.limit(1)) is not None
