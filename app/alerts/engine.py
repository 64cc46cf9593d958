"""The alert engine: observations are counted in PostgreSQL, firings claimed there, webhooks signed.

Design notes
- `observe()` never blocks and never raises: it looks the signal up, puts the observation on a
  bounded queue and returns; when the queue is full the observation is dropped and counted.
- One worker thread counts what is queued (up to `COUNT_BATCH` observations at a time: a flood of
  refusals from many addresses is one statement per rule, not one per refusal) with a single
  statement per rule: an upsert of each key's fixed-window counter (same-key values summed) and,
  when a count reaches the threshold, an upsert of the rule+key firing row that succeeds only when
  the previous firing is older than the cooldown
  (`ON CONFLICT ... DO UPDATE ... WHERE fired_at <= now - cooldown RETURNING`). The row lock and
  re-check of `ON CONFLICT DO UPDATE` make the claim atomic, so across any number of replicas
  exactly one of them notifies per rule, key and cooldown. Window and firing times come from the
  database clock (one clock for every replica), unless a test injects one.
- A delivery thread POSTs each claimed firing to the webhook, signed
  `X-Palisade-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, retrying connection
  errors, timeouts, 5xx and 429 with exponential backoff and jitter (bounded attempts). Other 4xx
  are not retried. A firing that is never delivered releases its claim, so the next observation
  may notify again instead of being silenced for the cooldown.
- Details pass `app.observability.scrub.scrub` before they leave the process; keys carry ids only.
- Old counter windows are pruned opportunistically by whichever replica gets there.
- The tables (`alert_counters`, `alert_firings`) hold no `tenant_id` column: they are platform
  state; a per-tenant rule puts the tenant id inside its key.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from sqlalchemy import Engine, text

from app.alerts.rules import DEFAULT_RULES, Rule, observations_for_audit_event, validate
from app.observability.scrub import scrub

log = logging.getLogger("palisade.alerts")

MAX_KEY_LENGTH = 256
MAX_DETAILS_BYTES = 8192
# Observations counted together: the queue's contents, up to this many, in one statement per rule.
COUNT_BATCH = 1000
SIGNATURE_HEADER = "X-Palisade-Signature"
DELIVERY_HEADER = "X-Palisade-Delivery"

# Counts a batch of one rule's keys in one statement (keys distinct and sorted: every replica takes
# the counters' row locks in the same order), claiming the firing of each key that reached the threshold.
_COUNT = text(
    """
    with t as (select coalesce(cast(:now as timestamptz), now()) as now),
    i as (select * from unnest(cast(:keys as text[]), cast(:incs as bigint[])) as i(key, inc)),
    c as (
      insert into alert_counters as ac (rule, key, window_start, count)
      select :rule, i.key,
             to_timestamp(floor(extract(epoch from t.now) / cast(:window as integer)) * cast(:window as integer)),
             i.inc
        from i, t
      on conflict (rule, key, window_start) do update set count = ac.count + excluded.count
      returning ac.key, ac.count
    ),
    f as (
      insert into alert_firings as af (rule, key, fired_at)
      select :rule, c.key, t.now from c, t where c.count >= cast(:threshold as double precision)
      on conflict (rule, key) do update set fired_at = excluded.fired_at
       where af.fired_at <= excluded.fired_at - make_interval(secs => cast(:cooldown as double precision))
      returning af.key, af.fired_at
    )
    select c.key, c.count, f.fired_at from c left join f on f.key = c.key
    """
)
_CLAIM = text(
    """
    with t as (select coalesce(cast(:now as timestamptz), now()) as now)
    insert into alert_firings as af (rule, key, fired_at)
    select :rule, :key, t.now from t
    on conflict (rule, key) do update set fired_at = excluded.fired_at
     where af.fired_at <= excluded.fired_at - make_interval(secs => cast(:cooldown as double precision))
    returning af.fired_at
    """
)

# Only our own claim is released: a newer firing (another replica, later) keeps its row.
_RELEASE = text(
    "update alert_firings set fired_at = '-infinity' where rule = :rule and key = :key and fired_at = :fired_at"
)

# In bounded batches, so one prune never holds many row locks or runs long.
_PRUNE = text(
    """
    delete from alert_counters where ctid = any (array(
      select ctid from alert_counters
       where window_start < coalesce(cast(:now as timestamptz), now()) - make_interval(secs => cast(:keep as double precision))
       limit 5000))
    """
)


class AlertSettings(Protocol):
    alert_webhook_url: str | None
    alert_webhook_secret: Any
    http_timeout_seconds: float


@dataclass(frozen=True)
class _Observed:
    signal: str
    key: str
    value: float
    details: dict[str, Any] | None
    at: datetime | None = None  # only with an injected clock; otherwise the database's now()


@dataclass
class _Delivery:
    rule: Rule
    key: str
    body: bytes
    fired_at: datetime
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attempt: int = 0


def _secret_value(secret: Any) -> str | None:
    if secret is None:
        return None
    getter = getattr(secret, "get_secret_value", None)
    return getter() if callable(getter) else str(secret)


def _normalise_key(key: object) -> str:
    key = key if isinstance(key, str) else str(key)
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]
    return key[: MAX_KEY_LENGTH - 17] + "~" + digest


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for a body sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class AlertEngine:
    """Counts observations against the rules and notifies the webhook once per rule, key and cooldown."""

    def __init__(
        self,
        db: Engine,
        settings: AlertSettings,
        *,
        rules: Iterable[Rule] | None = None,
        queue_size: int = 10_000,
        delivery_queue_size: int = 1_000,
        max_attempts: int = 5,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        prune_interval: float = 300.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._db = db
        self._url = settings.alert_webhook_url or None
        self._secret = _secret_value(settings.alert_webhook_secret)
        if self._url and not self._secret:
            raise ValueError("PALISADE_ALERT_WEBHOOK_URL is set without PALISADE_ALERT_WEBHOOK_SECRET: alerts are signed")
        self._timeout = float(getattr(settings, "http_timeout_seconds", 5.0))
        self.rules = validate(DEFAULT_RULES if rules is None else rules)
        self._by_signal: dict[str, tuple[Rule, ...]] = {}
        for rule in self.rules:
            self._by_signal[rule.signal] = (*self._by_signal.get(rule.signal, ()), rule)
        count_windows = [r.window_seconds for r in self.rules if r.kind == "count"]
        self._keep_seconds = max([3600, *(2 * w for w in count_windows)])
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._max_attempts = max_attempts
        self._base_delay = retry_base_delay
        self._max_delay = retry_max_delay
        self._prune_interval = prune_interval
        self._clock = clock

        self._queue: queue.Queue[_Observed | None] = queue.Queue(maxsize=queue_size)
        self._delivery_queue_size = delivery_queue_size
        self._deliveries: list[tuple[float, int, _Delivery]] = []  # heap by due time
        self._seq = itertools.count()
        self._lock = threading.Condition()
        self._unfinished = 0
        self._accepting = True
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: httpx.Client | None = None
        self._last_prune = -math.inf
        self._stats = dict.fromkeys(
            ("observed", "dropped", "ignored", "counted", "fired", "delivered", "delivery_attempts",
             "delivery_failed", "delivery_dropped", "errors"),
            0,
        )

    # ---- the caller's side: never blocks, never raises --------------------------------------

    def observe(self, signal: str, key: str, *, value: float = 1.0, details: dict[str, Any] | None = None) -> None:
        """Record one observation of `signal` for `key`; returns at once, whatever happens later."""
        try:
            if signal not in self._by_signal:
                self._bump("ignored")
                return
            item = _Observed(signal, _normalise_key(key), float(value), dict(details) if details else None,
                             self._clock() if self._clock is not None else None)
            with self._lock:
                if not self._accepting:
                    self._stats["dropped"] += 1
                    return
                self._unfinished += 1
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                with self._lock:
                    self._unfinished -= 1
                    self._stats["dropped"] += 1
                    self._lock.notify_all()
                return
            self._bump("observed")
        except Exception:  # bad arguments or a bug here must still not reach the caller
            try:
                self._bump("errors")
            except Exception:
                pass

    def observe_audit_event(self, event: Mapping[str, Any]) -> None:
        """Feed a committed audit event (its log-line dict) to the rules; for `audit.committed_hooks`."""
        try:
            for obs in observations_for_audit_event(event):
                self.observe(obs.signal, obs.key, value=obs.value, details=obs.details)
        except Exception:
            self._bump("errors")

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    @property
    def dropped(self) -> int:
        return self.stats["dropped"]

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> AlertEngine:
        if self._threads:
            return self
        if self._url:
            self._http = httpx.Client(timeout=self._timeout, follow_redirects=False)
        else:
            log.warning("alert_webhook_unset", extra={"effect": "firings are logged, not delivered"})
        self._stopping.clear()
        with self._lock:
            self._accepting = True
        self._threads = [
            threading.Thread(target=self._count_loop, name="palisade-alerts-count", daemon=True),
            threading.Thread(target=self._deliver_loop, name="palisade-alerts-deliver", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted observation is counted and every firing delivered or given up."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._unfinished > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop accepting, drain what is queued (within `timeout`), then end the threads."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._accepting = False
        drained = self.flush(timeout) if self._threads else True
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        try:
            self._queue.put_nowait(None)  # wakes the counting thread
        except queue.Full:
            pass
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        self._threads = []
        if self._http is not None:
            self._http.close()
            self._http = None
        if not drained:
            log.warning("alert_stop_undrained", extra={"pending": self._unfinished})
        return drained

    # ---- counting (worker thread) -------------------------------------------------------------

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    def _done(self) -> None:
        with self._lock:
            self._unfinished -= 1
            self._lock.notify_all()

    def _now(self) -> datetime | None:
        return self._clock() if self._clock is not None else None

    def _count_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < COUNT_BATCH:  # whatever else is queued goes in the same statements
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                # None: stop()'s wake-up call (a stale one after a restart is skipped).
                self._count([item for item in batch if item is not None])
                self._maybe_prune()
            finally:
                for _ in batch:
                    self._done()

    def _count(self, items: list[_Observed]) -> None:
        """Count `items`: per count rule, one statement for all their keys (same-key values summed);
        a gauge rule claims per item."""
        merged: dict[tuple[str, datetime | None], dict[str, tuple[int, int, _Observed]]] = {}
        for item in items:
            for rule in self._by_signal.get(item.signal, ()):
                if not math.isfinite(item.value):
                    continue
                if rule.kind == "gauge":
                    self._guarded(rule, self._claim_gauge, rule, item)
                    continue
                increment = int(round(item.value))
                if increment >= 1:
                    keys = merged.setdefault((rule.name, item.at), {})
                    total, observations, _ = keys.get(item.key, (0, 0, item))
                    keys[item.key] = (total + increment, observations + 1, item)  # the latest item speaks for the key
        for (name, at), keys in merged.items():
            rule = next(r for r in self.rules if r.name == name)
            self._guarded(rule, self._count_keys, rule, at, keys)

    def _guarded(self, rule: Rule, count: Callable[..., None], *args: Any) -> None:
        try:
            count(*args)
        except Exception as exc:
            self._bump("errors")
            log.warning("alert_count_failed", extra={"rule": rule.name, "error": type(exc).__name__})

    def _claim_gauge(self, rule: Rule, item: _Observed) -> None:
        if item.value < rule.threshold:
            return
        params = {"now": item.at, "rule": rule.name, "key": item.key, "cooldown": float(rule.cooldown_seconds)}
        with self._db.begin() as conn:
            fired_at = conn.execute(_CLAIM, params).scalar()
        if fired_at is not None:
            self._fire(rule, item, item.value, fired_at)

    def _count_keys(self, rule: Rule, at: datetime | None, keys: dict[str, tuple[int, int, _Observed]]) -> None:
        ordered = sorted(keys)
        with self._db.begin() as conn:
            rows = conn.execute(_COUNT, {
                "now": at, "rule": rule.name, "keys": ordered, "incs": [keys[k][0] for k in ordered],
                "window": rule.window_seconds, "threshold": float(rule.threshold),
                "cooldown": float(rule.cooldown_seconds)}).all()
        self._bump("counted", sum(keys[k][1] for k in ordered))
        for row in rows:
            if row.fired_at is not None:
                self._fire(rule, keys[row.key][2], row.count, row.fired_at)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < self._prune_interval:
            return
        self._last_prune = now
        try:
            with self._db.begin() as conn:
                conn.execute(_PRUNE, {"now": self._now(), "keep": float(self._keep_seconds)})
        except Exception as exc:
            self._bump("errors")
            log.warning("alert_prune_failed", extra={"error": type(exc).__name__})

    def _scrubbed(self, details: dict[str, Any] | None) -> dict[str, Any]:
        if not details:
            return {}
        try:
            cleaned = scrub(details)
        except Exception:
            return {"withheld": "the details could not be scrubbed"}
        if not isinstance(cleaned, Mapping):
            cleaned = {"value": cleaned}
        cleaned = dict(cleaned)
        encoded = json.dumps(cleaned, default=str)
        if len(encoded.encode()) > MAX_DETAILS_BYTES:
            return {"withheld": f"the details exceeded {MAX_DETAILS_BYTES} bytes"}
        return json.loads(encoded)

    def _fire(self, rule: Rule, item: _Observed, count: float, fired_at: datetime) -> None:
        self._bump("fired")
        count_out: float | int = int(count) if float(count).is_integer() else count
        threshold: float | int = int(rule.threshold) if float(rule.threshold).is_integer() else rule.threshold
        payload = {
            "rule": rule.name,
            "key": item.key,
            "count": count_out,
            "window_seconds": rule.window_seconds,
            "threshold": threshold,
            "fired_at": fired_at.astimezone(UTC).isoformat(),
            "details": self._scrubbed(item.details),
        }
        log.warning("alert_fired", extra={"rule": rule.name, "key": item.key, "count": count_out, "severity": rule.severity})
        if not self._url:
            return
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        delivery = _Delivery(rule=rule, key=item.key, body=body, fired_at=fired_at)
        with self._lock:
            if len(self._deliveries) >= self._delivery_queue_size:
                self._stats["delivery_dropped"] += 1
                drop = True
            else:
                self._unfinished += 1
                heapq.heappush(self._deliveries, (time.monotonic(), next(self._seq), delivery))
                self._lock.notify_all()
                drop = False
        if drop:
            self._release(delivery)

    # ---- delivery (delivery thread) -----------------------------------------------------------

    def _deliver_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping.is_set():
                    if self._deliveries and self._deliveries[0][0] <= time.monotonic():
                        break
                    wait = self._deliveries[0][0] - time.monotonic() if self._deliveries else None
                    self._lock.wait(0.5 if wait is None else min(wait, 0.5))
                if self._stopping.is_set():
                    abandoned = len(self._deliveries)
                    self._deliveries.clear()
                    self._unfinished -= abandoned
                    self._lock.notify_all()
                    if abandoned:
                        log.warning("alert_deliveries_abandoned", extra={"count": abandoned})
                    return
                _, _, delivery = heapq.heappop(self._deliveries)
            try:
                retry_in = self._attempt(delivery)
            except Exception as exc:  # a bug must not end the thread
                log.warning("alert_delivery_error", extra={"rule": delivery.rule.name, "error": type(exc).__name__})
                retry_in = None
                self._bump("delivery_failed")
                self._release(delivery)
            if retry_in is not None:
                with self._lock:
                    heapq.heappush(self._deliveries, (time.monotonic() + retry_in, next(self._seq), delivery))
                    self._lock.notify_all()
            else:
                self._done()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter"
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_delay))
        return delay

    def _attempt(self, delivery: _Delivery) -> float | None:
        """One POST. Returns the delay before the next attempt, or None when finished either way."""
        assert self._http is not None and self._url and self._secret
        delivery.attempt += 1
        self._bump("delivery_attempts")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "palisade-alerts/1",
            SIGNATURE_HEADER: sign(self._secret, delivery.body, int(time.time())),
            DELIVERY_HEADER: delivery.delivery_id,
        }
        retry_after: float | None = None
        try:
            response = self._http.post(self._url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            outcome, retryable = type(exc).__name__, True
        else:
            status = response.status_code
            response.close()
            if 200 <= status < 300:
                self._bump("delivered")
                return None
            outcome, retryable = f"HTTP {status}", status >= 500 or status == 429
            header = response.headers.get("retry-after", "")
            if header.strip().isdigit():
                retry_after = float(header.strip())
        if retryable and delivery.attempt < self._max_attempts:
            delay = self._backoff(delivery.attempt, retry_after)
            log.info("alert_delivery_retry", extra={"rule": delivery.rule.name, "attempt": delivery.attempt,
                                                    "outcome": outcome, "retry_in": round(delay, 3)})
            return delay
        self._bump("delivery_failed")
        log.error("alert_delivery_failed", extra={"rule": delivery.rule.name, "key": delivery.key,
                                                  "attempts": delivery.attempt, "outcome": outcome})
        self._release(delivery)
        return None

    def _release(self, delivery: _Delivery) -> None:
        """Give the claim back, so an undelivered alert does not silence the next one."""
        try:
            with self._db.begin() as conn:
                conn.execute(_RELEASE, {"rule": delivery.rule.name, "key": delivery.key, "fired_at": delivery.fired_at})
        except Exception as exc:
            self._bump("errors")
            log.warning("alert_release_failed", extra={"rule": delivery.rule.name, "error": type(exc).__name__})
