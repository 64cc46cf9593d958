from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from app.authz.roles import TenantRole, WorkspaceRole
from app.schemas import Email, Name, Output, Slug, StrictInput


class TenantCreate(StrictInput):
    name: Name
    slug: Slug
    # The first customer_admin's e-mail: only a token with this e-mail, verified, accepts the invitation.
    admin_email: Email


class TenantRead(Output):
    id: uuid.UUID
    name: str
    slug: str
    created_at: datetime


class TenantCreated(TenantRead):
    # Shown once: the one-time invitation for the tenant's first customer_admin.
    admin_invitation_token: str


class MemberRead(Output):
    user_id: uuid.UUID
    issuer: str
    subject: str
    display_name: str | None
    email: str | None
    role: str


class TenantMemberUpdate(StrictInput):
    role: TenantRole


class InvitationCreate(StrictInput):
    # The pair rule below, in the OpenAPI document too (JSON Schema if/then/else), so clients see it.
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"workspace_id": {"type": "string"}}, "required": ["workspace_id"]},
        "then": {"properties": {"workspace_role": {"type": "string"}}, "required": ["workspace_role"]},
        "else": {"properties": {"workspace_role": {"type": "null"}}},
    })

    # Required: only a token carrying this e-mail, verified by its IdP, accepts the invitation.
    email: Email
    tenant_role: TenantRole = TenantRole.member
    workspace_id: uuid.UUID | None = None
    workspace_role: WorkspaceRole | None = None

    @model_validator(mode="after")
    def _workspace_pair(self) -> InvitationCreate:
        if (self.workspace_id is None) != (self.workspace_role is None):
            raise ValueError("workspace_id and workspace_role go together")
        return self


class InvitationCreated(Output):
    # Shown once; only its hash is stored.
    token: str


class InvitationAccept(StrictInput):
    token: Annotated[str, StringConstraints(min_length=10, max_length=200)]


class InvitationAccepted(Output):
    tenant_id: uuid.UUID
    user_id: uuid.UUID


class WorkspaceCreate(StrictInput):
    name: Name
    slug: Slug


class WorkspaceUpdate(StrictInput):
    name: Name


class WorkspaceRead(Output):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    slug: str
    created_at: datetime
    updated_at: datetime


class WorkspaceMemberUpdate(StrictInput):
    role: WorkspaceRole


class WorkspaceList(Output):
    items: list[WorkspaceRead] = Field(max_length=10_000)


class VendorScope(StrEnum):
    metadata = "metadata"  # members and workspaces, read-only
    audit = "audit"  # the tenant's audit trail, read and export
    content = "content"  # one named workspace's documents and files, read-only


class VendorAccessRequest(StrictInput):
    # The rule of `_workspace_for_content`, in the OpenAPI document too (JSON Schema if/then/else).
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"scope": {"const": "content"}}, "required": ["scope"]},
        "then": {"properties": {"workspace_id": {"type": "string"}}, "required": ["workspace_id"]},
        "else": {"properties": {"workspace_id": {"type": "null"}}},
    })

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]
    scope: VendorScope
    workspace_id: uuid.UUID | None = Field(default=None, description="Required for, and only for, scope `content`.")
    hours: int = Field(ge=1, le=8, description="How long the grant runs once approved (at most 8 hours).")

    @model_validator(mode="after")
    def _workspace_for_content(self) -> VendorAccessRequest:
        if (self.scope is VendorScope.content) != (self.workspace_id is not None):
            raise ValueError("workspace_id is required for scope content, and only for it")
        return self


class VendorAccessGrantRead(Output):
    id: uuid.UUID
    tenant_id: uuid.UUID
    requester_issuer: str | None
    requester_subject: str | None
    scope: str | None
    workspace_id: uuid.UUID | None
    hours: int | None
    reason: str
    status: str
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
