"""Alert state shared across replicas: fixed-window counters and the last firing per rule and key.

Platform-level operational state, not tenant data: neither table has a `tenant_id` column (a
per-tenant rule puts the tenant id inside its key), so neither needs row level security. The app
role counts (INSERT/UPDATE), claims firings (INSERT/UPDATE ... WHERE cooldown passed) and prunes
old counter windows (DELETE on counters only); no TRUNCATE or REFERENCES.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 12:30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations.helpers import app_role

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = app_role()
    op.create_table(
        "alert_counters",
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("rule", "key", "window_start", name="pk_alert_counters"),
    )
    # Serves the pruning of old windows (`window_start < now() - retention`).
    op.create_index("ix_alert_counters_window_start", "alert_counters", ["window_start"])
    op.create_table(
        "alert_firings",
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        # '-infinity' after a firing that could not be delivered: the next observation may fire again.
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rule", "key", name="pk_alert_firings"),
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON alert_counters TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON alert_firings TO "{role}"')


def downgrade() -> None:
    op.drop_table("alert_firings")
    op.drop_index("ix_alert_counters_window_start", "alert_counters")
    op.drop_table("alert_counters")
