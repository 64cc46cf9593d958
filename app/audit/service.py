"""Writing audit events: in the same transaction as the action, chained, logged after commit.

`record()` adds the event to the caller's transaction, so the action and its record commit or roll
back together. When the transaction commits, each event is also emitted as one JSON log line (and
handed to the alert engine). `record_detached()` writes in a transaction of its own, for what must
be recorded although the request's own work is rolled back: denied access. Failed sign-ins and
requests refused because the database is busy are buffered and written aggregated
(`app.audit.buffered`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app import alerts
from app.audit.chain import CHAINED_FIELDS, PLATFORM_TENANT, canonical_around_link, plain
from app.audit.models import AuditEvent
from app.db.session import DbContext, apply_context
from app.observability.scrub import register_names

log = logging.getLogger("palisade.audit")
# Every audit line carries these field names; their values are scrubbed on every line as usual.
register_names(("audit", *CHAINED_FIELDS, "hash"))


class Category(StrEnum):
    """The fourteen audit categories (the README explains each)."""

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
    availability = "availability"


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

# One round trip appends the event and moves the chain head, in the caller's transaction, through
# `private.audit_append` (migration 0010): the app role may not write `audit_events` or
# `audit_chain_heads` itself, so it cannot choose an event's link or move a head. The function,
# owned by the schema owner (SECURITY DEFINER, search_path pinned), refuses any tenant but the
# transaction's `app.tenant_id`, then:
# - locks the chain head's row (FOR UPDATE) until this transaction ends, so concurrent writers of
#   one tenant queue there. Under READ COMMITTED a writer that had to wait reads the head as the
#   writer before it committed it (PostgreSQL returns the newest version of a row it waited for),
#   so sequence numbers stay gap-free and each event links to the one committed before it; the
#   unique (tenant_id, seq) index would refuse a duplicate rather than fork the chain. A chain's
#   first event finds no head: the function creates it empty (seq 0, the genesis hash) first; a
#   concurrent first writer's head makes that wait for the writer's transaction, then queue.
# - inserts the event as seq + 1, linked to the head's hash. Its hash is the SHA-256 of the
#   canonical bytes: everything but the link is rendered in Python (`canonical_around_link`), and
#   PostgreSQL puts in the two link values it read under the lock (`link_canonical` computes the
#   same in Python; `palisade audit verify` recomputes every hash from the stored row).
# - moves the head to the new event, and returns (seq, prev_hash, hash).
# Parameters are typed `text` (never `varchar(n)`, which would truncate): the columns check lengths.
_APPEND = (
    "select event_seq, event_prev_hash, event_hash from private.audit_append("
    "p_tenant_id => %(tenant_id)s, p_id => %(id)s, p_occurred_at => %(occurred_at)s, p_category => %(category)s,"
    " p_action => %(action)s, p_outcome => %(outcome)s, p_before => %(before)s, p_after => %(after)s,"
    " p_workspace_id => %(workspace_id)s, p_actor_type => %(actor_type)s, p_actor_user_id => %(actor_user_id)s,"
    " p_actor_issuer => %(actor_issuer)s, p_actor_subject => %(actor_subject)s, p_actor_role => %(actor_role)s,"
    " p_target_type => %(target_type)s, p_target_id => %(target_id)s, p_client_ip => cast(%(client_ip)s as inet),"
    " p_user_agent => %(user_agent)s, p_correlation_id => %(correlation_id)s, p_trace_id => %(trace_id)s,"
    " p_details => cast(%(details)s as jsonb))"
)
# What the function puts between the two link values: the canonical form's own text.
_BETWEEN = b',"seq":'


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
    trace_id: str | None = None,
) -> dict[str, Any]:
    """Append one event to the tenant's chain inside the session's transaction.

    `trace_id` defaults to the current trace's (a buffered event carries the one it was made in).

    Returns the event as plain data (`as_dict`'s shape: what is hashed, logged and exported), a
    copy of what is logged once the transaction commits. No ORM object: one Core statement.
    """
    event: dict[str, Any] = {
        "tenant_id": tenant_id, "seq": None, "id": uuid.uuid4(), "occurred_at": datetime.now(UTC),
        "category": category.value, "action": action, "outcome": outcome, "workspace_id": workspace_id,
        "actor_type": actor.type, "actor_user_id": actor.user_id, "actor_issuer": actor.issuer,
        "actor_subject": actor.subject, "actor_role": actor.role, "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None, "client_ip": _ip(meta.client_ip),
        "user_agent": (meta.user_agent or "")[:512] or None, "correlation_id": meta.correlation_id,
        "trace_id": trace_id or _trace_id(), "details": details or {}, "prev_hash": None, "hash": None,
    }
    before, between, after = canonical_around_link(event)
    if between != _BETWEEN:  # the function's text; chain.py fixes the order, this keeps them in step
        raise RuntimeError("the canonical form's link separator changed; private.audit_append must change with it")
    # `details` as the JSONB type's own serializer (json.dumps) would have written it.
    params = {**event, "details": json.dumps(event["details"]), "before": before, "after": after}
    # Driver-level SQL through the session's connection: the engine's hooks still send BEGIN and
    # the tenant context ahead of it when this is the transaction's first statement.
    row = session.connection().exec_driver_sql(_APPEND, params).one()
    event["seq"], event["prev_hash"], event["hash"] = row
    session.info.setdefault("audit_pending", []).append(event)
    return dict(event)


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
