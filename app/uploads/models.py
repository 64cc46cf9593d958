"""Uploaded files: workspace-owned rows holding validated bytes (RLS by tenant and workspace)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKeyConstraint, Index, LargeBinary, String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at, tenant_fk_column, uuid_pk


class StoredFile(Base):
    __tablename__ = "uploaded_files"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["tenant_id", "uploaded_by"], ["users.tenant_id", "users.id"]),
        CheckConstraint("purpose in ('brand_asset', 'knowledge')", name="purpose"),
        # The metadata can never disagree with the bytes it describes.
        CheckConstraint("size = octet_length(content)", name="size"),
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256"),
        # Serves "latest files of a workspace" with keyset pagination.
        Index("ix_uploaded_files_tenant_id_workspace_id_created_at_id", "tenant_id", "workspace_id", "created_at", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    id: Mapped[uuid.UUID] = uuid_pk()
    workspace_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    # Detected from the bytes, never the declared type.
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Loaded only by the download; touching it on a listed row raises instead of querying.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True, deferred_raiseload=True)
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = created_at()
