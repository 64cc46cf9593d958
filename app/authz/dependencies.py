"""Route-level RBAC: each dependency resolves the caller inside the path's tenant/workspace.

The caller's membership and role are read on every request, under the tenant context, so a
revoked role stops working at once. A tenant or workspace the caller cannot see answers 404,
the same as one that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from app.audit.service import Category, RequestMeta
from app.auth.dependencies import Caller
from app.auth.principal import INTERNAL_ADMIN, Principal
from app.authz.denials import record_refusal, route_label
from app.authz.roles import TenantRole, WorkspaceRole
from app.authz.scope import TenantScope, WorkspaceScope
from app.db.dependencies import DbSession
from app.db.session import DbContext, apply_context
from app.edge.client import Meta
from app.errors import Forbidden, NotFound
from app.tenancy import repository as repo


class TenantAccess:
    """A member of the path's tenant; optionally only its customer_admins, or vendor staff too.

    `internal_admin`: vendor staff may enter for tenant metadata (name, slug, created), no grant
    needed. `vendor_scope`: vendor staff may enter only under a grant of that scope that a
    customer_admin approved for them by name. Every vendor entry is audited, with the grant's id.
    The policies check the same grant again on every statement (migration 0007).
    """

    def __init__(self, *, customer_admin: bool = False, internal_admin: bool = False, vendor_scope: str | None = None) -> None:
        self.customer_admin = customer_admin
        self.internal_admin = internal_admin
        self.vendor_scope = vendor_scope

    def __call__(
        self, request: Request, caller: Caller, session: DbSession, meta: Meta, tenant_id: Annotated[uuid.UUID, Path()]
    ) -> TenantScope:
        return self.enter(request, caller, session, meta, tenant_id)[0]

    def enter(self, request: Request, caller: Principal, session: Session, meta: RequestMeta, tenant_id: uuid.UUID,
              workspace_id: uuid.UUID | None = None) -> tuple[TenantScope, repo.Member | None]:
        """The caller's scope in the tenant and, with `workspace_id`, what RBAC needs about that
        workspace, found in the same statement (one round trip for the whole check)."""
        apply_context(session, DbContext(tenant_id=tenant_id))
        found = repo.find_member(session, issuer=caller.issuer, subject=caller.subject, workspace_id=workspace_id)
        if found is None:
            if caller.is_internal_admin and (self.internal_admin or self.vendor_scope):
                return self._enter_as_vendor(request, caller, session, meta, tenant_id, workspace_id), None
            record_refusal(request, action="tenant.not_member", target_type="tenant", target_id=tenant_id)
            raise NotFound()
        apply_context(session, DbContext(tenant_id=tenant_id, user_id=found.user.id))
        scope = TenantScope(session=session, tenant_id=tenant_id, principal=caller, meta=meta, user_id=found.user.id,
                            tenant_role=TenantRole(found.membership.role))
        request.state.authz_scope = scope
        if self.customer_admin and not scope.is_customer_admin:
            raise Forbidden("This needs the tenant's customer_admin role.")
        return scope, found

    def _enter_as_vendor(self, request: Request, caller: Principal, session: Session, meta: RequestMeta,
                         tenant_id: uuid.UUID, workspace_id: uuid.UUID | None) -> TenantScope:
        """Vendor staff: tenant metadata, or what an approved grant of `vendor_scope` names; else 404."""
        apply_context(session, vendor_context(caller, tenant_id, workspace_id))
        grant = None
        if not self.internal_admin:
            grant = repo.active_vendor_grant(session, scope=self.vendor_scope, workspace_id=workspace_id)
            if grant is None:
                record_refusal(request, action="vendor.no_grant", target_type="tenant", target_id=tenant_id)
                raise NotFound()
        scope = TenantScope(session=session, tenant_id=tenant_id, principal=caller, meta=meta, user_id=None,
                            tenant_role=None, vendor_grant_id=grant.id if grant else None)
        request.state.authz_scope = scope
        scope.audit(category=Category.vendor_access, action=route_label(request), workspace_id=workspace_id)
        return scope


def vendor_context(caller: Principal, tenant_id: uuid.UUID, workspace_id: uuid.UUID | None = None) -> DbContext:
    """What the policies read for vendor staff: their platform role and who they are, for the grant check."""
    return DbContext(tenant_id=tenant_id, workspace_id=workspace_id, platform_role=INTERNAL_ADMIN,
                     vendor_issuer=caller.issuer, vendor_subject=caller.subject)


class WorkspaceAccess:
    """The caller's role on the path's workspace, re-checked on every request.

    `min_role` is what content routes need. `customer_admin=True` also lets the tenant's
    customer_admins manage the workspace (settings, members) without being members; they still
    never see its content unless they hold a workspace role.
    """

    def __init__(self, min_role: WorkspaceRole, *, customer_admin: bool = False, vendor_read: bool = False) -> None:
        self.min_role = min_role
        self.customer_admin = customer_admin
        # Read-only routes: vendor staff under an approved `content` grant for this workspace.
        self._tenant = TenantAccess(vendor_scope="content" if vendor_read else None)

    def __call__(
        self, request: Request, caller: Caller, session: DbSession, meta: Meta,
        tenant_id: Annotated[uuid.UUID, Path()], workspace_id: Annotated[uuid.UUID, Path()],
    ) -> WorkspaceScope:
        tenant, found = self._tenant.enter(request, caller, session, meta, tenant_id, workspace_id)
        if found is None:  # vendor staff under a content grant for this very workspace
            scope = WorkspaceScope(
                session=session, tenant_id=tenant.tenant_id, principal=tenant.principal, meta=tenant.meta, user_id=None,
                tenant_role=None, vendor_grant_id=tenant.vendor_grant_id, workspace_id=workspace_id,
            )
            request.state.authz_scope = scope
            return scope
        assert tenant.user_id is not None
        if found.workspace is None:
            raise NotFound()  # does not exist: nothing was refused
        membership = found.workspace_membership
        role = WorkspaceRole(membership.role) if membership else None
        apply_context(session, DbContext(tenant_id=tenant.tenant_id, workspace_id=workspace_id, user_id=tenant.user_id))
        scope = WorkspaceScope(
            session=session, tenant_id=tenant.tenant_id, principal=tenant.principal, meta=tenant.meta,
            user_id=tenant.user_id, tenant_role=tenant.tenant_role, workspace_id=workspace_id, workspace_role=role,
        )
        request.state.authz_scope = scope
        if role is not None and role.rank >= self.min_role.rank:
            return scope
        if self.customer_admin and tenant.is_customer_admin:
            return scope
        if role is None:
            # A workspace of the same tenant you are not in does not exist for you.
            record_refusal(request, action="workspace.not_member", tenant_id=tenant.tenant_id, actor=tenant.actor(),
                           target_type="workspace", target_id=workspace_id)
            raise NotFound()
        raise Forbidden(f"This needs the {self.min_role.value} role or above in the workspace.")


TenantMember = Annotated[TenantScope, Depends(TenantAccess())]
TenantAdmin = Annotated[TenantScope, Depends(TenantAccess(customer_admin=True))]
# Vendor staff only, in a tenant that exists (tenant metadata is theirs to see): to request access.
VendorStaff = Annotated[TenantScope, Depends(TenantAccess(internal_admin=True))]
TenantMetadataReader = Annotated[TenantScope, Depends(TenantAccess(customer_admin=True, internal_admin=True))]
AuditTrailReader = Annotated[TenantScope, Depends(TenantAccess(customer_admin=True, vendor_scope="audit"))]
# Read-only tenant metadata beyond onboarding (members, workspaces): vendor staff need a `metadata` grant.
TenantMetadataGrantReader = Annotated[TenantScope, Depends(TenantAccess(customer_admin=True, vendor_scope="metadata"))]
TenantMemberOrVendor = Annotated[TenantScope, Depends(TenantAccess(vendor_scope="metadata"))]
WorkspaceViewer = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.viewer, vendor_read=True))]
WorkspaceWriter = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.member))]
WorkspaceAdmin = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.admin, customer_admin=True))]
WorkspaceManager = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.viewer, customer_admin=True))]
