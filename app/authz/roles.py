"""Roles and their order. Nobody grants a role above their own."""

from __future__ import annotations

from enum import StrEnum


class TenantRole(StrEnum):
    customer_admin = "customer_admin"
    member = "member"


class WorkspaceRole(StrEnum):
    owner = "owner"
    admin = "admin"
    multi_account_manager = "multi_account_manager"
    member = "member"
    viewer = "viewer"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {
    WorkspaceRole.viewer: 10,
    WorkspaceRole.member: 20,
    WorkspaceRole.multi_account_manager: 30,
    WorkspaceRole.admin: 40,
    WorkspaceRole.owner: 50,
}
# A tenant's customer_admin administers every workspace's membership, so ranks above an owner there.
CUSTOMER_ADMIN_RANK = 60


def granting_rank(*, tenant_role: TenantRole, workspace_role: WorkspaceRole | None) -> int:
    """How high a workspace role this caller may hand out (or take away)."""
    ranks = [workspace_role.rank if workspace_role else 0]
    if tenant_role is TenantRole.customer_admin:
        ranks.append(CUSTOMER_ADMIN_RANK)
    return max(ranks)
