"""Rate-limit windows shared by every replica.

Platform-level operational state: the bucket key names who is limited (a user, a client address,
a tenant) and which route class; no tenant_id column, nothing tenant-readable.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 13:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.helpers import app_role

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_windows",
        sa.Column("bucket", sa.String(300), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "window_start", name="pk_rate_limit_windows"),
    )
    op.create_index("ix_rate_limit_windows_window_start", "rate_limit_windows", ["window_start"])
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limit_windows TO "{app_role()}"')


def downgrade() -> None:
    op.drop_table("rate_limit_windows")
