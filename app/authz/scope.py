"""The verified caller inside one tenant (and workspace) for one request; no FastAPI here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.principal import INTERNAL_ADMIN, Principal
from app.authz.roles import TenantRole, WorkspaceRole, granting_rank


@dataclass(frozen=True)
class TenantScope:
    session: Session
    tenant_id: uuid.UUID
    principal: Principal
    meta: audit.RequestMeta
    # None for vendor staff looking at tenant metadata: they are no member of the tenant.
    user_id: uuid.UUID | None
    tenant_role: TenantRole | None
    # Vendor staff entering under a customer-approved grant: its id goes into every audit event.
    vendor_grant_id: uuid.UUID | None = None

    @property
    def is_customer_admin(self) -> bool:
        return self.tenant_role is TenantRole.customer_admin

    @property
    def actor_role(self) -> str:
        return self.tenant_role.value if self.tenant_role else INTERNAL_ADMIN

    def actor(self) -> audit.Actor:
        return audit.Actor(issuer=self.principal.issuer, subject=self.principal.subject, user_id=self.user_id, role=self.actor_role)

    def audit(self, *, category: audit.Category, action: str, **fields: Any) -> None:
        if self.vendor_grant_id is not None:
            fields["details"] = {**(fields.get("details") or {}), "vendor_grant_id": str(self.vendor_grant_id)}
        audit.record(self.session, tenant_id=self.tenant_id, actor=self.actor(), meta=self.meta, category=category, action=action, **fields)


@dataclass(frozen=True)
class WorkspaceScope(TenantScope):
    workspace_id: uuid.UUID = uuid.UUID(int=0)
    # None when a customer_admin manages a workspace they are not a member of.
    workspace_role: WorkspaceRole | None = None

    @property
    def actor_role(self) -> str:
        return self.workspace_role.value if self.workspace_role else super().actor_role

    @property
    def granting_rank(self) -> int:
        assert self.tenant_role is not None
        return granting_rank(tenant_role=self.tenant_role, workspace_role=self.workspace_role)

    def audit(self, *, category: audit.Category, action: str, **fields: Any) -> None:
        fields.setdefault("workspace_id", self.workspace_id)
        super().audit(category=category, action=action, **fields)
