"""Route-level RBAC: each dependency resolves the caller inside the path's tenant/workspace.

The caller's membership and role are read on every request, under the tenant context, so a
revoked role stops working at once. A tenant or workspace the caller cannot see answers 404,
the same as one that does not exist.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Annotated

from fastapi import Depends, Path, Request

from app.audit.service import RequestMeta
from app.auth.dependencies import Caller
from app.auth.principal import INTERNAL_ADMIN
from app.authz.roles import TenantRole, WorkspaceRole
from app.authz.scope import TenantScope, WorkspaceScope
from app.db.dependencies import DbSession
from app.db.session import DbContext, apply_context
from app.errors import Forbidden, NotFound
from app.tenancy import repository as repo


def _peer_ip(request: Request) -> str | None:
    # The direct peer for now; trusted-proxy handling belongs to the edge layer.
    try:
        return str(ipaddress.ip_address(request.client.host)) if request.client else None
    except ValueError:
        return None


def request_meta(request: Request) -> RequestMeta:
    return RequestMeta(
        client_ip=_peer_ip(request),
        user_agent=request.headers.get("user-agent"),
        correlation_id=getattr(request.state, "correlation_id", None),
    )


Meta = Annotated[RequestMeta, Depends(request_meta)]


class TenantAccess:
    """A member of the path's tenant; optionally only its customer_admins, or vendor staff too."""

    def __init__(self, *, customer_admin: bool = False, internal_admin: bool = False) -> None:
        self.customer_admin = customer_admin
        self.internal_admin = internal_admin

    def __call__(self, caller: Caller, session: DbSession, meta: Meta, tenant_id: Annotated[uuid.UUID, Path()]) -> TenantScope:
        apply_context(session, DbContext(tenant_id=tenant_id))
        found = repo.find_member(session, issuer=caller.issuer, subject=caller.subject)
        if found is None:
            if self.internal_admin and caller.is_internal_admin:
                # Vendor staff: tenant metadata only (the route decides what that is).
                apply_context(session, DbContext(tenant_id=tenant_id, platform_role=INTERNAL_ADMIN))
                return TenantScope(session=session, tenant_id=tenant_id, principal=caller, meta=meta, user_id=None, tenant_role=None)
            raise NotFound()
        user, membership = found
        apply_context(session, DbContext(tenant_id=tenant_id, user_id=user.id))
        scope = TenantScope(session=session, tenant_id=tenant_id, principal=caller, meta=meta, user_id=user.id,
                            tenant_role=TenantRole(membership.role))
        if self.customer_admin and not scope.is_customer_admin:
            raise Forbidden()
        return scope


class WorkspaceAccess:
    """The caller's role on the path's workspace, re-checked on every request.

    `min_role` is what content routes need. `customer_admin=True` also lets the tenant's
    customer_admins manage the workspace (settings, members) without being members; they still
    never see its content unless they hold a workspace role.
    """

    def __init__(self, min_role: WorkspaceRole, *, customer_admin: bool = False) -> None:
        self.min_role = min_role
        self.customer_admin = customer_admin

    def __call__(
        self,
        tenant: Annotated[TenantScope, Depends(TenantAccess())],
        workspace_id: Annotated[uuid.UUID, Path()],
    ) -> WorkspaceScope:
        session = tenant.session
        if repo.get_workspace(session, workspace_id) is None:
            raise NotFound()
        assert tenant.user_id is not None
        membership = repo.workspace_membership(session, workspace_id=workspace_id, user_id=tenant.user_id)
        role = WorkspaceRole(membership.role) if membership else None
        apply_context(session, DbContext(tenant_id=tenant.tenant_id, workspace_id=workspace_id, user_id=tenant.user_id))
        scope = WorkspaceScope(
            session=session, tenant_id=tenant.tenant_id, principal=tenant.principal, meta=tenant.meta,
            user_id=tenant.user_id, tenant_role=tenant.tenant_role, workspace_id=workspace_id, workspace_role=role,
        )
        if role is not None and role.rank >= self.min_role.rank:
            return scope
        if self.customer_admin and tenant.is_customer_admin:
            return scope
        if role is None:
            raise NotFound()  # a workspace of the same tenant you are not in does not exist for you
        raise Forbidden()


TenantMember = Annotated[TenantScope, Depends(TenantAccess())]
TenantAdmin = Annotated[TenantScope, Depends(TenantAccess(customer_admin=True))]
TenantMetadataReader = Annotated[TenantScope, Depends(TenantAccess(customer_admin=True, internal_admin=True))]
WorkspaceViewer = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.viewer))]
WorkspaceWriter = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.member))]
WorkspaceAdmin = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.admin, customer_admin=True))]
WorkspaceManager = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.viewer, customer_admin=True))]
