"""Reading the audit trail (under the transaction's tenant context, like every query)."""

from __future__ import annotations

import ipaddress
import json
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, String, Text, cast, func, or_, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Session

from app.audit.chain import CHAINED_FIELDS
from app.audit.models import AuditChainHead, AuditEvent


@dataclass(frozen=True)
class EventFilter:
    category: str | None = None
    actor: str | None = None  # a user id or an IdP subject
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None


def _filtered(tenant_id: uuid.UUID, f: EventFilter) -> Select[tuple[AuditEvent]]:
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if f.category:
        query = query.where(AuditEvent.category == f.category)
    if f.actor:
        actor_match = [AuditEvent.actor_subject == f.actor]
        try:
            actor_match.append(AuditEvent.actor_user_id == uuid.UUID(f.actor))
        except ValueError:
            pass
        query = query.where(or_(*actor_match))
    if f.target_id:
        query = query.where(AuditEvent.target_id == f.target_id)
    if f.since:
        query = query.where(AuditEvent.occurred_at >= f.since)
    if f.until:
        query = query.where(AuditEvent.occurred_at < f.until)
    if f.correlation_id:
        query = query.where(AuditEvent.correlation_id == f.correlation_id)
    return query


def page(session: Session, tenant_id: uuid.UUID, f: EventFilter, *, limit: int, before_seq: int | None) -> Sequence[AuditEvent]:
    """Newest first, keyset-paginated on the chain's sequence number."""
    query = _filtered(tenant_id, f)
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    return session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)).all()


def stream(session: Session, tenant_id: uuid.UUID, f: EventFilter | None = None, *, batch: int = 500) -> Iterator[AuditEvent]:
    """Oldest first through a server-side cursor: memory stays flat however long the trail."""
    query = _filtered(tenant_id, f or EventFilter()).order_by(AuditEvent.seq)
    yield from session.scalars(query.execution_options(yield_per=batch))


@lru_cache(maxsize=4096)
def _ip_text(value: str) -> str:
    """An inet column's output text as the driver's loader and `chain.plain` render it."""
    return str(ipaddress.ip_interface(value) if "/" in value else ipaddress.ip_address(value))


@lru_cache(maxsize=4096)
def _details(value: str) -> Any:
    """A jsonb column's text parsed as the driver parses it (shared: callers must not modify it)."""
    return json.loads(value)


def _link_column(name: str) -> Any:
    column = AuditEvent.__table__.c[name]
    # uuid's text form is canonical (lower-case, hyphenated): what `str(UUID)` gives, without
    # building the object. inet comes as its output text (format %s; a cast to text would add
    # "/32"), which is what the driver's loader reads; jsonb as text, parsed once per distinct
    # value (most events carry the same few). Both caches above keep memory bounded.
    if isinstance(column.type, UUID):
        return cast(column, String).label(name)
    if name == "client_ip":
        return func.nullif(func.format("%s", column), "").label(name)
    if name == "details":
        return cast(column, Text).label(name)
    return column


_LINK_NAMES = (*CHAINED_FIELDS, "hash")
_LINK_COLUMNS = tuple(_link_column(name) for name in _LINK_NAMES)


def chain_links(session: Session, tenant_id: uuid.UUID, *, batch: int = 2000) -> Iterator[dict[str, Any]]:
    """Oldest first, every event's chained fields and hash as plain values, for `chain.verify_chain`.

    Core rows through a server-side cursor (memory stays flat however long the chain), not ORM
    objects: building a million of those is most of what verifying a long chain would otherwise
    spend. The values hash exactly as `service.as_dict` of the stored row does; parsed `details`
    are shared between events, so they are read, never modified.
    """
    query = (select(*_LINK_COLUMNS).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.seq)
             .execution_options(yield_per=batch))
    names, ip_text, details = _LINK_NAMES, _ip_text, _details
    # Through the session's connection: plain Core rows, no ORM result layer around them.
    with session.connection().execute(query) as result:
        for rows in _read_ahead(result.partitions()):
            for row in rows:
                event = dict(zip(names, row, strict=True))
                if event["client_ip"] is not None:
                    event["client_ip"] = ip_text(event["client_ip"])
                event["details"] = details(event["details"])
                yield event


_END = object()


def _read_ahead(batches: Iterator[Sequence[Any]]) -> Iterator[Sequence[Any]]:
    """The next batch is fetched by a thread while the caller works on this one.

    The server produces rows while Python hashes the previous batch (the driver releases the GIL
    while it waits). At most three batches are held at once (the caller's, one handed over, one
    being fetched), so memory stays flat. When the caller stops early, the thread finishes its
    fetch and ends before the connection is used again.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(_END)
        except BaseException as exc:  # handed to the caller's thread, raised there
            offer(exc)

    thread = threading.Thread(target=pump, name="audit-chain-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def head(session: Session, tenant_id: uuid.UUID) -> tuple[int, str] | None:
    row = session.get(AuditChainHead, tenant_id)
    return (row.seq, row.hash) if row else None


def chained_tenants(session: Session) -> Sequence[uuid.UUID]:
    """Tenants whose chain head is visible in the current context."""
    return session.scalars(select(AuditChainHead.tenant_id)).all()
