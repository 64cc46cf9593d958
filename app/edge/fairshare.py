"""Fair share of expensive work (LLM pipeline calls, exports) between tenants.

Design notes
- `FairScheduler(slots)` admits at most `slots` expensive jobs at once in this process. Each tenant
  has its own FIFO queue. Whenever a slot is free, it goes to the waiting tenant with the fewest
  jobs in flight (ties: the tenant admitted least recently, i.e. round robin). Under contention
  every tenant therefore converges to an equal share of the slots (max-min fairness, like deficit
  round robin with one job as the quantum), and a tenant that submits ten times its share only
  queues behind itself: another tenant's job waits for at most the next slot to free up. Without
  contention it is work-conserving: a lone tenant may use every slot.
  `max_in_flight_per_tenant` optionally caps a tenant even then (keeps slots in reserve for the
  next tenant's first job, at the cost of idle capacity).
- No preemption: a running job is never stopped; fairness acts on admission only.
- Bounded: each tenant may have at most `max_queued_per_tenant` jobs waiting; beyond that
  `FairShareSaturated` is raised at once (the caller answers 429/503) and
  `alerts.RATE_LIMIT_SATURATED` is observed with the tenant id (coalesced per second).
- Async and sync: `async with scheduler.slot(tenant_id):` (asyncio; the wait is cancellable and
  `timeout=` bounds it) and `with scheduler.slot_sync(tenant_id):` (threads). Both share one
  state behind a `threading.Lock` held only for bookkeeping, never across a wait, so event-loop
  code and worker threads can use one scheduler. A waiter that is cancelled or times out after its
  slot was granted hands the slot on.
- Across replicas: each replica schedules its own slots fairly; the total is slots × replicas.
  The load balancer spreads every tenant's requests over the replicas, so per-replica fairness
  composes into approximately global fairness, and the shared PostgreSQL rate limits
  (`app.edge.ratelimit`: per user, and the "export"/"upload" classes) cap how fast any tenant can
  submit in aggregate. A strict global cap (e.g. an LLM provider's concurrency quota) would hold one
  PostgreSQL advisory lock per running job (`pg_try_advisory_lock(<class>, <slot 0..N-1>)` on a
  connection kept for the job) inside the local slot; that is not built, as it costs a database
  connection per running job and still needs this local queue for fairness.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from app import alerts


class FairShareSaturated(Exception):
    """The tenant already has `max_queued_per_tenant` jobs waiting: refuse, do not queue."""

    def __init__(self, tenant: Hashable) -> None:
        super().__init__("too many expensive jobs queued for this tenant")
        self.tenant = tenant


class FairShareTimeout(TimeoutError):
    """No slot became free for the tenant within the timeout."""


@dataclass(frozen=True)
class Snapshot:
    """The scheduler's state at one instant (observability, benchmarks, tests)."""

    slots: int
    in_flight: dict[Hashable, int]
    queued: dict[Hashable, int]
    admitted: int
    refused: int


class _Waiter:
    __slots__ = ("tenant", "granted", "_event", "_future", "_loop")

    def __init__(self, tenant: Hashable, loop: asyncio.AbstractEventLoop | None) -> None:
        self.tenant = tenant
        self.granted = False
        self._loop = loop
        self._future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None
        self._event: threading.Event | None = None if loop is not None else threading.Event()

    def wake(self) -> None:
        if self._future is not None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_resolve, self._future)
        else:
            assert self._event is not None
            self._event.set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FairScheduler:
    """At most `slots` expensive jobs at once, shared fairly between tenants (see the module notes)."""

    def __init__(
        self,
        slots: int,
        *,
        max_queued_per_tenant: int | None = 1000,
        max_in_flight_per_tenant: int | None = None,
        name: str = "expensive",
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if max_in_flight_per_tenant is not None and max_in_flight_per_tenant < 1:
            raise ValueError("max_in_flight_per_tenant must be at least 1")
        self.slots = slots
        self.name = name
        self._max_queued = max_queued_per_tenant
        self._cap = max_in_flight_per_tenant
        self._lock = threading.Lock()
        self._in_flight: dict[Hashable, int] = {}
        self._queues: dict[Hashable, deque[_Waiter]] = {}
        self._last_admitted: dict[Hashable, int] = {}
        self._seq = itertools.count(1)
        self._running = 0
        self._admitted = 0
        self._refused = 0
        self._alerted: dict[Hashable, tuple[int, float]] = {}

    # ---- public API ---------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, tenant: Hashable, *, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold one slot for `tenant` while the block runs; waits (cancellably) for its turn."""
        waiter = self._enqueue(tenant, asyncio.get_running_loop())
        if not waiter.granted:
            assert waiter._future is not None
            try:
                if timeout is None:
                    await waiter._future
                else:
                    async with asyncio.timeout(timeout):
                        await waiter._future
            except TimeoutError:
                if self._abandon(waiter):
                    raise FairShareTimeout(f"no {self.name} slot within {timeout} s") from None
                # Granted in the same instant the timeout struck: the slot is ours, use it.
            except BaseException:
                if not self._abandon(waiter):
                    # Granted in the same instant it was cancelled: it holds a slot, hand it on.
                    self._release(tenant)
                raise
        try:
            yield
        finally:
            self._release(tenant)

    @contextmanager
    def slot_sync(self, tenant: Hashable, *, timeout: float | None = None) -> Iterator[None]:
        """`slot` for threads: blocks the calling thread until the tenant's turn (or `timeout`)."""
        waiter = self._enqueue(tenant, None)
        if not waiter.granted:
            assert waiter._event is not None
            if not waiter._event.wait(timeout) and self._abandon(waiter):
                raise FairShareTimeout(f"no {self.name} slot within {timeout} s")
        try:
            yield
        finally:
            self._release(tenant)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                slots=self.slots,
                in_flight=dict(self._in_flight),
                queued={t: len(q) for t, q in self._queues.items()},
                admitted=self._admitted,
                refused=self._refused,
            )

    # ---- internals ----------------------------------------------------------------------------

    def _enqueue(self, tenant: Hashable, loop: asyncio.AbstractEventLoop | None) -> _Waiter:
        waiter = _Waiter(tenant, loop)
        with self._lock:
            queue = self._queues.get(tenant)
            if self._max_queued is not None and queue is not None and len(queue) >= self._max_queued:
                self._refused += 1
                saturated = True
            else:
                saturated = False
                if queue is None:
                    queue = self._queues[tenant] = deque()
                queue.append(waiter)
                woken = self._dispatch_locked()
        if saturated:
            self._observe_saturation(tenant)
            raise FairShareSaturated(tenant)
        for other in woken:
            if other is not waiter:
                other.wake()
        return waiter

    def _abandon(self, waiter: _Waiter) -> bool:
        """Take a waiter out of its queue; False when it was granted meanwhile (it holds a slot)."""
        with self._lock:
            if waiter.granted:
                return False
            queue = self._queues.get(waiter.tenant)
            if queue is not None:
                try:
                    queue.remove(waiter)
                except ValueError:
                    pass
                if not queue:
                    del self._queues[waiter.tenant]
            return True

    def _release(self, tenant: Hashable) -> None:
        with self._lock:
            left = self._in_flight[tenant] - 1
            if left:
                self._in_flight[tenant] = left
            else:
                del self._in_flight[tenant]
            self._running -= 1
            woken = self._dispatch_locked()
        for waiter in woken:
            waiter.wake()

    def _dispatch_locked(self) -> list[_Waiter]:
        """Grant free slots: each to the waiting tenant with the fewest in flight, then least recently admitted."""
        woken: list[_Waiter] = []
        while self._running < self.slots and self._queues:
            best: Hashable | None = None
            best_key: tuple[int, int] | None = None
            for tenant in self._queues:
                in_flight = self._in_flight.get(tenant, 0)
                if self._cap is not None and in_flight >= self._cap:
                    continue
                key = (in_flight, self._last_admitted.get(tenant, 0))
                if best_key is None or key < best_key:
                    best, best_key = tenant, key
            if best_key is None:
                break  # every waiting tenant is at its cap
            queue = self._queues[best]
            waiter = queue.popleft()
            if not queue:
                del self._queues[best]
            waiter.granted = True
            self._in_flight[best] = self._in_flight.get(best, 0) + 1
            self._last_admitted[best] = next(self._seq)
            self._running += 1
            self._admitted += 1
            woken.append(waiter)
        if len(self._last_admitted) > 4 * (len(self._in_flight) + len(self._queues)) + 1024:
            # Forget tenants that are neither running nor waiting (keeps the map bounded).
            live = self._in_flight.keys() | self._queues.keys()
            self._last_admitted = {t: s for t, s in self._last_admitted.items() if t in live}
        return woken

    def _observe_saturation(self, tenant: Hashable) -> None:
        now = time.monotonic()
        with self._lock:
            pending, last = self._alerted.pop(tenant, (0, -math.inf))
            pending += 1
            emit = now - last >= 1.0
            self._alerted[tenant] = (0, now) if emit else (pending, last)
            while len(self._alerted) > 10_000:
                del self._alerted[next(iter(self._alerted))]
        if emit:
            alerts.observe(alerts.RATE_LIMIT_SATURATED, str(tenant), value=pending, details={"scheduler": self.name})
