"""Tamper-evident audit: per-tenant hash chain columns, chain heads, trace ids, vendor access grants.

Expand only: new nullable columns (a catalog change, no table rewrite) and new tables. Every row
written from this revision on carries seq/prev_hash/hash; `palisade audit verify` reports any row
outside the chain.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 12:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from migrations.helpers import app_role, isolate

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = app_role()
    op.add_column("audit_events", sa.Column("seq", sa.BigInteger()))
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(64)))
    op.add_column("audit_events", sa.Column("hash", sa.String(64)))
    op.add_column("audit_events", sa.Column("trace_id", sa.String(32)))
    op.add_column("audit_events", sa.Column("actor_type", sa.String(16)))
    # The table is new in this release; on a large live table this would be built CONCURRENTLY.
    op.create_index("uq_audit_events_tenant_id_seq", "audit_events", ["tenant_id", "seq"], unique=True)
    op.create_index("ix_audit_events_tenant_id_correlation_id", "audit_events", ["tenant_id", "correlation_id"])

    # One row per chain: the last sequence number and hash. Writers lock it, which serialises
    # a tenant's audit writes (and only that tenant's) until their transaction ends.
    op.create_table(
        "audit_chain_heads",
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_audit_chain_heads"),
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO "{role}"')
    isolate("audit_chain_heads")

    # A tenant's time-boxed consent for vendor staff to read its audit trail.
    op.create_table(
        "vendor_access_grants",
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("granted_by", UUID(as_uuid=True), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_vendor_access_grants"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_vendor_access_grants_tenant_id_tenants", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "granted_by"], ["users.tenant_id", "users.id"], name="fk_vendor_access_grants_tenant_id_granted_by_users"
        ),
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON vendor_access_grants TO "{role}"')
    isolate("vendor_access_grants")


def downgrade() -> None:
    op.drop_table("vendor_access_grants")
    op.drop_table("audit_chain_heads")
    op.drop_index("ix_audit_events_tenant_id_correlation_id", "audit_events")
    op.drop_index("uq_audit_events_tenant_id_seq", "audit_events")
    for column in ("actor_type", "trace_id", "hash", "prev_hash", "seq"):
        op.drop_column("audit_events", column)
