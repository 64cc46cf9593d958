"""Writing audit events: in the same transaction as the action, chained, logged after commit.

`record()` adds the event to the caller's transaction, so the action and its record commit or roll
back together. When the transaction commits, each event is also emitted as one JSON log line (and
handed to the alert engine). `record_detached()` writes in a transaction of its own, for what must
be recorded although the request's own work is rolled back: denied access, failed sign-ins.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import event, text, update
from sqlalchemy.orm import Session, sessionmaker

from app import alerts
from app.audit.chain import GENESIS, PLATFORM_TENANT, event_hash, plain
from app.audit.models import AuditChainHead, AuditEvent
from app.db.session import DbContext, apply_context

log = logging.getLogger("palisade.audit")


class Category(StrEnum):
    """The thirteen audit categories (the README explains each)."""

    authentication = "authentication"
    access_denied = "access_denied"
    invitation = "invitation"
    role_change = "role_change"
    membership_removal = "membership_removal"
    workspace_crossing = "workspace_crossing"
    content_change = "content_change"
    data_export = "data_export"
    data_deletion = "data_deletion"
    secret_change = "secret_change"
    configuration_change = "configuration_change"
    approval_decision = "approval_decision"
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
    type: str = "user"  # user | service | anonymous


ANONYMOUS = Actor(issuer=None, subject=None, user_id=None, role=None, type="anonymous")

_ADVANCE_HEAD = text(
    "insert into audit_chain_heads (tenant_id, seq, hash) values (:tenant_id, 1, :genesis) "
    "on conflict (tenant_id) do update set seq = audit_chain_heads.seq + 1 "
    "returning seq, hash"
)



def _trace_id() -> str | None:
    from app.observability.tracing import current_trace_id

    return current_trace_id()


def _ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


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
    """Append one event to the tenant's chain inside the session's transaction."""
    # Locks the chain head until this transaction ends: concurrent writers of one tenant queue here,
    # so sequence numbers stay gap-free and each event links to the one committed before it.
    seq, prev_hash = session.execute(_ADVANCE_HEAD, {"tenant_id": tenant_id, "genesis": GENESIS}).one()
    evt = AuditEvent(
        tenant_id=tenant_id,
        id=uuid.uuid4(),
        seq=seq,
        prev_hash=prev_hash,
        occurred_at=datetime.now(UTC),
        category=category.value,
        action=action,
        outcome=outcome,
        workspace_id=workspace_id,
        actor_type=actor.type,
        actor_user_id=actor.user_id,
        actor_issuer=actor.issuer,
        actor_subject=actor.subject,
        actor_role=actor.role,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        client_ip=_ip(meta.client_ip),
        user_agent=(meta.user_agent or "")[:512] or None,
        correlation_id=meta.correlation_id,
        trace_id=_trace_id(),
        details=details or {},
    )
    evt.hash = event_hash(as_dict(evt))
    session.add(evt)
    session.flush()
    session.execute(update(AuditChainHead).where(AuditChainHead.tenant_id == tenant_id).values(hash=evt.hash))
    session.info.setdefault("audit_pending", []).append(as_dict(evt))
    return evt


def record_vendor_action(session: Session, *, principal: Any, meta: RequestMeta, action: str, details: dict[str, Any] | None = None) -> None:
    """Vendor staff's platform-level action, on the platform chain, in the request's transaction."""
    apply_context(session, DbContext(tenant_id=PLATFORM_TENANT, platform_role="internal_admin"))
    actor = Actor(issuer=principal.issuer, subject=principal.subject, user_id=None, role="internal_admin")
    record(session, tenant_id=PLATFORM_TENANT, actor=actor, meta=meta, category=Category.vendor_access, action=action, details=details)


def record_detached(sessions: sessionmaker[Session], *, tenant_id: uuid.UUID, **fields: Any) -> None:
    """Record in a transaction of its own; best effort: a failure is logged, never raised."""
    try:
        with sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant_id))
            record(session, tenant_id=tenant_id, **fields)
    except Exception:
        log.exception("audit_record_failed", extra={"category": str(fields.get("category")), "action": fields.get("action")})


def as_dict(evt: AuditEvent) -> dict[str, Any]:
    """The event as plain data: what is hashed, logged and exported."""
    return {
        "tenant_id": evt.tenant_id, "seq": evt.seq, "id": evt.id, "occurred_at": evt.occurred_at,
        "category": evt.category, "action": evt.action, "outcome": evt.outcome, "workspace_id": evt.workspace_id,
        "actor_type": evt.actor_type, "actor_user_id": evt.actor_user_id, "actor_issuer": evt.actor_issuer,
        "actor_subject": evt.actor_subject, "actor_role": evt.actor_role, "target_type": evt.target_type,
        "target_id": evt.target_id, "client_ip": evt.client_ip, "user_agent": evt.user_agent,
        "correlation_id": evt.correlation_id, "trace_id": evt.trace_id, "details": evt.details,
        "prev_hash": evt.prev_hash, "hash": evt.hash,
    }


def _emit_committed(session: Session) -> None:
    for evt in session.info.pop("audit_pending", []):
        line = {k: plain(v) for k, v in evt.items()}
        log.info("audit_event", extra={"audit": line})
        alerts.observe_audit_event(line)  # never blocks or raises


def _drop_pending(session: Session) -> None:
    session.info.pop("audit_pending", None)


def install_log_hooks(sessions: sessionmaker[Session]) -> None:
    """After a commit, log each audit event it carried (one JSON line each); after a rollback, none."""
    if not event.contains(sessions, "after_commit", _emit_committed):
        event.listen(sessions, "after_commit", _emit_committed)
        event.listen(sessions, "after_rollback", _drop_pending)
