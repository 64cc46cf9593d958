"""Writing audit events, in the same transaction as the action they record."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from app.audit.models import AuditEvent


class Category(StrEnum):
    authentication = "authentication"
    access_denied = "access_denied"
    invitation = "invitation"
    role_change = "role_change"
    membership_removal = "membership_removal"
    workspace_crossing = "workspace_crossing"
    data_change = "data_change"
    data_deletion = "data_deletion"
    configuration_change = "configuration_change"
    vendor_access = "vendor_access"


@dataclass(frozen=True)
class RequestMeta:
    client_ip: str | None = None
    user_agent: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class Actor:
    """Who acted, with the role they held at that moment; ids only, never names or emails."""

    issuer: str | None
    subject: str | None
    user_id: uuid.UUID | None
    role: str | None


def record(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    actor: Actor,
    meta: RequestMeta,
    category: Category,
    action: str,
    outcome: str = "success",
    workspace_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to the session; it commits or rolls back with the action."""
    event = AuditEvent(
        tenant_id=tenant_id,
        category=category.value,
        action=action,
        outcome=outcome,
        workspace_id=workspace_id,
        actor_user_id=actor.user_id,
        actor_issuer=actor.issuer,
        actor_subject=actor.subject,
        actor_role=actor.role,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        client_ip=meta.client_ip,
        user_agent=(meta.user_agent or "")[:512] or None,
        correlation_id=meta.correlation_id,
        details=details or {},
    )
    session.add(event)
    return event
