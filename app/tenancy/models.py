"""Tenants, their users, memberships, workspaces and invitations.

Every tenant-owned table leads its primary key, unique constraints and foreign keys with
`tenant_id`, so no row can point at another tenant's row (see DESIGN.md, data rules).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    SmallInteger,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, created_at, tenant_fk_column, uuid_pk


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = created_at()


class User(Base):
    """A person as known inside one tenant; identity is the IdP's issuer + subject."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "issuer", "subject"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = uuid_pk()
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = created_at()


class TenantMembership(Base):
    """A user's platform role in the tenant; removing it keeps the user row for the audit trail."""

    __tablename__ = "tenant_memberships"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = created_at()


class Workspace(Base):
    """One client brand inside a tenant."""

    __tablename__ = "workspaces"
    __table_args__ = (UniqueConstraint("tenant_id", "slug"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class WorkspaceMembership(Base):
    __tablename__ = "workspace_memberships"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_fk_column()
    workspace_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = created_at()


class Invitation(Base):
    """A one-time, expiring invitation; only the SHA-256 of its secret is stored."""

    __tablename__ = "invitations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "token_hash"),
        ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["tenant_id", "invited_by"], ["users.tenant_id", "users.id"]),
        ForeignKeyConstraint(["tenant_id", "accepted_by"], ["users.tenant_id", "users.id"]),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = uuid_pk()
    token_hash: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320))
    tenant_role: Mapped[str] = mapped_column(String(32))
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    workspace_role: Mapped[str | None] = mapped_column(String(32))
    invited_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    accepted_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = created_at()


class VendorAccessGrant(Base):
    """A named vendor person's request for time-boxed access to this tenant, and the customer's decision.

    Requested by vendor staff (issuer + subject), approved or denied by one of the tenant's
    customer_admins; an approved grant runs `hours` from its approval and can be revoked at any
    time. The policies themselves admit vendor reads only through such a row (migration 0007).
    Rows from before 0007 (granted_by set, no requester) name nobody and admit nobody.
    """

    __tablename__ = "vendor_access_grants"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "granted_by"], ["users.tenant_id", "users.id"]),
        ForeignKeyConstraint(["tenant_id", "decided_by"], ["users.tenant_id", "users.id"]),
        ForeignKeyConstraint(["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"], ondelete="CASCADE"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = uuid_pk()
    requester_issuer: Mapped[str | None] = mapped_column(String(512))
    requester_subject: Mapped[str | None] = mapped_column(String(255))
    scope: Mapped[str | None] = mapped_column(String(16))
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    hours: Mapped[int | None] = mapped_column(SmallInteger)
    reason: Mapped[str] = mapped_column(String(500))
    decision: Mapped[str | None] = mapped_column(String(16))
    decided_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expiry_recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    granted_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))  # before 0007 only
    created_at: Mapped[datetime] = created_at()

    @property
    def status(self) -> str:
        """requested, approved (active now), denied, revoked, expired, or lapsed (made before 0007)."""
        if self.requester_issuer is None:
            return "lapsed"
        if self.revoked_at is not None:
            return "revoked"
        if self.decision is None:
            return "requested"
        if self.decision == "denied":
            return "denied"
        assert self.expires_at is not None
        return "approved" if self.expires_at > datetime.now(UTC) else "expired"
