"""The append-only audit table and its per-tenant chain heads.

The app role may INSERT and SELECT audit events, nothing else. Each tenant's events form a hash
chain: `seq` counts 1, 2, 3… without gaps, `prev_hash` is the previous event's `hash`, and `hash`
is the SHA-256 of the event's canonical encoding (`app.audit.chain`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String
from sqlalchemy.dialects.postgresql import INET, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, tenant_fk_column, uuid_pk


class AuditEvent(Base):
    __tablename__ = "audit_events"
    # No foreign keys on purpose: the record outlives what it describes. PII goes in by id only.
    __table_args__ = (
        Index("ix_audit_events_tenant_id_occurred_at", "tenant_id", "occurred_at"),
        Index("uq_audit_events_tenant_id_seq", "tenant_id", "seq", unique=True),
        Index("ix_audit_events_tenant_id_correlation_id", "tenant_id", "correlation_id"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    id: Mapped[uuid.UUID] = uuid_pk()
    seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    category: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    actor_type: Mapped[str | None] = mapped_column(String(16))
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    actor_issuer: Mapped[str | None] = mapped_column(String(512))
    actor_subject: Mapped[str | None] = mapped_column(String(255))
    actor_role: Mapped[str | None] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(128))
    client_ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(String(512))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[dict] = mapped_column(JSONB, server_default="{}", nullable=False)


class AuditChainHead(Base):
    """The last link of one chain; writers lock this row, serialising only that tenant's writes."""

    __tablename__ = "audit_chain_heads"

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
