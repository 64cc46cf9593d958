"""Rate-limit windows shared by every replica.

Platform-level operational state: the bucket key names who is limited (a pseudonymous digest of a
user or a client address) and which route class; no tenant_id column, nothing tenant-readable.

One row per bucket and fixed window; `app.edge.ratelimit` upserts it once per request and reads
the previous window beside it (a sliding-window estimate). The rows are short-lived counters:
- UNLOGGED: no WAL for a write that happens on every request. After a crash (or an HA failover)
  the table comes back empty, which only resets the windows; it is never read on a replica.
- fillfactor 50: the count update touches no indexed column, so it stays a HOT update on the
  same page instead of a new index entry per request.
- The window_start index serves the opportunistic pruning of old windows.

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
        prefixes=["UNLOGGED"],
        postgresql_with={"fillfactor": 50},
    )
    op.create_index("ix_rate_limit_windows_window_start", "rate_limit_windows", ["window_start"])
    # No TRUNCATE or REFERENCES (palisade doctor refuses them); DELETE is for pruning old windows.
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limit_windows TO "{app_role()}"')


def downgrade() -> None:
    op.drop_table("rate_limit_windows")
