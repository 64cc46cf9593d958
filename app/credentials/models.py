"""Provider credentials: workspace-owned rows whose secret exists only as an envelope ciphertext."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.crypto.datakeys import SealedColumn, register_sealed
from app.db.base import Base, created_at, tenant_fk_column, uuid_pk


class Provider(StrEnum):
    openai = "openai"
    anthropic = "anthropic"
    azure_openai = "azure_openai"
    google = "google"
    other = "other"


class CredentialKind(StrEnum):
    api_key = "api_key"
    oauth_token = "oauth_token"


class ProviderCredential(Base):
    __tablename__ = "provider_credentials"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"], ondelete="CASCADE"),
        ForeignKeyConstraint(["tenant_id", "created_by"], ["users.tenant_id", "users.id"]),
        # The key a ciphertext names must exist; it is never deleted, only destroyed (wrapped bytes gone).
        ForeignKeyConstraint(["tenant_id", "dek_version"], ["tenant_data_keys.tenant_id", "tenant_data_keys.version"]),
        UniqueConstraint("tenant_id", "workspace_id", "label"),
        Index("ix_provider_credentials_tenant_id_workspace_id_created_at_id", "tenant_id", "workspace_id", "created_at", "id"),
        # Re-encryption's "rows still on version n", and the key-row FK check.
        Index("ix_provider_credentials_tenant_id_dek_version", "tenant_id", "dek_version"),
        CheckConstraint("provider in ('openai', 'anthropic', 'azure_openai', 'google', 'other')", name="provider"),
        CheckConstraint("kind in ('api_key', 'oauth_token')", name="kind"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    id: Mapped[uuid.UUID] = uuid_pk()
    workspace_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    provider: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    dek_version: Mapped[int] = mapped_column(Integer)
    # Shown to people so they can tell keys apart; None for secrets too short to spare four characters.
    last4: Mapped[str | None] = mapped_column(String(4))
    fingerprint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


SECRET = register_sealed(SealedColumn(ProviderCredential.__table__, column="ciphertext", fingerprint_column="fingerprint"))
