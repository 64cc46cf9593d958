"""HTTP for tenants, members, invitations, workspaces and workspace members."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status

from app.audit.service import Category
from app.auth.dependencies import Caller, InternalAdmin
from app.authz.denials import record_refusal
from app.authz.dependencies import (
    Meta,
    TenantAdmin,
    TenantMember,
    TenantMemberOrVendor,
    TenantMetadataGrantReader,
    TenantMetadataReader,
    VendorStaff,
    WorkspaceAdmin,
    WorkspaceManager,
)
from app.db.dependencies import DbSession
from app.edge.turnstile import HumanVerified
from app.errors import NotFound
from app.idempotency import Idempotent
from app.tenancy import service
from app.tenancy.schemas import (
    InvitationAccept,
    InvitationAccepted,
    InvitationCreate,
    InvitationCreated,
    MemberRead,
    TenantCreate,
    TenantCreated,
    TenantMemberUpdate,
    TenantRead,
    VendorAccessGrantRead,
    VendorAccessRequest,
    WorkspaceCreate,
    WorkspaceMemberUpdate,
    WorkspaceRead,
    WorkspaceUpdate,
)

router = APIRouter()


def _member(user, membership) -> MemberRead:
    return MemberRead(user_id=user.id, issuer=user.issuer, subject=user.subject, display_name=user.display_name,
                      email=user.email, role=membership.role)


@router.post("/tenants", status_code=status.HTTP_201_CREATED, response_model=TenantCreated, tags=["tenants"])
def create_tenant(body: TenantCreate, caller: InternalAdmin, session: DbSession, meta: Meta, _: Idempotent) -> TenantCreated:
    """Vendor staff create a tenant; the answer carries the first customer_admin's invitation."""
    tenant, token = service.create_tenant(session, principal=caller, meta=meta, name=body.name, slug=body.slug,
                                          admin_email=body.admin_email)
    return TenantCreated(**TenantRead.model_validate(tenant).model_dump(), admin_invitation_token=token)


@router.get("/tenants", response_model=list[TenantRead], tags=["tenants"])
def list_tenants(caller: InternalAdmin, session: DbSession, meta: Meta) -> list[TenantRead]:
    """Tenant metadata for vendor staff."""
    return [TenantRead.model_validate(t) for t in service.list_tenants(session, principal=caller, meta=meta)]


@router.get("/tenants/{tenant_id}", response_model=TenantRead, tags=["tenants"])
def get_tenant(scope: TenantMetadataReader) -> TenantRead:
    return TenantRead.model_validate(service.get_tenant(scope))


@router.get("/tenants/{tenant_id}/members", response_model=list[MemberRead], tags=["members"])
def list_members(scope: TenantMetadataGrantReader) -> list[MemberRead]:
    """The tenant's members: its customer_admins, or vendor staff under a `metadata` grant."""
    return [_member(u, m) for u, m in service.list_members(scope)]


@router.patch("/tenants/{tenant_id}/members/{user_id}", response_model=MemberRead, tags=["members"])
def change_member_role(user_id: uuid.UUID, body: TenantMemberUpdate, scope: TenantAdmin) -> MemberRead:
    return _member(*service.change_tenant_role(scope, user_id=user_id, role=body.role))


@router.delete("/tenants/{tenant_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["members"])
def remove_member(user_id: uuid.UUID, scope: TenantAdmin) -> None:
    service.remove_member(scope, user_id=user_id)


@router.post("/tenants/{tenant_id}/invitations", status_code=status.HTTP_201_CREATED, response_model=InvitationCreated, tags=["invitations"])
def create_invitation(body: InvitationCreate, scope: TenantMember, _: Idempotent) -> InvitationCreated:
    token = service.create_invitation(scope, email=body.email, tenant_role=body.tenant_role,
                                      workspace_id=body.workspace_id, workspace_role=body.workspace_role)
    return InvitationCreated(token=token)


@router.post("/invitations/accept", response_model=InvitationAccepted, tags=["invitations"])
def accept_invitation(
    body: InvitationAccept, caller: Caller, session: DbSession, meta: Meta, request: Request, _: HumanVerified,
) -> InvitationAccepted:
    """Join a tenant with an invitation token as its invitee: the bearer token must carry the invitation's
    e-mail, verified. A Turnstile token is required when Turnstile is on."""
    try:
        tenant_id, user_id = service.accept_invitation(session, principal=caller, meta=meta, token=body.token)
    except service.InvitationRefused as refused:
        # The inviting tenant's trail learns that its invitation was presented by someone it does not name.
        record_refusal(request, action="invitation.accept_refused", tenant_id=refused.tenant_id, category=Category.invitation,
                       workspace_id=refused.workspace_id, target_type="invitation", target_id=refused.invitation_id,
                       details={"reason": refused.reason})
        raise NotFound() from None  # the very answer an unknown or expired invitation gets
    return InvitationAccepted(tenant_id=tenant_id, user_id=user_id)


@router.post("/tenants/{tenant_id}/vendor-access-requests", status_code=status.HTTP_201_CREATED,
             response_model=VendorAccessGrantRead, tags=["vendor access"])
def request_vendor_access(body: VendorAccessRequest, scope: VendorStaff, _: Idempotent) -> VendorAccessGrantRead:
    """Vendor staff ask for time-boxed access (metadata, audit trail, or one workspace's content, read-only)."""
    return VendorAccessGrantRead.model_validate(service.request_vendor_access(
        scope, reason=body.reason, grant_scope=body.scope.value, workspace_id=body.workspace_id, hours=body.hours))


@router.get("/tenants/{tenant_id}/vendor-access-grants", response_model=list[VendorAccessGrantRead], tags=["vendor access"])
def list_vendor_grants(scope: TenantMetadataReader) -> list[VendorAccessGrantRead]:
    """Customer_admins see every request; vendor staff see their own."""
    return [VendorAccessGrantRead.model_validate(g) for g in service.list_vendor_grants(scope)]


@router.post("/tenants/{tenant_id}/vendor-access-grants/{grant_id}/approve", response_model=VendorAccessGrantRead,
             tags=["vendor access"])
def approve_vendor_access(grant_id: uuid.UUID, scope: TenantAdmin) -> VendorAccessGrantRead:
    """Approve a pending request: it runs its hours from now, for the person who asked only."""
    return VendorAccessGrantRead.model_validate(service.decide_vendor_access(scope, grant_id=grant_id, approve=True))


@router.post("/tenants/{tenant_id}/vendor-access-grants/{grant_id}/deny", response_model=VendorAccessGrantRead,
             tags=["vendor access"])
def deny_vendor_access(grant_id: uuid.UUID, scope: TenantAdmin) -> VendorAccessGrantRead:
    return VendorAccessGrantRead.model_validate(service.decide_vendor_access(scope, grant_id=grant_id, approve=False))


@router.delete("/tenants/{tenant_id}/vendor-access-grants/{grant_id}", response_model=VendorAccessGrantRead, tags=["vendor access"])
def revoke_vendor_access(grant_id: uuid.UUID, scope: TenantAdmin) -> VendorAccessGrantRead:
    return VendorAccessGrantRead.model_validate(service.revoke_vendor_access(scope, grant_id=grant_id))


@router.get("/tenants/{tenant_id}/workspaces", response_model=list[WorkspaceRead], tags=["workspaces"])
def list_workspaces(scope: TenantMemberOrVendor) -> list[WorkspaceRead]:
    """The caller's workspaces (all of them for a customer_admin, or vendor staff under a `metadata` grant)."""
    return [WorkspaceRead.model_validate(w) for w in service.list_workspaces(scope)]


@router.post("/tenants/{tenant_id}/workspaces", status_code=status.HTTP_201_CREATED, response_model=WorkspaceRead, tags=["workspaces"])
def create_workspace(body: WorkspaceCreate, scope: TenantAdmin, _: Idempotent) -> WorkspaceRead:
    return WorkspaceRead.model_validate(service.create_workspace(scope, name=body.name, slug=body.slug))


@router.get("/tenants/{tenant_id}/workspaces/{workspace_id}", response_model=WorkspaceRead, tags=["workspaces"])
def get_workspace(scope: WorkspaceManager) -> WorkspaceRead:
    return WorkspaceRead.model_validate(service.get_workspace(scope))


@router.patch("/tenants/{tenant_id}/workspaces/{workspace_id}", response_model=WorkspaceRead, tags=["workspaces"])
def update_workspace(body: WorkspaceUpdate, scope: WorkspaceAdmin) -> WorkspaceRead:
    return WorkspaceRead.model_validate(service.update_workspace(scope, name=body.name))


@router.delete("/tenants/{tenant_id}/workspaces/{workspace_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["workspaces"])
def delete_workspace(scope: WorkspaceAdmin) -> None:
    service.delete_workspace(scope)


@router.get("/tenants/{tenant_id}/workspaces/{workspace_id}/members", response_model=list[MemberRead], tags=["workspaces"])
def list_workspace_members(scope: WorkspaceManager) -> list[MemberRead]:
    return [_member(u, m) for u, m in service.list_workspace_members(scope)]


@router.put("/tenants/{tenant_id}/workspaces/{workspace_id}/members/{user_id}", response_model=MemberRead, tags=["workspaces"])
def set_workspace_member(user_id: uuid.UUID, body: WorkspaceMemberUpdate, scope: WorkspaceAdmin) -> MemberRead:
    return _member(*service.set_workspace_role(scope, user_id=user_id, role=body.role))


@router.delete("/tenants/{tenant_id}/workspaces/{workspace_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["workspaces"])
def remove_workspace_member(user_id: uuid.UUID, scope: WorkspaceAdmin) -> None:
    service.remove_workspace_member(scope, user_id=user_id)
