"""Idempotency keys: a retried create returns the original response and creates nothing.

`idempotency_keys` holds, per tenant, one row per key a caller sent with a creating POST
(app/idempotency.py): a keyed digest of the key (never the key), the caller's issuer and subject,
a keyed fingerprint of the request, and, once the response is known, the response encrypted under
a key derived from the Idempotency-Key itself (so a reader of the table without the key learns
neither the response nor the request). The row is inserted in the same transaction as the create,
so the two commit or roll back together. Rows expire (`expires_at`) and are pruned per tenant.

Policies: the tenant policy, and a RESTRICTIVE `tenant_access` as on the other tenant tables: a
user in the context must be a member of the tenant; vendor staff see and write only the rows they
made themselves (their issuer and subject in the context), never a customer's; a context with
neither (the platform's own keys, the response written after commit) passes. No foreign key to
`tenants`: vendor staff's tenant creations are keyed under the platform tenant, which has no row
there (as on the audit trail). New, empty table: no lock on anything existing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from migrations.helpers import CURRENT_USER, PLATFORM_ROLE, VENDOR_ISSUER, VENDOR_SUBJECT, app_role, call, isolate, restrict

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    role = app_role()
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("key_digest", sa.String(64), nullable=False),
        sa.Column("caller_issuer", sa.String(512), nullable=False),
        sa.Column("caller_subject", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key_digest", name="pk_idempotency_keys"),
        sa.CheckConstraint("expires_at > created_at", name="ck_idempotency_keys_expires_after_created"),
    )
    op.create_index("ix_idempotency_keys_expires", "idempotency_keys", ["tenant_id", "expires_at"])
    isolate("idempotency_keys")
    own = f"(caller_issuer = {VENDOR_ISSUER} AND caller_subject = {VENDOR_SUBJECT})"
    access = (f"CASE WHEN {CURRENT_USER} IS NOT NULL THEN {call('rls_tenant_member')}"
              f" WHEN {PLATFORM_ROLE} = 'internal_admin' THEN {own} ELSE true END")
    restrict("idempotency_keys", "tenant_access", using=access, with_check=access)
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO "{role}"')


def downgrade() -> None:
    op.drop_table("idempotency_keys")
