"""Tenancy rules: tenants, members, invitations, workspaces and workspace members.

Services flush, never commit: the request owns the transaction, and audit rows ride in it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit.service import Category
from app.auth.principal import INTERNAL_ADMIN, Principal
from app.authz.roles import TenantRole, WorkspaceRole, granting_rank
from app.authz.scope import TenantScope, WorkspaceScope
from app.db.session import DbContext, apply_context, current_context
from app.errors import Conflict, DomainError, Forbidden, NotFound
from app.tenancy import repository as repo
from app.tenancy.models import Invitation, Tenant, TenantMembership, User, VendorAccessGrant, Workspace, WorkspaceMembership

INVITATION_TTL = timedelta(days=7)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- tenants -------------------------------------------------------------------------------------


def create_tenant(
    session: Session, *, principal: Principal, meta: audit.RequestMeta, name: str, slug: str, admin_email: str,
) -> tuple[Tenant, str]:
    """Create a tenant and the one-time invitation for its first customer_admin, bound to `admin_email` (vendor staff only)."""
    apply_context(session, DbContext(platform_role=INTERNAL_ADMIN))
    if repo.slug_taken(session, Tenant, slug):
        raise Conflict("A tenant with this slug exists.")
    tenant = Tenant(id=uuid.uuid4(), name=name, slug=slug)
    # Onboarding writes the new tenant as no one in particular: as internal_admin the policies
    # would refuse the invitation (vendor staff never see invitations).
    apply_context(session, DbContext(tenant_id=tenant.id))
    session.add(tenant)
    session.flush()
    token = _new_invitation(session, tenant_id=tenant.id, tenant_role=TenantRole.customer_admin, invited_by=None,
                            email=admin_email)
    actor = audit.Actor(issuer=principal.issuer, subject=principal.subject, user_id=None, role=INTERNAL_ADMIN)
    audit.record(
        session, tenant_id=tenant.id, actor=actor, meta=meta, category=Category.vendor_access,
        action="tenant.create", target_type="tenant", target_id=tenant.id, details={"slug": slug},
    )
    return tenant, token


def bootstrap_tenant(session: Session, *, name: str, slug: str, admin_issuer: str, admin_subject: str) -> Tenant:
    """Create a tenant with its first customer_admin directly (operator CLI, no invitation)."""
    tenant = Tenant(id=uuid.uuid4(), name=name, slug=slug)
    apply_context(session, DbContext(tenant_id=tenant.id))
    session.add(tenant)
    session.flush()
    user = User(tenant_id=tenant.id, id=uuid.uuid4(), issuer=admin_issuer, subject=admin_subject)
    session.add(user)
    session.flush()
    session.add(TenantMembership(tenant_id=tenant.id, user_id=user.id, role=TenantRole.customer_admin.value))
    actor = audit.Actor(issuer=None, subject="palisade-cli", user_id=None, role="operator", type="service")
    audit.record(
        session, tenant_id=tenant.id, actor=actor, meta=audit.RequestMeta(), category=Category.configuration_change,
        action="tenant.create", target_type="tenant", target_id=tenant.id, details={"slug": slug, "admin_user_id": str(user.id)},
    )
    session.flush()
    return tenant


def list_tenants(session: Session, *, principal: Principal, meta: audit.RequestMeta) -> Sequence[Tenant]:
    """Every tenant's metadata (vendor staff): the tenants policy opens only for internal_admin."""
    audit.record_vendor_action(session, principal=principal, meta=meta, action="tenants.list")
    return repo.list_tenants(session)


def get_tenant(scope: TenantScope) -> Tenant:
    tenant = repo.get_tenant(scope.session, scope.tenant_id)
    if tenant is None:
        raise NotFound()
    return tenant


# --- tenant members ------------------------------------------------------------------------------


def list_members(scope: TenantScope) -> Sequence[tuple[User, TenantMembership]]:
    return repo.tenant_members(scope.session)


def _member(scope: TenantScope, user_id: uuid.UUID) -> tuple[User, TenantMembership]:
    found = repo.tenant_member(scope.session, user_id)
    if found is None:
        raise NotFound()
    return found


def _keep_one_admin(scope: TenantScope, membership: TenantMembership) -> None:
    if membership.role == TenantRole.customer_admin and repo.count_customer_admins(scope.session) <= 1:
        raise Conflict("A tenant keeps at least one customer_admin.")


def change_tenant_role(scope: TenantScope, *, user_id: uuid.UUID, role: TenantRole) -> tuple[User, TenantMembership]:
    user, membership = _member(scope, user_id)
    before = membership.role
    if before == role:
        return user, membership
    if role is not TenantRole.customer_admin:
        _keep_one_admin(scope, membership)
    membership.role = role.value
    scope.session.flush()
    scope.audit(category=Category.role_change, action="tenant_member.role_change", target_type="user", target_id=user_id,
                details={"before": before, "after": role.value})
    return user, membership


def remove_member(scope: TenantScope, *, user_id: uuid.UUID) -> None:
    """Remove a user from the tenant and all its workspaces; the user row stays for the audit trail."""
    _, membership = _member(scope, user_id)
    _keep_one_admin(scope, membership)
    workspace_ids = repo.remove_workspace_memberships(scope.session, user_id=user_id)
    scope.session.delete(membership)
    scope.session.flush()
    scope.audit(category=Category.membership_removal, action="tenant_member.remove", target_type="user", target_id=user_id,
                details={"before": membership.role, "workspace_ids": [str(w) for w in workspace_ids]})


# --- invitations ---------------------------------------------------------------------------------


class InvitationRefused(NotFound):
    """A live invitation presented by a token that does not prove its invitee's e-mail.

    The caller sees exactly an unknown invitation's 404; the router records `reason` (never the
    token) in the inviting tenant's audit trail.
    """

    def __init__(self, *, tenant_id: uuid.UUID, invitation_id: uuid.UUID, workspace_id: uuid.UUID | None, reason: str) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.invitation_id = invitation_id
        self.workspace_id = workspace_id
        self.reason = reason


def normalise_email(value: str) -> str:
    """What two e-mails must agree on: surrounding whitespace stripped, then lower case.

    Not `casefold()`: it merges distinct letters (`ß` and `ss`), so an invitation to one address
    could admit the owner of another.
    """
    return value.strip().lower()


def _invitee_refusal(invitation: Invitation, principal: Principal) -> str | None:
    """Why this caller is not the invitee (None: they are)."""
    if not invitation.email:
        return "invitation_without_email"  # made before invitations named their invitee: re-issue it
    if principal.email is None or not principal.email.strip():
        return "email_missing"
    if normalise_email(principal.email) != normalise_email(invitation.email):
        return "email_mismatch"
    if not principal.email_verified:
        return "email_unverified"
    return None


def _new_invitation(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    tenant_role: TenantRole,
    invited_by: uuid.UUID | None,
    email: str | None = None,
    workspace_id: uuid.UUID | None = None,
    workspace_role: WorkspaceRole | None = None,
) -> str:
    secret = secrets.token_urlsafe(32)
    session.add(
        Invitation(
            tenant_id=tenant_id, id=uuid.uuid4(), token_hash=_hash(secret), email=email, tenant_role=tenant_role.value,
            workspace_id=workspace_id, workspace_role=workspace_role.value if workspace_role else None,
            invited_by=invited_by, expires_at=datetime.now(UTC) + INVITATION_TTL,
        )
    )
    session.flush()
    # The tenant id travels in the token so accepting it never needs a cross-tenant lookup.
    return f"{tenant_id}.{secret}"


def create_invitation(
    scope: TenantScope,
    *,
    email: str,
    tenant_role: TenantRole,
    workspace_id: uuid.UUID | None,
    workspace_role: WorkspaceRole | None,
) -> str:
    """Invite the holder of `email`; the inviter can grant neither a tenant nor a workspace role above their own."""
    assert scope.user_id is not None
    _check_inviter(scope.session, inviter_id=scope.user_id, tenant_role=tenant_role, workspace_id=workspace_id,
                   workspace_role=workspace_role)
    token = _new_invitation(
        scope.session, tenant_id=scope.tenant_id, tenant_role=tenant_role, invited_by=scope.user_id, email=email,
        workspace_id=workspace_id, workspace_role=workspace_role,
    )
    scope.audit(category=Category.invitation, action="invitation.create", target_type="invitation",
                workspace_id=workspace_id,
                details={"tenant_role": tenant_role.value, "workspace_role": workspace_role.value if workspace_role else None})
    return token


def accept_invitation(session: Session, *, principal: Principal, meta: audit.RequestMeta, token: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Join the inviting tenant (and workspace); returns (tenant_id, user_id). Bad tokens are 404.

    The caller must be the invitee: their token carries the invitation's e-mail (`normalise_email`
    on both sides) with `email_verified: true`. Otherwise InvitationRefused, a 404 like any other.
    """
    tenant_part, _, secret = token.partition(".")
    try:
        tenant_id = uuid.UUID(tenant_part)
    except ValueError:
        raise NotFound() from None
    apply_context(session, DbContext(tenant_id=tenant_id))
    invitation = repo.invitation_by_hash(session, _hash(secret))
    if invitation is None or invitation.accepted_at is not None or invitation.expires_at <= datetime.now(UTC):
        raise NotFound()
    if invitation.invited_by is not None:  # None: vendor staff's invitation of a first customer_admin
        # An invitation is only as good as its inviter's roles now: demoted or removed, it lapses.
        try:
            _check_inviter(session, inviter_id=invitation.invited_by, tenant_role=TenantRole(invitation.tenant_role),
                           workspace_id=invitation.workspace_id,
                           workspace_role=WorkspaceRole(invitation.workspace_role) if invitation.workspace_role else None)
        except DomainError:
            raise NotFound() from None
    reason = _invitee_refusal(invitation, principal)
    if reason is not None:
        raise InvitationRefused(tenant_id=tenant_id, invitation_id=invitation.id, workspace_id=invitation.workspace_id,
                                reason=reason)
    user = repo.find_user(session, issuer=principal.issuer, subject=principal.subject)
    if user is None:
        user = User(tenant_id=tenant_id, id=uuid.uuid4(), issuer=principal.issuer, subject=principal.subject,
                    display_name=principal.name, email=principal.email)
        session.add(user)
        session.flush()
    apply_context(session, DbContext(tenant_id=tenant_id, user_id=user.id))
    membership = repo.tenant_membership(session, user.id)
    if membership is None:
        session.add(TenantMembership(tenant_id=tenant_id, user_id=user.id, role=invitation.tenant_role))
        session.flush()  # the policies admit the user's further writes once the membership exists
    elif invitation.tenant_role == TenantRole.customer_admin:
        membership.role = TenantRole.customer_admin.value
    if invitation.workspace_id is not None and invitation.workspace_role is not None:
        _grant_workspace_role(session, workspace_id=invitation.workspace_id, user_id=user.id, role=WorkspaceRole(invitation.workspace_role))
    invitation.accepted_at = datetime.now(UTC)
    invitation.accepted_by = user.id
    session.flush()
    actor = audit.Actor(issuer=principal.issuer, subject=principal.subject, user_id=user.id, role=invitation.tenant_role)
    audit.record(
        session, tenant_id=tenant_id, actor=actor, meta=meta, category=Category.invitation, action="invitation.accept",
        workspace_id=invitation.workspace_id, target_type="invitation", target_id=invitation.id,
        details={"tenant_role": invitation.tenant_role, "workspace_role": invitation.workspace_role},
    )
    return tenant_id, user.id


def _check_inviter(
    session: Session,
    *,
    inviter_id: uuid.UUID,
    tenant_role: TenantRole,
    workspace_id: uuid.UUID | None,
    workspace_role: WorkspaceRole | None,
) -> None:
    """May this member, with the roles they hold now, hand out these roles? Raises if not."""
    membership = repo.tenant_membership(session, inviter_id)
    if membership is None:
        raise NotFound()
    inviter_tenant_role = TenantRole(membership.role)
    is_admin = inviter_tenant_role is TenantRole.customer_admin
    if tenant_role is TenantRole.customer_admin and not is_admin:
        raise Forbidden("Only a customer_admin can invite a customer_admin.")
    if workspace_id is None or workspace_role is None:
        if not is_admin:
            raise Forbidden("Invite into a workspace you administer.")
        return
    own = repo.workspace_membership(session, workspace_id=workspace_id, user_id=inviter_id)
    if repo.get_workspace(session, workspace_id) is None or (own is None and not is_admin):
        raise NotFound()
    own_role = WorkspaceRole(own.role) if own else None
    if not is_admin and own_role is not None and own_role.rank < WorkspaceRole.admin.rank:
        raise Forbidden("Only a workspace admin can invite.")
    if workspace_role.rank > granting_rank(tenant_role=inviter_tenant_role, workspace_role=own_role):
        raise Forbidden("You cannot grant a role above your own.")


def _grant_workspace_role(session: Session, *, workspace_id: uuid.UUID, user_id: uuid.UUID, role: WorkspaceRole) -> WorkspaceMembership:
    existing = repo.workspace_membership(session, workspace_id=workspace_id, user_id=user_id)
    if existing is None:
        existing = WorkspaceMembership(tenant_id=current_context(session).tenant_id, workspace_id=workspace_id, user_id=user_id, role=role.value)
        session.add(existing)
    elif WorkspaceRole(existing.role).rank < role.rank:
        existing.role = role.value
    session.flush()
    return existing


# --- workspaces ----------------------------------------------------------------------------------


def create_workspace(scope: TenantScope, *, name: str, slug: str) -> Workspace:
    """A customer_admin creates a workspace (a client brand) and becomes its owner."""
    if repo.slug_taken(scope.session, Workspace, slug):
        raise Conflict("A workspace with this slug exists.")
    workspace = Workspace(tenant_id=scope.tenant_id, id=uuid.uuid4(), name=name, slug=slug)
    scope.session.add(workspace)
    scope.session.flush()
    assert scope.user_id is not None
    scope.session.add(WorkspaceMembership(tenant_id=scope.tenant_id, workspace_id=workspace.id, user_id=scope.user_id, role=WorkspaceRole.owner.value))
    scope.session.flush()
    scope.audit(category=Category.configuration_change, action="workspace.create", workspace_id=workspace.id,
                target_type="workspace", target_id=workspace.id, details={"slug": slug})
    return workspace


def list_workspaces(scope: TenantScope) -> Sequence[Workspace]:
    return repo.workspaces_for(scope.session, user_id=None if scope.is_customer_admin else scope.user_id)


def get_workspace(scope: WorkspaceScope) -> Workspace:
    workspace = repo.get_workspace(scope.session, scope.workspace_id)
    if workspace is None:
        raise NotFound()
    return workspace


def update_workspace(scope: WorkspaceScope, *, name: str) -> Workspace:
    workspace = get_workspace(scope)
    before = workspace.name
    workspace.name = name
    scope.session.flush()
    scope.audit(category=Category.configuration_change, action="workspace.update", target_type="workspace",
                target_id=workspace.id, details={"before": {"name_changed": before != name}})
    return workspace


def delete_workspace(scope: WorkspaceScope) -> None:
    if not (scope.is_customer_admin or scope.workspace_role is WorkspaceRole.owner):
        raise Forbidden("Only the workspace owner or a customer_admin can delete a workspace.")
    workspace = get_workspace(scope)
    scope.session.delete(workspace)
    scope.session.flush()
    scope.audit(category=Category.data_deletion, action="workspace.delete", target_type="workspace", target_id=workspace.id,
                details={"slug": workspace.slug})


# --- workspace members ---------------------------------------------------------------------------


def list_workspace_members(scope: WorkspaceScope) -> Sequence[tuple[User, WorkspaceMembership]]:
    return repo.workspace_members(scope.session, scope.workspace_id)


def set_workspace_role(scope: WorkspaceScope, *, user_id: uuid.UUID, role: WorkspaceRole) -> tuple[User, WorkspaceMembership]:
    """Grant or change a member's role; nobody grants, or overrides, a role above their own."""
    user, _ = _member(scope, user_id)
    existing = repo.workspace_membership(scope.session, workspace_id=scope.workspace_id, user_id=user_id)
    before = existing.role if existing else None
    if role.rank > scope.granting_rank or (before and WorkspaceRole(before).rank > scope.granting_rank):
        raise Forbidden("You cannot grant a role above your own.")
    if existing is None:
        existing = WorkspaceMembership(tenant_id=scope.tenant_id, workspace_id=scope.workspace_id, user_id=user_id, role=role.value)
        scope.session.add(existing)
    else:
        existing.role = role.value
    scope.session.flush()
    scope.audit(category=Category.role_change, action="workspace_member.set_role", target_type="user", target_id=user_id,
                details={"before": before, "after": role.value})
    return user, existing


def remove_workspace_member(scope: WorkspaceScope, *, user_id: uuid.UUID) -> None:
    existing = repo.workspace_membership(scope.session, workspace_id=scope.workspace_id, user_id=user_id)
    if existing is None:
        raise NotFound()
    if WorkspaceRole(existing.role).rank > scope.granting_rank:
        raise Forbidden("You cannot remove a member whose role is above your own.")
    scope.session.delete(existing)
    scope.session.flush()
    scope.audit(category=Category.membership_removal, action="workspace_member.remove", target_type="user", target_id=user_id,
                details={"before": existing.role})


# --- vendor access -------------------------------------------------------------------------------


def request_vendor_access(scope: TenantScope, *, reason: str, grant_scope: str, workspace_id: uuid.UUID | None,
                          hours: int) -> VendorAccessGrant:
    """Vendor staff ask, by name, for time-boxed access; nothing opens until a customer_admin approves."""
    if scope.user_id is not None:
        raise Forbidden("Only vendor staff request vendor access.")
    grant = VendorAccessGrant(
        tenant_id=scope.tenant_id, id=uuid.uuid4(), requester_issuer=scope.principal.issuer,
        requester_subject=scope.principal.subject, scope=grant_scope, workspace_id=workspace_id, hours=hours, reason=reason,
    )
    scope.session.add(grant)
    try:
        scope.session.flush()
    except IntegrityError:
        raise NotFound() from None  # a workspace the tenant does not have
    scope.audit(category=Category.vendor_access, action="vendor_grant.request", target_type="vendor_access_grant",
                target_id=grant.id, workspace_id=workspace_id,
                details={"scope": grant_scope, "hours": hours})  # the reason stays in the grant row
    return grant


def list_vendor_grants(scope: TenantScope) -> Sequence[VendorAccessGrant]:
    """Every request of the tenant (customer_admins), or the vendor person's own (the policies filter)."""
    if scope.user_id is not None:
        _record_expiries(scope)
    return repo.vendor_grants(scope.session)


def decide_vendor_access(scope: TenantScope, *, grant_id: uuid.UUID, approve: bool) -> VendorAccessGrant:
    """A customer_admin approves (the grant runs `hours` from now) or denies a pending request."""
    _record_expiries(scope)
    grant = repo.vendor_grant(scope.session, grant_id, for_update=True)
    if grant is None or grant.requester_issuer is None:
        raise NotFound()
    if grant.decision is not None or grant.revoked_at is not None:
        raise Conflict(f"This request is already {grant.status}.")
    if (grant.requester_issuer, grant.requester_subject) == (scope.principal.issuer, scope.principal.subject):
        raise Forbidden("Nobody approves their own request.")
    now = datetime.now(UTC)
    grant.decision = "approved" if approve else "denied"
    grant.decided_by, grant.decided_at = scope.user_id, now
    if approve:
        assert grant.hours is not None
        grant.expires_at = now + timedelta(hours=grant.hours)
    scope.session.flush()
    details = {"scope": grant.scope, "requester_subject": grant.requester_subject}
    if grant.expires_at is not None:
        details["expires_at"] = grant.expires_at.isoformat()
    scope.audit(category=Category.vendor_access, action=f"vendor_grant.{'approve' if approve else 'deny'}",
                target_type="vendor_access_grant", target_id=grant.id, workspace_id=grant.workspace_id, details=details)
    return grant


def revoke_vendor_access(scope: TenantScope, *, grant_id: uuid.UUID) -> VendorAccessGrant:
    grant = repo.vendor_grant(scope.session, grant_id, for_update=True)
    if grant is None:
        raise NotFound()
    if grant.revoked_at is None:
        grant.revoked_at = datetime.now(UTC)
        scope.session.flush()
        scope.audit(category=Category.vendor_access, action="vendor_grant.revoke", target_type="vendor_access_grant",
                    target_id=grant.id, workspace_id=grant.workspace_id)
    return grant


def _record_expiries(scope: TenantScope) -> None:
    """Write the audit event of each grant that ran out since the last look.

    A grant stops admitting at `expires_at` whatever happens here (the policies compare it with
    now()); this only puts the expiry in the trail, the next time a customer_admin looks.
    """
    for grant in repo.unrecorded_expiries(scope.session):
        grant.expiry_recorded_at = datetime.now(UTC)
        scope.audit(category=Category.vendor_access, action="vendor_grant.expire", target_type="vendor_access_grant",
                    target_id=grant.id, workspace_id=grant.workspace_id,
                    details={"expired_at": grant.expires_at.isoformat() if grant.expires_at else None})
    scope.session.flush()
