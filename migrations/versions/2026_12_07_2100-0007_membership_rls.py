"""Membership and vendor grants enforced by the policies themselves.

Until now RLS kept tenants apart and pinned content to the workspace in the context; whether the
user in the context belongs there was application code's word. From here, RESTRICTIVE policies
read the membership tables (and the vendor grants) themselves, through four small PL/pgSQL
functions (`rls_*`, SECURITY INVOKER, callable by the app role only; see migrations/helpers.py
for why functions):

- workspace content (documents, uploaded_files): a row is visible and writable only when
  `app.user_id` holds a membership of the context's workspace (the workspace policy already pins
  rows to that workspace), or, for vendor staff, read-only under an approved grant of scope
  `content` for that workspace. Anything else, including no user at all, sees nothing.
- provider_credentials: a member of the workspace or a customer_admin of the tenant (they manage
  credentials without being members), or `palisade keys rotate` (platform role `key_custodian`,
  set by that command only) re-encrypting rows. Vendor staff never.
- tenant-level tables: when the context names a user, that user must be a member of the tenant.
  Vendor staff (`internal_admin`) read users, workspaces and memberships only under an approved
  grant of scope `metadata`, the audit trail only under scope `audit` (plus the events they caused
  themselves), and never invitations or data keys. A context with neither a user nor a platform
  role (sign-in resolution, invitation acceptance, refusal records, operator commands) passes.
- tenant_memberships and vendor_access_grants are what the checks read, so they carry no
  membership check of their own (a policy reading its own table would recurse).

vendor_access_grants becomes a request/approval record bound to a named vendor person (expand
only: nullable columns, NOT NULL dropped from the two columns a request has no value for yet; a
CHECK added NOT VALID and validated without blocking writes). Grants made before this revision
name no vendor person, so no policy ever matches them: they lapse.

Each CREATE POLICY takes a brief ACCESS EXCLUSIVE lock on its table (catalog only, no scan),
bounded by the migration's lock_timeout.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 21:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from migrations.helpers import (
    CURRENT_USER,
    PLATFORM_ROLE,
    PLATFORM_TENANT,
    RLS_FUNCTIONS,
    VENDOR_ISSUER,
    VENDOR_SUBJECT,
    app_role,
    call,
    create_rls_function,
    drop_rls_function,
    restrict,
)

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VENDOR = f"{PLATFORM_ROLE} = 'internal_admin'"
USER_SET = f"{CURRENT_USER} IS NOT NULL"
TENANT_MEMBER = call("rls_tenant_member")
TENANT_ADMIN = call("rls_tenant_admin")
WORKSPACE_MEMBER = call("rls_workspace_member")


def vendor_grant(scope: str, *, workspace: bool = False) -> str:
    return call("rls_vendor_grant", f"'{scope}'", "true" if workspace else "false")


def _case(member: str, vendor: str, otherwise: str) -> str:
    return f"CASE WHEN {USER_SET} THEN {member} WHEN {VENDOR} THEN {vendor} ELSE {otherwise} END"


def upgrade() -> None:
    role = app_role()
    # --- vendor access: a request by a named person, decided by a customer_admin --------------
    op.add_column("vendor_access_grants", sa.Column("requester_issuer", sa.String(512)))
    op.add_column("vendor_access_grants", sa.Column("requester_subject", sa.String(255)))
    op.add_column("vendor_access_grants", sa.Column("scope", sa.String(16)))
    op.add_column("vendor_access_grants", sa.Column("workspace_id", UUID(as_uuid=True)))
    op.add_column("vendor_access_grants", sa.Column("hours", sa.SmallInteger()))
    op.add_column("vendor_access_grants", sa.Column("decision", sa.String(16)))
    op.add_column("vendor_access_grants", sa.Column("decided_by", UUID(as_uuid=True)))
    op.add_column("vendor_access_grants", sa.Column("decided_at", sa.DateTime(timezone=True)))
    op.add_column("vendor_access_grants", sa.Column("expiry_recorded_at", sa.DateTime(timezone=True)))
    op.alter_column("vendor_access_grants", "granted_by", nullable=True)
    op.alter_column("vendor_access_grants", "expires_at", nullable=True)
    op.execute(
        "ALTER TABLE vendor_access_grants ADD CONSTRAINT ck_vendor_access_grants_request CHECK ("
        " requester_issuer IS NULL OR ("
        "  requester_subject IS NOT NULL AND hours BETWEEN 1 AND 8"
        "  AND scope IN ('metadata', 'audit', 'content') AND (scope = 'content') = (workspace_id IS NOT NULL)"
        "  AND (decision IS NULL OR decision IN ('approved', 'denied'))"
        "  AND (decision IS NULL) = (decided_at IS NULL)"
        "  AND (decision = 'approved') = (expires_at IS NOT NULL)"
        " )) NOT VALID"
    )
    op.execute("ALTER TABLE vendor_access_grants VALIDATE CONSTRAINT ck_vendor_access_grants_request")
    op.create_foreign_key(
        "fk_vendor_access_grants_tenant_id_decided_by_users", "vendor_access_grants", "users",
        ["tenant_id", "decided_by"], ["tenant_id", "id"],
    )
    op.create_foreign_key(
        "fk_vendor_access_grants_tenant_id_workspace_id_workspaces", "vendor_access_grants", "workspaces",
        ["tenant_id", "workspace_id"], ["tenant_id", "id"], ondelete="CASCADE",
    )
    op.create_index(
        "ix_vendor_access_grants_requester", "vendor_access_grants",
        ["tenant_id", "requester_issuer", "requester_subject", "scope"],
    )

    for name in RLS_FUNCTIONS:
        create_rls_function(name, role)

    # --- workspace content -----------------------------------------------------------------------
    for table in ("documents", "uploaded_files"):
        restrict(table, "workspace_access",
                 using=_case(WORKSPACE_MEMBER, vendor_grant("content", workspace=True), "false"),
                 with_check=f"CASE WHEN {USER_SET} THEN {WORKSPACE_MEMBER} ELSE false END")
        # Vendor reads are read-only: WITH CHECK stops UPDATE and INSERT, this stops DELETE.
        restrict(table, "vendor_read_only", using=f"{PLATFORM_ROLE} IS DISTINCT FROM 'internal_admin'", command="DELETE")
    credential = (f"CASE WHEN {USER_SET} THEN ({WORKSPACE_MEMBER} OR {TENANT_ADMIN})"
                  f" WHEN {PLATFORM_ROLE} = 'key_custodian' THEN true ELSE false END")
    restrict("provider_credentials", "workspace_access", using=credential, with_check=credential)

    # --- tenant-level tables ---------------------------------------------------------------------
    for table, vendor in (("users", vendor_grant("metadata")), ("workspaces", vendor_grant("metadata")),
                          ("workspace_memberships", vendor_grant("metadata")), ("invitations", "false"),
                          ("tenant_data_keys", "false")):
        restrict(table, "tenant_access", using=_case(TENANT_MEMBER, vendor, "true"),
                 with_check=_case(TENANT_MEMBER, "false", "true"))
    own_event = (f"(tenant_id = {PLATFORM_TENANT} OR (actor_issuer = {VENDOR_ISSUER} AND actor_subject = {VENDOR_SUBJECT}))")
    restrict("audit_events", "tenant_access", using=_case(TENANT_MEMBER, f"({own_event} OR {vendor_grant('audit')})", "true"),
             with_check=_case(TENANT_MEMBER, own_event, "true"))
    restrict("tenant_memberships", "vendor_access",
             using=f"CASE WHEN {VENDOR} THEN {vendor_grant('metadata')} ELSE true END",
             with_check=f"{PLATFORM_ROLE} IS DISTINCT FROM 'internal_admin'")
    requester = f"(requester_issuer = {VENDOR_ISSUER} AND requester_subject = {VENDOR_SUBJECT})"
    restrict("vendor_access_grants", "vendor_access",
             using=f"CASE WHEN {VENDOR} THEN {requester} ELSE true END",
             with_check=f"CASE WHEN {VENDOR} THEN ({requester} AND decision IS NULL) ELSE true END")


def downgrade() -> None:
    for table, name in (
        ("documents", "workspace_access"), ("documents", "vendor_read_only"),
        ("uploaded_files", "workspace_access"), ("uploaded_files", "vendor_read_only"),
        ("provider_credentials", "workspace_access"), ("users", "tenant_access"), ("workspaces", "tenant_access"),
        ("workspace_memberships", "tenant_access"), ("invitations", "tenant_access"), ("tenant_data_keys", "tenant_access"),
        ("audit_events", "tenant_access"), ("tenant_memberships", "vendor_access"), ("vendor_access_grants", "vendor_access"),
    ):
        op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
    for name in RLS_FUNCTIONS:
        drop_rls_function(name)
    op.drop_index("ix_vendor_access_grants_requester", "vendor_access_grants")
    op.drop_constraint("fk_vendor_access_grants_tenant_id_workspace_id_workspaces", "vendor_access_grants")
    op.drop_constraint("fk_vendor_access_grants_tenant_id_decided_by_users", "vendor_access_grants")
    op.drop_constraint("ck_vendor_access_grants_request", "vendor_access_grants")
    for column in ("expiry_recorded_at", "decided_at", "decided_by", "decision", "hours", "workspace_id", "scope", "requester_subject",
                   "requester_issuer"):
        op.drop_column("vendor_access_grants", column)
