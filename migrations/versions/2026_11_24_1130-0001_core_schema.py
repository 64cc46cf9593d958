"""Core schema: tenants, users, memberships, workspaces, invitations, documents, audit events,
the app role with least grants, and row-level security on every tenant table.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 11:30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import INET, JSONB, UUID

from migrations.helpers import CURRENT_TENANT, app_role, isolate

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _uuid() -> UUID:
    return UUID(as_uuid=True)


def _ts(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False, **kw)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE")


def upgrade() -> None:
    role = app_role()
    # Created without a password: the installer sets it (or uses certificate/Entra auth).
    op.execute(
        f"""
        DO $$
        BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
            CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
          END IF;
          EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), '{role}');
        END
        $$
        """
    )
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')

    op.create_table(
        "tenants",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slug", sa.String(63), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("slug", name="uq_tenants_slug"),
    )
    op.create_table(
        "users",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("display_name", sa.String(200)),
        sa.Column("email", sa.String(320)),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_users"),
        sa.UniqueConstraint("tenant_id", "issuer", "subject", name="uq_users_tenant_id_issuer_subject"),
        _tenant_fk("users"),
    )
    op.create_table(
        "tenant_memberships",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("user_id", _uuid(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name="pk_tenant_memberships"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "user_id"], ["users.tenant_id", "users.id"],
            name="fk_tenant_memberships_tenant_id_user_id_users", ondelete="CASCADE",
        ),
        sa.CheckConstraint("role in ('customer_admin', 'member')", name="ck_tenant_memberships_role"),
    )
    op.create_table(
        "workspaces",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slug", sa.String(63), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_workspaces"),
        sa.UniqueConstraint("tenant_id", "slug", name="uq_workspaces_tenant_id_slug"),
        _tenant_fk("workspaces"),
    )
    op.create_table(
        "workspace_memberships",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("workspace_id", _uuid(), nullable=False),
        sa.Column("user_id", _uuid(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("tenant_id", "workspace_id", "user_id", name="pk_workspace_memberships"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"],
            name="fk_workspace_memberships_tenant_id_workspace_id_workspaces", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "user_id"], ["users.tenant_id", "users.id"],
            name="fk_workspace_memberships_tenant_id_user_id_users", ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "role in ('owner', 'admin', 'multi_account_manager', 'member', 'viewer')",
            name="ck_workspace_memberships_role",
        ),
    )
    # Serves "which workspaces is this user in".
    op.create_index("ix_workspace_memberships_tenant_id_user_id", "workspace_memberships", ["tenant_id", "user_id"])
    op.create_table(
        "invitations",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("tenant_role", sa.String(32), nullable=False),
        sa.Column("workspace_id", _uuid()),
        sa.Column("workspace_role", sa.String(32)),
        sa.Column("invited_by", _uuid()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("accepted_by", _uuid()),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_invitations"),
        sa.UniqueConstraint("tenant_id", "token_hash", name="uq_invitations_tenant_id_token_hash"),
        _tenant_fk("invitations"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"],
            name="fk_invitations_tenant_id_workspace_id_workspaces", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "invited_by"], ["users.tenant_id", "users.id"],
            name="fk_invitations_tenant_id_invited_by_users",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "accepted_by"], ["users.tenant_id", "users.id"],
            name="fk_invitations_tenant_id_accepted_by_users",
        ),
        sa.CheckConstraint("tenant_role in ('customer_admin', 'member')", name="ck_invitations_tenant_role"),
        sa.CheckConstraint(
            "(workspace_id is null) = (workspace_role is null)", name="ck_invitations_workspace_role_with_workspace"
        ),
    )
    op.create_table(
        "documents",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("workspace_id", _uuid(), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("author_id", _uuid()),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_documents"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "workspace_id"], ["workspaces.tenant_id", "workspaces.id"],
            name="fk_documents_tenant_id_workspace_id_workspaces", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "author_id"], ["users.tenant_id", "users.id"],
            name="fk_documents_tenant_id_author_id_users",
        ),
    )
    op.create_index(
        "ix_documents_tenant_id_workspace_id_created_at_id",
        "documents",
        ["tenant_id", "workspace_id", "created_at", "id"],
    )
    op.create_table(
        "audit_events",
        sa.Column("tenant_id", _uuid(), nullable=False),
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp(), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("workspace_id", _uuid()),
        sa.Column("actor_user_id", _uuid()),
        sa.Column("actor_issuer", sa.String(512)),
        sa.Column("actor_subject", sa.String(255)),
        sa.Column("actor_role", sa.String(64)),
        sa.Column("target_type", sa.String(64)),
        sa.Column("target_id", sa.String(128)),
        sa.Column("client_ip", INET()),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("correlation_id", sa.String(128)),
        sa.Column("details", JSONB(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_tenant_id_occurred_at", "audit_events", ["tenant_id", "occurred_at"])

    grants = {
        "tenants": "SELECT, INSERT, UPDATE",
        "users": "SELECT, INSERT, UPDATE",
        "tenant_memberships": "SELECT, INSERT, UPDATE, DELETE",
        "workspaces": "SELECT, INSERT, UPDATE, DELETE",
        "workspace_memberships": "SELECT, INSERT, UPDATE, DELETE",
        "invitations": "SELECT, INSERT, UPDATE, DELETE",
        "documents": "SELECT, INSERT, UPDATE, DELETE",
        # Append-only: no UPDATE, DELETE or TRUNCATE for the app.
        "audit_events": "SELECT, INSERT",
    }
    for table, privileges in grants.items():
        op.execute(f'GRANT {privileges} ON {table} TO "{role}"')
    # `palisade doctor` (as the app role) checks the schema is at the expected revision.
    op.execute(f'GRANT SELECT ON alembic_version TO "{role}"')

    # tenants has no tenant_id: a row is its own tenant. Vendor staff (internal_admin) read
    # tenant metadata; they never get a tenant context, so content tables stay empty to them.
    op.execute("ALTER TABLE tenants ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE tenants FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON tenants AS PERMISSIVE FOR ALL "
        f"USING (id = {CURRENT_TENANT} "
        f"OR (select current_setting('app.platform_role', true)) = 'internal_admin') "
        f"WITH CHECK (id = {CURRENT_TENANT})"
    )
    for table in ("users", "tenant_memberships", "workspaces", "workspace_memberships", "invitations", "audit_events"):
        isolate(table)
    isolate("documents", workspace=True)


def downgrade() -> None:
    for table in (
        "audit_events", "documents", "invitations", "workspace_memberships",
        "workspaces", "tenant_memberships", "users", "tenants",
    ):
        op.drop_table(table)
