"""Tenants' data keys, stored only wrapped by the key-encryption key (KEK)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, DateTime, ForeignKeyConstraint, Integer, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at, tenant_fk_column


class KeyState(StrEnum):
    # Encrypts (the highest active version) and decrypts. Two are active while `reencrypt` runs.
    active = "active"
    # No row was left on it when re-encryption finished; still decrypts (a restored backup, a
    # writer that raced the rotation), never encrypts.
    retired = "retired"
    # Crypto-shredded: the wrapped bytes are gone, whatever it encrypted is unrecoverable.
    destroyed = "destroyed"


class TenantDataKey(Base):
    __tablename__ = "tenant_data_keys"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        CheckConstraint("state in ('active', 'retired', 'destroyed')", name="state"),
        CheckConstraint("(state = 'destroyed') = (wrapped is null)", name="wrapped_unless_destroyed"),
        CheckConstraint("version > 0", name="version_positive"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kek_version: Mapped[str] = mapped_column(String(200))
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
