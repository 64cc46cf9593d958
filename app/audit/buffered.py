"""Refusals that come in floods reach the audit trail aggregated, from a buffer, never one chain write each.

Why (issue 15): each failed sign-in used to be one event on the platform chain in a transaction of
its own, so a flood of bad tokens from many addresses queued every request that writes to that
chain behind one head row, and a failed sign-in while the database was down was not recorded at
all. A request refused because the database is busy (a lock, statement or pool timeout) cannot be
written at the moment of refusal either: the database is what is saturated.

How: `AuditBuffer.add()` only updates an in-process dict (no I/O, never raises). Events are
aggregated by what an auditor asks about: the tenant whose chain gets them (the platform chain
when the tenant is unknown), category, action, outcome, client address, actor, and a few bounded
`labels` (a reason, a route template; never free text). A background thread flushes every
`interval` seconds: per tenant, one transaction appends one event per aggregate, whose `details`
say how many occurrences it stands for (`count`), the first and last time (`first_at`, `last_at`),
up to 10 of their correlation ids, and the labels; the event's own correlation and trace ids are
the first occurrence's. So a chain's head is locked once per interval per replica, whatever the
flood. If a tenant's write fails (database down, its chain locked past `lock_timeout`), that
tenant's aggregates stay buffered and are written by a later flush with their original times;
the other tenants' are written all the same. `stop()` flushes once more. Bounded: past `max_keys`
distinct aggregates, further occurrences are folded into one aggregate per tenant, category,
action and labels with no address and an anonymous actor (`details.overflow` true), so memory
stays flat under a flood from random addresses while nothing goes uncounted.

What is lost: what is buffered in a process that dies before its next flush (at most `interval`
seconds' worth, or everything since the database went down). The rate limiter counts failed
sign-ins separately (`app.edge.ratelimit`), in-process while its store is unreachable.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from app.audit.chain import PLATFORM_TENANT
from app.audit.service import ANONYMOUS, Actor, Category, RequestMeta, record
from app.db.session import DbContext, apply_context

log = logging.getLogger("palisade.audit")

MAX_CORRELATION_IDS = 10
BATCH = 500  # events per transaction


@dataclass(frozen=True)
class _Key:
    tenant_id: uuid.UUID
    category: Category
    action: str
    outcome: str
    labels: tuple[tuple[str, str], ...]
    client_ip: str | None
    actor: Actor


@dataclass
class _Aggregate:
    count: int
    first_at: datetime
    last_at: datetime
    user_agent: str | None
    trace_id: str | None
    correlation_ids: list[str] = field(default_factory=list)
    overflow: bool = False

    def merge(self, later: _Aggregate) -> None:
        self.count += later.count
        self.first_at, self.last_at = min(self.first_at, later.first_at), max(self.last_at, later.last_at)
        room = MAX_CORRELATION_IDS - len(self.correlation_ids)
        self.correlation_ids.extend(later.correlation_ids[:max(0, room)])
        self.overflow = self.overflow or later.overflow


class AuditBuffer:
    """The buffer between flooding refusals and the audit chains (see the module's docstring)."""

    def __init__(self, sessions: sessionmaker[Session], *, interval: float = 1.0, max_keys: int = 10_000) -> None:
        self._sessions = sessions
        self._interval = interval
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._pending: dict[_Key, _Aggregate] = {}
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, *, category: Category, action: str, actor: Actor, meta: RequestMeta,
            tenant_id: uuid.UUID | None = None, outcome: str = "denied", trace_id: str | None = None,
            labels: Mapping[str, str] | None = None) -> None:
        """Buffer one occurrence (`labels`: bounded values only). No I/O; never raises."""
        now = datetime.now(UTC)
        one = _Aggregate(count=1, first_at=now, last_at=now, user_agent=(meta.user_agent or "")[:512] or None,
                         trace_id=trace_id, correlation_ids=[meta.correlation_id] if meta.correlation_id else [])
        key = _Key(tenant_id or PLATFORM_TENANT, category, action, outcome, tuple(sorted((labels or {}).items())),
                   meta.client_ip, actor)
        with self._lock:
            if key not in self._pending and len(self._pending) >= self._max_keys:
                key = _Key(key.tenant_id, category, action, outcome, key.labels, None, ANONYMOUS)
                one.overflow = True
            self._merge(key, one)

    def _merge(self, key: _Key, aggregate: _Aggregate) -> None:
        existing = self._pending.get(key)
        if existing is None:
            self._pending[key] = aggregate
        else:
            existing.merge(aggregate)

    def pending(self) -> int:
        """How many occurrences are buffered, not yet on a chain."""
        with self._lock:
            return sum(a.count for a in self._pending.values())

    def flush(self) -> int:
        """Write what is buffered (one event per aggregate, one transaction per tenant and batch);
        returns the occurrences written. A tenant whose write fails keeps its aggregates buffered
        (the error is logged); the others are written all the same."""
        with self._flush_lock:
            with self._lock:
                taken, self._pending = self._pending, {}
            by_tenant: dict[uuid.UUID, list[tuple[_Key, _Aggregate]]] = {}
            for key, aggregate in taken.items():
                by_tenant.setdefault(key.tenant_id, []).append((key, aggregate))
            written = 0
            for tenant_id, items in by_tenant.items():
                for start in range(0, len(items), BATCH):
                    batch = items[start:start + BATCH]
                    try:
                        self._write(tenant_id, batch)
                    except Exception as exc:
                        with self._lock:
                            for key, aggregate in items[start:]:
                                self._merge(key, aggregate)
                        log.error("audit_buffer_flush_failed", extra={
                            "error": type(exc).__name__, "buffered": sum(a.count for _, a in items[start:])})
                        break
                    written += sum(a.count for _, a in batch)
            return written

    def _write(self, tenant_id: uuid.UUID, batch: list[tuple[_Key, _Aggregate]]) -> None:
        with self._sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant_id))
            for key, aggregate in batch:
                details: dict[str, object] = {
                    **dict(key.labels),
                    "count": aggregate.count,
                    "first_at": aggregate.first_at.isoformat(),
                    "last_at": aggregate.last_at.isoformat(),
                    "correlation_ids": aggregate.correlation_ids,
                }
                if aggregate.overflow:
                    details["overflow"] = True
                meta = RequestMeta(client_ip=key.client_ip, user_agent=aggregate.user_agent,
                                   correlation_id=aggregate.correlation_ids[0] if aggregate.correlation_ids else None)
                record(session, tenant_id=tenant_id, actor=key.actor, meta=meta, category=key.category,
                       action=key.action, outcome=key.outcome, details=details, trace_id=aggregate.trace_id)

    # -- the background flusher --

    def start(self) -> AuditBuffer:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="palisade-audit-buffer", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                self.flush()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the flusher and write what is left (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
