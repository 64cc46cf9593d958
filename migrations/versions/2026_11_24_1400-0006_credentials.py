"""Envelope encryption: tenants' wrapped data keys, and workspaces' provider credentials.

`tenant_data_keys` is tenant-owned (tenant policy); `provider_credentials` is workspace-owned
(tenant policy + RESTRICTIVE workspace policy). The app role gets no DELETE on data keys:
crypto-shredding overwrites a key row (state 'destroyed', wrapped bytes NULL) and keeps the
tombstone, so a version number is never reused and every ciphertext still names a key row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 14:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from migrations.helpers import app_role, isolate

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _uuid() -> UUID:
    return UUID(as_uuid=True)


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    role = app_role()
    op.create_table(
        "tenant_data_keys",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_version", sa.String(200), nullable=False),
        sa.Column("wrapped", sa.LargeBinary()),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("tenant_id", "version", name="pk_tenant_data_keys"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_tenant_data_keys_tenant_id_tenants", ondelete="CASCADE"),
        sa.CheckConstraint("state in ('active', 'retired', 'destroyed')", name="ck_tenant_data_keys_state"),
        sa.CheckConstraint("(state = 'destroyed') = (wrapped is null)", name="ck_tenant_data_keys_wrapped_unless_destroyed"),
        sa.CheckConstraint("version > 0", name="ck_tenant_data_keys_version_positive"),
    )
    op.create_table(
        "provider_credentials",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("workspace_id", _uuid(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("dek_version", sa.Integer(), nullable=False),
        sa.Column("last4", sa.String(4)),
        sa.Column("fingerprint", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.Column("created_by", _uuid()),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_provider_credentials"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"],
            name="fk_provider_credentials_tenant_id_workspace_id_workspaces", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "created_by"], ["users.tenant_id", "users.id"],
            name="fk_provider_credentials_tenant_id_created_by_users",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "dek_version"], ["tenant_data_keys.tenant_id", "tenant_data_keys.version"],
            name="fk_provider_credentials_tenant_id_dek_version_tenant_data_keys",
        ),
        sa.UniqueConstraint("tenant_id", "workspace_id", "label", name="uq_provider_credentials_tenant_id_workspace_id_label"),
        sa.CheckConstraint(
            "provider in ('openai', 'anthropic', 'azure_openai', 'google', 'other')", name="ck_provider_credentials_provider"
        ),
        sa.CheckConstraint("kind in ('api_key', 'oauth_token')", name="ck_provider_credentials_kind"),
    )
    # New, empty tables: plain index builds are fine here.
    op.create_index(
        "ix_provider_credentials_tenant_id_workspace_id_created_at_id",
        "provider_credentials",
        ["tenant_id", "workspace_id", "created_at", "id"],
    )
    # Serves the FK check when a key row changes, and re-encryption's "rows still on version n".
    op.create_index("ix_provider_credentials_tenant_id_dek_version", "provider_credentials", ["tenant_id", "dek_version"])

    op.execute(f'GRANT SELECT, INSERT, UPDATE ON tenant_data_keys TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON provider_credentials TO "{role}"')
    isolate("tenant_data_keys")
    isolate("provider_credentials", workspace=True)


def downgrade() -> None:
    op.drop_table("provider_credentials")
    op.drop_table("tenant_data_keys")
