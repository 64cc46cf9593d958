"""Every session on the app's database gets a statement, lock and idle-in-transaction timeout.

Set on the database (`ALTER DATABASE ... SET`), which its owner, the admin role, may do; a role
setting would need CREATEROLE, which the admin role does not have on-prem. They are defaults the
app role starts every session with; `palisade doctor` checks the app role's effective values, and
`palisade migrate` lifts them for its own session. The values: a request's statement never runs
longer than 30 s, never waits longer than 5 s for a lock (another tenant's long transaction cannot
queue this one's behind it for long), and a transaction left idle for 60 s is ended, which returns
its pooled connection. Catalog-only change; no table is touched.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 22:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TIMEOUTS = {"statement_timeout": "30s", "lock_timeout": "5s", "idle_in_transaction_session_timeout": "60s"}


def _alter_database(clause: str) -> None:
    op.execute(f"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {clause}', current_database()); END $$")


def upgrade() -> None:
    for name, value in TIMEOUTS.items():
        _alter_database(f"SET {name} = ''{value}''")


def downgrade() -> None:
    for name in TIMEOUTS:
        _alter_database(f"RESET {name}")
