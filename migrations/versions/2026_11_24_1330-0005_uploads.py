"""Uploaded files: brand assets and knowledge files, validated, stored as bytes under RLS.

Workspace-owned like documents: tenant_id leads the key, the foreign keys and the index; the
PERMISSIVE tenant policy and the RESTRICTIVE workspace policy come from `isolate`. Files are
immutable once stored, so the app role may read, add and delete them, never update them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 13:30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from migrations.helpers import app_role, isolate

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = app_role()
    op.create_table(
        "uploaded_files",
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("workspace_id", UUID(as_uuid=True), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by", UUID(as_uuid=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_uploaded_files"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"],
            name="fk_uploaded_files_tenant_id_workspace_id_workspaces", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "uploaded_by"], ["users.tenant_id", "users.id"],
            name="fk_uploaded_files_tenant_id_uploaded_by_users",
        ),
        sa.CheckConstraint("purpose in ('brand_asset', 'knowledge')", name="ck_uploaded_files_purpose"),
        sa.CheckConstraint("size = octet_length(content)", name="ck_uploaded_files_size"),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="ck_uploaded_files_sha256"),
    )
    op.create_index(
        "ix_uploaded_files_tenant_id_workspace_id_created_at_id",
        "uploaded_files",
        ["tenant_id", "workspace_id", "created_at", "id"],
    )
    op.execute(f'GRANT SELECT, INSERT, DELETE ON uploaded_files TO "{role}"')
    isolate("uploaded_files", workspace=True)


def downgrade() -> None:
    op.drop_table("uploaded_files")
