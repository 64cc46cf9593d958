"""Failed sign-ins reach the platform chain aggregated, from a buffer, never one chain write per request.

Why (issue 15): each failed sign-in used to be one event on the platform chain in a transaction of
its own, so a flood of bad tokens from many addresses queued every request that writes to that
chain (vendor actions, refusals outside a tenant) behind one head row, and a failed sign-in while
the database was down was not recorded at all.

How: `SignInFailures.add()` only updates an in-process dict (no I/O, never raises). Failures are
aggregated by what an auditor asks about: the action (`token.missing`, `token.rejected`,
`token.vendor_role_refused`), the client address, and the issuer and subject the refused party
named (only when a trusted issuer vouched for them; a rejected token's claims are never recorded).
A background thread flushes every `interval` seconds: one transaction appends one event per
aggregate (`outcome` "denied"), whose `details` say how many failures it stands for (`count`), the
first and last time (`first_at`, `last_at`), and up to 10 of their correlation ids; the event's
own correlation and trace ids are the first failure's. So the platform chain's head is locked once
per interval per replica, whatever the flood. If the flush fails (database down), the aggregates
stay buffered and are written by a later flush, with their original times; `stop()` flushes once
more. Bounded: past `max_keys` distinct aggregates, further failures are folded into one
aggregate per action with no address (`details.overflow` true), so memory stays flat under a
flood from random addresses while nothing goes uncounted.

What is lost: failures buffered in a process that dies before its next flush (at most `interval`
seconds' worth, or everything since the database went down). The rate limiter counts failed
sign-ins separately (`app.edge.ratelimit`), in-process while its store is unreachable.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from app.audit.chain import PLATFORM_TENANT
from app.audit.service import Actor, Category, RequestMeta, record
from app.db.session import DbContext, apply_context

log = logging.getLogger("palisade.audit")

MAX_CORRELATION_IDS = 10
BATCH = 500  # events per transaction


@dataclass(frozen=True)
class _Key:
    action: str
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


class SignInFailures:
    """The buffer between failed sign-ins and the platform chain (see the module's docstring)."""

    def __init__(self, sessions: sessionmaker[Session], *, interval: float = 1.0, max_keys: int = 10_000) -> None:
        self._sessions = sessions
        self._interval = interval
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._pending: dict[_Key, _Aggregate] = {}
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, *, action: str, actor: Actor, meta: RequestMeta, trace_id: str | None = None) -> None:
        """Buffer one failed sign-in. No I/O; never raises."""
        now = datetime.now(UTC)
        one = _Aggregate(count=1, first_at=now, last_at=now, user_agent=(meta.user_agent or "")[:512] or None,
                         trace_id=trace_id, correlation_ids=[meta.correlation_id] if meta.correlation_id else [])
        key = _Key(action, meta.client_ip, actor)
        with self._lock:
            if key not in self._pending and len(self._pending) >= self._max_keys:
                key = _Key(action, None, Actor(issuer=None, subject=None, user_id=None, role=None, type="anonymous"))
                one.overflow = True
            self._merge(key, one)

    def _merge(self, key: _Key, aggregate: _Aggregate) -> None:
        existing = self._pending.get(key)
        if existing is None:
            self._pending[key] = aggregate
        else:
            existing.merge(aggregate)
            existing.overflow = existing.overflow or aggregate.overflow

    def pending(self) -> int:
        """How many failures are buffered, not yet on the chain."""
        with self._lock:
            return sum(a.count for a in self._pending.values())

    def flush(self) -> int:
        """Write what is buffered (one event per aggregate); returns the failures written. On a
        database error the aggregates go back into the buffer and the error is logged."""
        with self._flush_lock:
            with self._lock:
                taken, self._pending = self._pending, {}
            items = list(taken.items())
            written = 0
            for start in range(0, len(items), BATCH):
                batch = items[start:start + BATCH]
                try:
                    self._write(batch)
                except Exception as exc:
                    with self._lock:
                        for key, aggregate in items[start:]:
                            self._merge(key, aggregate)
                    log.error("sign_in_audit_flush_failed", extra={"error": type(exc).__name__,
                                                                    "buffered": sum(a.count for _, a in items[start:])})
                    break
                written += sum(a.count for _, a in batch)
            return written

    def _write(self, batch: list[tuple[_Key, _Aggregate]]) -> None:
        with self._sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=PLATFORM_TENANT))
            for key, aggregate in batch:
                details: dict[str, object] = {
                    "count": aggregate.count,
                    "first_at": aggregate.first_at.isoformat(),
                    "last_at": aggregate.last_at.isoformat(),
                    "correlation_ids": aggregate.correlation_ids,
                }
                if aggregate.overflow:
                    details["overflow"] = True
                meta = RequestMeta(client_ip=key.client_ip, user_agent=aggregate.user_agent,
                                   correlation_id=aggregate.correlation_ids[0] if aggregate.correlation_ids else None)
                record(session, tenant_id=PLATFORM_TENANT, actor=key.actor, meta=meta, category=Category.authentication,
                       action=key.action, outcome="denied", details=details, trace_id=aggregate.trace_id)

    # -- the background flusher --

    def start(self) -> SignInFailures:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="palisade-sign-in-audit", daemon=True)
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
