"""Queries for tenancy. Every one runs under the transaction's tenant context (RLS filters rows)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.tenancy.models import Invitation, Tenant, TenantMembership, User, VendorAccessGrant, Workspace, WorkspaceMembership


class Member(NamedTuple):
    user: User
    membership: TenantMembership
    # With `workspace_id`: that workspace (None if the tenant has none by that id) and the user's
    # membership of it (None if not a member).
    workspace: Workspace | None = None
    workspace_membership: WorkspaceMembership | None = None


def find_member(session: Session, *, issuer: str, subject: str, workspace_id: uuid.UUID | None = None) -> Member | None:
    """The caller's user and tenant membership and, with `workspace_id`, that workspace and their
    membership of it: everything RBAC needs, in one statement."""
    query = (
        select(User, TenantMembership)
        .join(TenantMembership, (TenantMembership.tenant_id == User.tenant_id) & (TenantMembership.user_id == User.id))
        .where(User.issuer == issuer, User.subject == subject)
    )
    if workspace_id is not None:
        query = (
            query.add_columns(Workspace, WorkspaceMembership)
            .outerjoin(Workspace, (Workspace.tenant_id == User.tenant_id) & (Workspace.id == workspace_id))
            .outerjoin(
                WorkspaceMembership,
                (WorkspaceMembership.tenant_id == Workspace.tenant_id) & (WorkspaceMembership.workspace_id == Workspace.id)
                & (WorkspaceMembership.user_id == User.id),
            )
        )
    row = session.execute(query).first()
    return Member(*row) if row else None


def find_user(session: Session, *, issuer: str, subject: str) -> User | None:
    return session.scalars(select(User).where(User.issuer == issuer, User.subject == subject)).first()


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def list_tenants(session: Session) -> Sequence[Tenant]:
    return session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)).all()


def tenant_members(session: Session) -> Sequence[tuple[User, TenantMembership]]:
    rows = session.execute(
        select(User, TenantMembership)
        .join(TenantMembership, (TenantMembership.tenant_id == User.tenant_id) & (TenantMembership.user_id == User.id))
        .order_by(User.created_at, User.id)
    ).all()
    return [(u, m) for u, m in rows]


def tenant_member(session: Session, user_id: uuid.UUID) -> tuple[User, TenantMembership] | None:
    row = session.execute(
        select(User, TenantMembership)
        .join(TenantMembership, (TenantMembership.tenant_id == User.tenant_id) & (TenantMembership.user_id == User.id))
        .where(User.id == user_id)
    ).first()
    return (row[0], row[1]) if row else None


def tenant_membership(session: Session, user_id: uuid.UUID) -> TenantMembership | None:
    return session.scalars(select(TenantMembership).where(TenantMembership.user_id == user_id)).first()


def count_customer_admins(session: Session) -> int:
    """Locks the tenant's customer_admin rows, so two concurrent demotions cannot both pass the count."""
    rows = session.scalars(select(TenantMembership.user_id).where(TenantMembership.role == "customer_admin").with_for_update())
    return len(rows.all())


def get_workspace(session: Session, workspace_id: uuid.UUID) -> Workspace | None:
    return session.scalars(select(Workspace).where(Workspace.id == workspace_id)).first()


def workspace_membership(session: Session, *, workspace_id: uuid.UUID, user_id: uuid.UUID) -> WorkspaceMembership | None:
    return session.scalars(
        select(WorkspaceMembership).where(WorkspaceMembership.workspace_id == workspace_id, WorkspaceMembership.user_id == user_id)
    ).first()


def remove_workspace_memberships(session: Session, *, user_id: uuid.UUID) -> list[uuid.UUID]:
    """Delete all of a user's workspace memberships in the tenant; returns the workspace ids."""
    result = session.execute(
        delete(WorkspaceMembership).where(WorkspaceMembership.user_id == user_id).returning(WorkspaceMembership.workspace_id)
    )
    return list(result.scalars())


def workspaces_for(session: Session, *, user_id: uuid.UUID | None) -> Sequence[Workspace]:
    """All the tenant's workspaces (user_id None), or those the user is a member of."""
    query = select(Workspace).order_by(Workspace.created_at, Workspace.id)
    if user_id is not None:
        query = query.join(
            WorkspaceMembership,
            (WorkspaceMembership.tenant_id == Workspace.tenant_id) & (WorkspaceMembership.workspace_id == Workspace.id),
        ).where(WorkspaceMembership.user_id == user_id)
    return session.scalars(query).all()


def workspace_members(session: Session, workspace_id: uuid.UUID) -> Sequence[tuple[User, WorkspaceMembership]]:
    rows = session.execute(
        select(User, WorkspaceMembership)
        .join(WorkspaceMembership, (WorkspaceMembership.tenant_id == User.tenant_id) & (WorkspaceMembership.user_id == User.id))
        .where(WorkspaceMembership.workspace_id == workspace_id)
        .order_by(WorkspaceMembership.created_at, User.id)
    ).all()
    return [(u, m) for u, m in rows]


def invitation_by_hash(session: Session, token_hash: str) -> Invitation | None:
    return session.scalars(select(Invitation).where(Invitation.token_hash == token_hash).with_for_update()).first()


def slug_taken(session: Session, model: type[Workspace] | type[Tenant], slug: str) -> bool:
    return session.scalar(select(func.count()).select_from(model).where(model.slug == slug)) > 0


def vendor_grants(session: Session) -> Sequence[VendorAccessGrant]:
    return session.scalars(select(VendorAccessGrant).order_by(VendorAccessGrant.created_at.desc(), VendorAccessGrant.id)).all()


def vendor_grant(session: Session, grant_id: uuid.UUID, *, for_update: bool = False) -> VendorAccessGrant | None:
    query = select(VendorAccessGrant).where(VendorAccessGrant.id == grant_id)
    return session.scalars(query.with_for_update() if for_update else query).first()


def unrecorded_expiries(session: Session) -> Sequence[VendorAccessGrant]:
    """Approved, unrevoked grants past their end whose expiry is not in the trail yet (locked; others skip them)."""
    return session.scalars(
        select(VendorAccessGrant)
        .where(VendorAccessGrant.decision == "approved", VendorAccessGrant.revoked_at.is_(None),
               VendorAccessGrant.expires_at <= func.now(), VendorAccessGrant.expiry_recorded_at.is_(None))
        .order_by(VendorAccessGrant.expires_at)
        .with_for_update(skip_locked=True)
    ).all()


def active_vendor_grant(session: Session, *, scope: str, workspace_id: uuid.UUID | None = None) -> VendorAccessGrant | None:
    """The vendor person's approved, unrevoked, unexpired grant of `scope` (under their vendor
    context the policies show them their own requests only)."""
    query = select(VendorAccessGrant).where(
        VendorAccessGrant.scope == scope, VendorAccessGrant.decision == "approved",
        VendorAccessGrant.revoked_at.is_(None), VendorAccessGrant.expires_at > func.now(),
    )
    if workspace_id is not None:
        query = query.where(VendorAccessGrant.workspace_id == workspace_id)
    return session.scalars(query.order_by(VendorAccessGrant.expires_at.desc())).first()
