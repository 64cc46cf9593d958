"""Rate limits shared by every replica: per user (per client address when anonymous), per route class.

Design notes
- Algorithm: a sliding-window estimate over fixed windows (the one Cloudflare describes). Each
  bucket keeps one counter per fixed window of `window_seconds` (60 by default, so the configured
  limits are "per minute"); the usage at time t, `elapsed` seconds into the current window, is
      used = current + previous * (1 - elapsed / window)
  and a hit is admitted when `used + 1 <= limit`. Unlike a bare fixed window, this never lets
  2 × limit through around a window boundary, and it needs two counters per bucket, not a log.
  Refused hits are not counted: a client that keeps hammering gets exactly `limit` requests per
  window through, and `Retry-After` tells the truth (the time until one more hit fits, assuming
  nothing else is counted meanwhile).
- Store: PostgreSQL by default (`PostgresStore`), one statement per hit on an autocommit
  connection: an `INSERT ... ON CONFLICT (bucket, window_start) DO UPDATE SET count =
  rate_limit_windows.count + 1 WHERE <still fits> RETURNING count` with the previous window read
  in the same statement. Window boundaries and `elapsed` come from the database clock (one clock
  for every replica). The row lock of ON CONFLICT DO UPDATE makes check-and-increment atomic, so
  replicas together never admit more than the limit. Old windows are pruned opportunistically
  (bounded batches, at most once per `prune_interval` per process). Redis (or anything else) fits
  behind the same `Store` protocol; `MemoryStore` is the single-process reference implementation.
- No WAL flush per hit (issue 9): `rate_limit_windows` is UNLOGGED (migration 0004), so a hit's
  transaction writes no WAL but its commit record, and PostgreSQL does not wait for a flush to commit
  such a transaction (nor for a synchronous standby), whatever `synchronous_commit` says; the WAL
  writer flushes those records in the background. Measured on PostgreSQL 15, 5000 hits with
  `synchronous_commit=on`: 0.002 WAL fsyncs per hit (the WAL writer's, ~12 in all) and ~35 bytes of
  WAL; the same table LOGGED costs 1.04 fsyncs, ~180 bytes and ~230 µs more per hit (~420 against
  ~650 µs on loopback). The price: after a crash or an HA failover the table comes back empty, so
  every count starts from zero once (at most one more window's worth per bucket; counters, not
  records), and the rows are not on physical standbys (never read there). The table's persistence
  is the one mechanism, nothing is set per statement or per connection: `synchronous_commit=off`
  would still WAL-log (and replicate) every increment, and the limiter shares the app's engine, so
  a connection option would reach every other query. Keep the hit a single autocommit statement
  touching only UNLOGGED tables: a logged write in the same transaction brings the flush back
  (`test_a_counted_hit_does_not_wait_for_a_wal_flush` measures it).
- Local refusal cache: once a bucket is known to be full (remaining 0, or refused), this process
  refuses it without a database round trip until the computed retry time. That is exact, not an
  approximation: counts only grow and the estimate only decays, so the database would refuse too.
- Repeat refusals are cheap (issue 9, noisy neighbour): a refused request used to cost half a
  full one (~5 ms of CPU: the middleware stack, routing, JWT verification, two thread hand-offs and
  an exception), so a tenant flooding at 10x its limit kept a worker 40-70% busy refusing it. When
  `check()` refuses an authenticated caller on a per-caller class, the refusal is also remembered
  under SHA-256(method, path without query, bearer token), length-prefixed, until the same exact
  retry time as the bucket (capped at the token's `exp`, so an expired token gets its 401 again).
  `RateLimitMiddleware` answers a request with that key with the same 429 problem+json
  (`Retry-After` and RateLimit-* with the remaining wait) before anything else of ours runs: no
  token verification, no routing, no thread hand-off, no database. Why that is safe: only a token
  that was verified and then refused is ever remembered, and a hit needs the exact token bytes, so
  a forged, altered or someone else's token can never cause a refusal for another caller (to
  collide one would have to present this caller's token, i.e. be this caller, or find a SHA-256
  collision); the digest is stored, never the token; an entry ends at the exact retry time (counts
  only grow, so the store would refuse until then too); the cache is per process and bounded
  (expired entries go first, then the oldest). Keyed by method and path, not by route class: the
  key is known before routing, and a request of this caller to another path takes the normal path
  (where the bucket's own cache above still saves the database round trip). The middleware sits
  inside CORS and the security headers, so such a 429 is still readable by a browser and hardened.
  Refusals answered this way still feed the saturation alert (coalesced, below) under the key the
  first refusal used.
- Keys: the verified principal (`issuer|subject`) when authenticated, else the client address from
  `app.edge.client.request_meta` (trusted proxies honoured there; IPv6 grouped by /64, one host
  holds a whole /64). Bucket names carry a SHA-256 digest of the identity, never the identity.
- Route classes: every route belongs to one class with its own limit (`settings.rate_limit_classes`
  overrides the defaults below; "default" is `settings.rate_limit_per_minute`). A route picks its
  class via `openapi_extra={"x-rate-limit-class": ...}`, else `ROUTE_CLASSES` (exact
  `METHOD /template` relative to the API root, or a glob), else "default". Each request counts
  against its class only.
- Where it runs: `limit` is a dependency on the API router, right after `get_principal`, so the
  caller is known and nothing touched the tenant's data yet. Failed authentication never reaches
  it, so the middleware `install()` adds counts every 401 twice: per client address (class
  "auth-failure") and per subject the token claims (class "auth-failure-subject": the unverified
  `iss` and `sub`, when the token decodes at all), so guessing from many addresses at one account
  is limited too. Over either limit, a failing attempt is answered 429 instead of 401 (not
  counted; refused hits never are) until the exact retry time. Only failures are ever refused
  (issue 15): a request whose token verifies goes through whatever its address or claimed subject
  did, so a whole office behind one NAT address keeps working while someone there (or someone
  claiming a colleague's subject) fails sign-ins. So a request over either limit has its token
  verified by the middleware, before routing (the `authenticate` given to `install()`, the same
  check and failure record as `get_principal`): a failing one gets its 429 there, for the price of
  a signature check (unknown key ids trigger at most one JWKS refresh per cooldown), made on the
  event loop with no thread hand-off unless it would wait for a JWKS fetch in flight; a valid one
  goes on and is verified again by the route. Failures are still counted while the store is unreachable, in this
  process (`MemoryStore`), so each replica then enforces the limit on its own; the audit trail
  buffers them too (`app.audit.buffered`). Health probes are exempt.
- Responses: a 429 is problem+json with `Retry-After`; every limited response (429, 401 and
  successful ones) carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
  `RateLimit-Policy: <limit>;w=<window>` (draft-ietf-httpapi-ratelimit-headers). `RateLimit-Reset`
  is the seconds until the current window ends (from then on its count only decays) or, with
  nothing remaining, until the next request fits.
- Alerts: each refusal feeds `alerts.RATE_LIMIT_SATURATED`, keyed by the tenant id when the
  request has a resolved tenant scope, else `user:<issuer>|<subject>` or `ip:<address>` (the
  limiter runs before tenant access is checked, and an unverified tenant id from the path must not
  become a key). Observations are coalesced to at most one per key per second (`value` = refusals
  since the last one), so a flood of refusals does not turn into a flood of alert writes.
- Failure: if the store fails, the request is refused with 503 (fail closed) and logged; a failed
  sign-in is counted in-process instead (above).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import alerts, problems
from app.alerts.rules import ip_key
from app.bearer import unverified
from app.config import Settings
from app.edge.client import request_meta
from app.errors import WouldWait

log = logging.getLogger("palisade.ratelimit")

DEFAULT_WINDOW_SECONDS = 60
ROUTE_CLASS_EXTRA = "x-rate-limit-class"
API_ROOT = "/api/v1"
AUTH_FAILURE = "auth-failure"
AUTH_FAILURE_SUBJECT = "auth-failure-subject"
_EPSILON = 1e-9
_STATE_KEY = "rate_limit"


@dataclass(frozen=True)
class RouteClass:
    """A class of routes sharing one limit. `key`: "caller" (user, else address), "ip" (always the
    address) or "subject" (the issuer and subject a token claims; failed sign-ins only)."""

    name: str
    default_limit: int | None  # None: `settings.rate_limit_per_minute`
    key: Literal["caller", "ip", "subject"]
    description: str


CLASSES: dict[str, RouteClass] = {
    c.name: c
    for c in (
        RouteClass("default", None, "caller", "Every route without a class of its own."),
        RouteClass("auth-public", 20, "ip", "Public or onboarding routes that take a secret (invitation accept): per client address."),
        RouteClass("export", 10, "caller", "Bulk exports (audit trail, privacy exports): expensive, streamed."),
        RouteClass("upload", 30, "caller", "File uploads (brand assets, knowledge files)."),
        RouteClass(AUTH_FAILURE, 60, "ip", "Failed authentications (401) per client address; over it, failing attempts get 429."),
        RouteClass(AUTH_FAILURE_SUBJECT, 30, "subject",
                   "Failed authentications (401) per subject a token claims, from any address; over it, failing attempts "
                   "claiming it get 429."),
    )
}

# `METHOD /template` relative to the API root (exact first, then globs in order) → class name.
# Routes may instead carry `openapi_extra={"x-rate-limit-class": "<class>"}`.
# Globs err on the strict side: a future `.../export` route is an export until it says otherwise.
ROUTE_CLASSES: dict[str, str] = {
    "POST /invitations/accept": "auth-public",
    "GET /tenants/{tenant_id}/audit-events/export": "export",
    "GET /audit-events/export": "export",
    "POST /tenants/{tenant_id}/workspaces/{workspace_id}/files": "upload",
    "GET */export": "export",
    "POST */exports": "export",
}


# ---- the algorithm ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What a store saw for one hit: the current window's count (after the hit when counted), the
    previous window's count, how far (seconds) into the current window, and whether it counted."""

    current: int
    previous: int
    elapsed: float
    counted: bool


def used(counts: Counts, window: float) -> float:
    """The sliding-window estimate of hits in the last `window` seconds."""
    return counts.current + counts.previous * max(0.0, 1.0 - counts.elapsed / window)


def next_allowed_in(current: int, previous: int, elapsed: float, limit: int, window: float) -> float:
    """Seconds until one more hit fits (`used + 1 <= limit`), if nothing else is counted meanwhile."""
    room = limit - 1 - current
    if room >= 0:
        if previous <= 0 or previous * max(0.0, 1.0 - elapsed / window) <= room + _EPSILON:
            return 0.0
        # previous * (1 - e / window) == room  at  e = window * (1 - room / previous)  (<= window)
        return max(0.0, window * (1.0 - room / previous) - elapsed)
    # The current window alone is full: wait for it to become the (decaying) previous one.
    decay = window * (1.0 - (limit - 1) / current) if current > limit - 1 else 0.0
    return (window - elapsed) + decay


@dataclass(frozen=True)
class Decision:
    """The outcome for one request, and the headers that describe it."""

    route_class: str
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds
    retry_after: int  # seconds until the next request fits; 0 while some remain
    window: int

    @property
    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.limit};w={self.window}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def decide(route_class: str, counts: Counts, limit: int, window: int) -> tuple[Decision, float]:
    """The decision for `counts`, and how long (seconds, exact) the bucket stays full (0: not full)."""
    if counts.counted:
        remaining = max(0, math.floor(limit - used(counts, window) + _EPSILON))
    else:
        remaining = 0
    full_for = next_allowed_in(counts.current, counts.previous, counts.elapsed, limit, window) if remaining == 0 else 0.0
    if remaining > 0:
        reset = max(1, math.ceil(window - counts.elapsed))
    else:
        reset = max(1, math.ceil(full_for))
    decision = Decision(route_class=route_class, allowed=counts.counted, limit=limit, remaining=remaining, reset=reset,
                        retry_after=0 if counts.counted else reset, window=window)
    return decision, full_for


# ---- stores ----------------------------------------------------------------------------------


class Store(Protocol):
    """Where the windows live. Every replica must share it (PostgreSQL, or e.g. Redis)."""

    def hit(self, bucket: str, *, limit: int, window_seconds: int, force: bool = False) -> Counts:
        """Count one hit in the current window if `used + 1 <= limit` (always when `force`), atomically."""
        ...

    def prune(self, *, keep_seconds: int) -> int:
        """Delete windows that started more than `keep_seconds` ago; returns how many went."""
        ...


_HIT = text(
    """
    with t as (
      select n.now, to_timestamp(floor(extract(epoch from n.now) / cast(:window as integer)) * cast(:window as integer)) as start
        from (select now() as now) n
    ), w as (
      select t.start,
             cast(extract(epoch from t.now - t.start) as float8) as elapsed,
             coalesce((select r.count from rate_limit_windows r
                        where r.bucket = :bucket
                          and r.window_start = t.start - make_interval(secs => cast(:window as integer))), 0) as previous
        from t
    ), p as (
      select w.*, w.previous * greatest(0.0, 1.0 - w.elapsed / cast(:window as integer)) as weighted from w
    ), hit as (
      insert into rate_limit_windows as r (bucket, window_start, count)
      select :bucket, p.start, 1 from p
       where cast(:force as boolean) or 1 + p.weighted <= cast(:limit as integer) + 1e-9
      on conflict (bucket, window_start) do update set count = r.count + 1
       where cast(:force as boolean) or r.count + 1 + (select p.weighted from p) <= cast(:limit as integer) + 1e-9
      returning r.count
    )
    select coalesce((select hit.count from hit),
                    (select r.count from rate_limit_windows r, p where r.bucket = :bucket and r.window_start = p.start),
                    0) as current,
           p.previous, p.elapsed, exists (select 1 from hit) as counted
      from p
    """
)

# In bounded batches, so one prune never holds many row locks or runs long.
_PRUNE = text(
    """
    delete from rate_limit_windows where ctid = any (array(
      select ctid from rate_limit_windows
       where window_start < now() - make_interval(secs => cast(:keep as integer))
       limit 5000))
    """
)


class PostgresStore:
    """The default store: the UNLOGGED `rate_limit_windows` table, one autocommit statement per hit (no WAL flush)."""

    def __init__(self, engine: Engine | Callable[[], Engine]) -> None:
        self._engine = engine

    def _connect(self) -> Connection:
        engine = self._engine() if callable(self._engine) else self._engine
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def hit(self, bucket: str, *, limit: int, window_seconds: int, force: bool = False) -> Counts:
        with self._connect() as conn:
            row = conn.execute(_HIT, {"bucket": bucket, "window": window_seconds, "limit": limit, "force": force}).one()
        return Counts(current=int(row.current), previous=int(row.previous), elapsed=float(row.elapsed), counted=bool(row.counted))

    def prune(self, *, keep_seconds: int) -> int:
        with self._connect() as conn:
            return conn.execute(_PRUNE, {"keep": keep_seconds}).rowcount


class MemoryStore:
    """One process only (development, unit tests): the same semantics, in a dict."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, int], int] = {}  # (bucket, window, index) -> count

    def hit(self, bucket: str, *, limit: int, window_seconds: int, force: bool = False) -> Counts:
        now = self._clock()
        index = math.floor(now / window_seconds)
        elapsed = now - index * window_seconds
        with self._lock:
            current = self._windows.get((bucket, window_seconds, index), 0)
            previous = self._windows.get((bucket, window_seconds, index - 1), 0)
            counts = Counts(current + 1, previous, elapsed, True)
            if force or used(counts, window_seconds) <= limit + _EPSILON:
                self._windows[(bucket, window_seconds, index)] = current + 1
                return counts
            return Counts(current, previous, elapsed, False)

    def prune(self, *, keep_seconds: int) -> int:
        cutoff = self._clock() - keep_seconds
        with self._lock:
            old = [k for k in self._windows if k[2] * k[1] < cutoff]
            for k in old:
                del self._windows[k]
        return len(old)


# ---- the limiter -----------------------------------------------------------------------------


class RateLimited(Exception):
    """A request over its limit; answered 429 with the decision's headers."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("rate limited")
        self.decision = decision


class RateLimiterUnavailable(Exception):
    """The store failed: the request is refused (503), never let through unlimited."""


_T = TypeVar("_T")


class _Blocked(Generic[_T]):
    """Keys (buckets, or refused token+request digests) known to be refused, until when (monotonic),
    with what to answer: refused here without asking the store. Bounded: expired first, then oldest go."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._until: dict[str, tuple[float, _T]] = {}
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._until)

    def get(self, bucket: str, now: float) -> tuple[float, _T] | None:
        with self._lock:
            entry = self._until.get(bucket)
            if entry is not None and entry[0] <= now:
                del self._until[bucket]
                return None
            return entry

    def put(self, bucket: str, until: float, decision: _T, now: float) -> None:
        with self._lock:
            if bucket not in self._until and len(self._until) >= self._max:
                for key in [k for k, (u, _) in self._until.items() if u <= now]:
                    del self._until[key]
                while len(self._until) >= self._max:  # still full: forget the oldest entries
                    del self._until[next(iter(self._until))]
            self._until[bucket] = (until, decision)


@dataclass(frozen=True)
class _TokenRefusal:
    """What a remembered refusal of a verified token answers with, and whose alert it feeds."""

    decision: Decision
    alert_key: str
    details: dict[str, Any]


def bearer_token(request: Request) -> str | None:
    """The bearer token exactly as `get_principal` (FastAPI's HTTPBearer) takes it from the request."""
    authorization = request.headers.get("Authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def refusal_key(method: str, path: str, token: str) -> str:
    """SHA-256 over the method, the path (no query string) and the token, each length-prefixed."""
    h = hashlib.sha256()
    for part in (method, path, token):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


class _Saturation:
    """Coalesces refusals into at most one alert observation per key per `interval` seconds."""

    def __init__(self, interval: float = 1.0, max_keys: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[int, float]] = {}  # key -> (pending refusals, last emitted)
        self._interval = interval
        self._max = max_keys

    def refused(self, key: str, details: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            pending, last = self._keys.pop(key, (0, -math.inf))
            pending += 1
            emit = now - last >= self._interval
            self._keys[key] = (0, now) if emit else (pending, last)
            while len(self._keys) > self._max:
                del self._keys[next(iter(self._keys))]
        if emit:
            alerts.observe(alerts.RATE_LIMIT_SATURATED, key, value=pending, details=details)


@dataclass(frozen=True)
class Identity:
    """Whom a bucket counts: `kind` "user", "ip" or "subject", the identity, and the alert key for refusals."""

    kind: Literal["user", "ip", "subject"]
    value: str
    alert_key: str


def resolve_limits(settings: Settings) -> dict[str, int]:
    """Every class's per-window limit: the defaults, `rate_limit_per_minute`, then `rate_limit_classes`."""
    limits = {name: c.default_limit or settings.rate_limit_per_minute for name, c in CLASSES.items()}
    unknown = sorted(set(settings.rate_limit_classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"PALISADE_RATE_LIMIT_CLASSES names unknown classes {unknown}; known: {sorted(CLASSES)}")
    for name, value in settings.rate_limit_classes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"PALISADE_RATE_LIMIT_CLASSES[{name!r}] must be a positive integer")
        limits[name] = value
    return limits


def route_class_for(method: str, template: str, openapi_extra: Mapping[str, Any] | None = None) -> str:
    """The class of the route `METHOD template` (template with or without the API root prefix)."""
    if openapi_extra and openapi_extra.get(ROUTE_CLASS_EXTRA):
        name = str(openapi_extra[ROUTE_CLASS_EXTRA])
        if name not in CLASSES:
            raise ValueError(f"route {method} {template} names unknown rate-limit class {name!r}")
        return name
    if template.startswith(API_ROOT + "/"):
        template = template[len(API_ROOT):]
    label = f"{method.upper()} {template}"
    exact = ROUTE_CLASSES.get(label)
    if exact is not None:
        return exact
    for pattern, name in ROUTE_CLASSES.items():
        if "*" in pattern and fnmatch.fnmatchcase(label, pattern):
            return name
    return "default"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    """Decides, counts and remembers; `limit` (the dependency) and the middleware call it."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        prune_interval: float = 60.0,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be at least 1")
        self.limits = resolve_limits(settings)
        self.window = int(window_seconds)
        self.store = store
        self._blocked: _Blocked[Decision] = _Blocked()
        self._refused: _Blocked[_TokenRefusal] = _Blocked()
        self._saturation = _Saturation()
        self._local = MemoryStore()  # forced hits (failed sign-ins) while the store is unreachable
        self._prune_interval = prune_interval
        self._prune_lock = threading.Lock()
        self._last_prune = time.monotonic()  # the first prune waits one interval
        # Old windows are kept long enough for any window length a replica may run with.
        self.keep_seconds = max(2 * self.window, 600)

    # -- identities and buckets --

    @staticmethod
    def identity_of(request: Request, route_class: RouteClass) -> Identity:
        principal = getattr(request.state, "principal", None)
        if principal is not None and route_class.key == "caller":
            return Identity("user", f"{principal.issuer}|{principal.subject}", f"user:{principal.issuer}|{principal.subject}")
        address = ip_key(request_meta(request).client_ip)
        return Identity("ip", address, f"ip:{address}")

    def bucket(self, route_class: str, identity: Identity) -> str:
        return f"{route_class}/{self.window}|{identity.kind}|{_digest(identity.value)}"

    # -- the two entry points --

    def check(self, request: Request) -> Decision:
        """Count this request against its class; raise `RateLimited` when it does not fit."""
        route = request.scope.get("route")
        name = route_class_for(request.method, getattr(route, "path", request.url.path), getattr(route, "openapi_extra", None))
        identity = self.identity_of(request, CLASSES[name])
        bucket = self.bucket(name, identity)
        decision = self._hit(name, bucket, force=False)
        request.state.rate_limit = decision
        if not decision.allowed:
            scope = getattr(request.state, "authz_scope", None)
            key = str(scope.tenant_id) if scope is not None else identity.alert_key
            details = {"class": name, "route": f"{request.method} {getattr(route, 'path', '')}"}
            self._saturation.refused(key, details)
            if identity.kind == "user":
                self._remember_refusal(request, bucket, key, details)
            raise RateLimited(decision)
        return decision

    def token_refused(self, method: str, path: str, request: Request) -> Decision | None:
        """The refusal for this exact verified-and-refused token on `method path`, while it lasts
        (local knowledge only; the middleware's entry point, before the token is verified)."""
        if not len(self._refused):  # nothing remembered: no hashing on the normal path
            return None
        token = bearer_token(request)
        if token is None:
            return None
        now = time.monotonic()
        entry = self._refused.get(refusal_key(method, path, token), now)
        if entry is None:
            return None
        until, refusal = entry
        self._saturation.refused(refusal.alert_key, refusal.details)
        return self._remaining(until, refusal.decision, now)

    def sign_in_failed(self, address: str | None, claimed_subject: str | None) -> tuple[Decision, bool]:
        """One failed authentication from `address`, its token claiming `claimed_subject`
        (`issuer|subject`, unverified) if any. Returns the decision for the response's headers and
        whether to refuse it (429): when the address or the claimed subject is over its limit
        (local knowledge, exact until the retry time; not counted). Otherwise it is counted against
        both (always: it was evaluated; in-process when the store is unreachable)."""
        refusal = self.sign_in_refusal(address, claimed_subject)
        if refusal is not None:
            return refusal, True
        decisions = [self._hit(name, self.bucket(name, identity), force=True)
                     for name, identity in self._sign_in_buckets(address, claimed_subject)]
        return min(decisions, key=lambda d: d.remaining), False

    def refusing(self) -> bool:
        """Whether any bucket is known to be over its limit here (cheap: ask it before anything costly)."""
        return bool(len(self._blocked))

    def sign_in_refusal(self, address: str | None, claimed_subject: str | None) -> Decision | None:
        """The refusal for a failing attempt from `address` claiming `claimed_subject`, while either
        is over its failed-sign-in limit (local knowledge, no I/O)."""
        for name, identity in self._sign_in_buckets(address, claimed_subject):
            refusal = self._cached(self.bucket(name, identity))
            if refusal is not None:
                self._saturation.refused(identity.alert_key, {"class": name})
                return refusal
        return None

    @staticmethod
    def _sign_in_buckets(address: str | None, claimed_subject: str | None) -> list[tuple[str, Identity]]:
        buckets = [(AUTH_FAILURE, Identity("ip", ip_key(address), f"ip:{ip_key(address)}"))]
        if claimed_subject:
            buckets.append((AUTH_FAILURE_SUBJECT, Identity("subject", claimed_subject, f"subject:{_digest(claimed_subject)}")))
        return buckets

    # -- internals --

    def _cached(self, bucket: str) -> Decision | None:
        now = time.monotonic()
        entry = self._blocked.get(bucket, now)
        if entry is None:
            return None
        return self._remaining(entry[0], entry[1], now)

    @staticmethod
    def _remaining(until: float, template: Decision, now: float) -> Decision:
        wait = max(1, math.ceil(until - now))
        return Decision(route_class=template.route_class, allowed=False, limit=template.limit, remaining=0,
                        reset=wait, retry_after=wait, window=template.window)

    def _remember_refusal(self, request: Request, bucket: str, alert_key: str, details: dict[str, Any]) -> None:
        """After `check()` refused a verified caller: remember it under the token+request digest
        until the bucket's retry time (never past the token's expiry)."""
        token = bearer_token(request)
        now = time.monotonic()
        entry = self._blocked.get(bucket, now)
        if token is None or entry is None:
            return
        until, template = entry
        parts = unverified(token)  # the token was verified by `get_principal`: its claims are trustworthy
        if parts is None:
            return
        exp = parts[1].get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return
        until = min(until, now + (exp - time.time()))
        if until > now:
            key = refusal_key(request.method, request.scope["path"], token)
            self._refused.put(key, until, _TokenRefusal(template, alert_key, details), now)

    def _hit(self, route_class: str, bucket: str, *, force: bool) -> Decision:
        if not force:
            cached = self._cached(bucket)
            if cached is not None:
                return cached
        if self.store is None:
            raise RateLimiterUnavailable("no store")
        limit = self.limits[route_class]
        try:
            counts = self.store.hit(bucket, limit=limit, window_seconds=self.window, force=force)
        except SQLAlchemyError as exc:
            log.error("rate_limit_store_error", extra={"error": type(exc).__name__})
            if not force:
                raise RateLimiterUnavailable(type(exc).__name__) from None
            # A hit that happened whatever the limit (a failed sign-in) still counts, here.
            counts = self._local.hit(bucket, limit=limit, window_seconds=self.window, force=True)
        decision, full_for = decide(route_class, counts, limit, self.window)
        if full_for > 0:
            now = time.monotonic()
            self._blocked.put(bucket, now + full_for, decision, now)
        self._maybe_prune()
        return decision

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < self._prune_interval or not self._prune_lock.acquire(blocking=False):
            return
        try:
            self._last_prune = time.monotonic()
            if self.store is not None:
                self.store.prune(keep_seconds=self.keep_seconds)
        except Exception as exc:  # pruning is housekeeping: never the request's problem
            log.warning("rate_limit_prune_failed", extra={"error": type(exc).__name__})
        finally:
            self._prune_lock.release()


# ---- FastAPI wiring --------------------------------------------------------------------------


def limiter_of(app: Any) -> RateLimiter:
    limiter = getattr(app.state, "rate_limiter", None)
    if limiter is None:
        raise RuntimeError("the rate limiter is not installed: call app.edge.ratelimit.install(app, settings)")
    return limiter


def limit(request: Request) -> None:
    """The API router's dependency (after `get_principal`): count the request, or refuse it with 429."""
    limiter_of(request.app).check(request)


def _refusal(decision: Decision) -> JSONResponse:
    return problems.problem(429, detail=f"Too many requests; retry after {decision.retry_after} seconds.", headers=decision.headers)


def claimed_subject(request: Request) -> str | None:
    """`issuer|subject` as the request's bearer token claims them, unverified (None when it names none)."""
    token = bearer_token(request)
    if token is None:
        return None
    parts = unverified(token)
    if parts is None:
        return None
    issuer, subject = parts[1].get("iss"), parts[1].get("sub")
    if not (isinstance(issuer, str) and isinstance(subject, str) and subject):
        return None
    return f"{issuer}|{subject}"


# Verifies a request's bearer token (None: there is none), recording a failure; raises on failure.
# Called as `authenticate(request, token, wait=False)` first: it raises `WouldWait` rather than
# wait for I/O (then it is called again, with `wait=True`, in a worker thread).
Authenticate = Callable[..., Any]


class RateLimitMiddleware:
    """Refuses repeats of a verified token's refusal on the same method and path before anything
    else runs; counts every 401 per address and per claimed subject, answering 429 instead once
    either is over its limit; and puts the RateLimit-* headers on every limited response.

    A request from an address (or claiming a subject) over its failed-sign-in limit has its token
    verified here, before routing (`authenticate`, given to `install()`): a failing one is answered
    429 at once (its failure recorded as any other), so a flood of bad tokens costs a signature
    check each, not a trip through the whole app; a valid one goes on as usual."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def _verifies(authenticate: Authenticate, request: Request, *, wait: bool) -> bool:
        try:
            authenticate(request, bearer_token(request), wait=wait)
        except WouldWait:
            raise
        except Exception:  # Unauthenticated: recorded by `authenticate`
            return False
        return True

    async def _verified(self, authenticate: Authenticate, request: Request) -> bool:
        """Whether the request's token verifies: on the event loop when that needs no waiting (keys
        at hand: a signature check, no thread hand-off), else in a worker thread."""
        try:
            return self._verifies(authenticate, request, wait=False)
        except WouldWait:
            return await run_in_threadpool(self._verifies, authenticate, request, wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/health/"):
            await self.app(scope, receive, send)
            return
        limiter = limiter_of(scope["app"])
        request = Request(scope)
        blocked = limiter.token_refused(scope["method"], scope["path"], request)
        if blocked is None and limiter.refusing() and bearer_token(request) is not None:
            # (A request without a token takes the normal path: a public route answers it, any other 401s.)
            blocked = limiter.sign_in_refusal(request_meta(request).client_ip, claimed_subject(request))
            authenticate: Authenticate | None = getattr(scope["app"].state, "rate_limit_authenticate", None)
            if blocked is not None and (authenticate is None or await self._verified(authenticate, request)):
                blocked = None  # a valid token is never refused for failures; without a verifier, the app decides
        if blocked is not None:
            await _refusal(blocked)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        replaced = False  # the 401 went out as a 429: drop the rest of its body

        async def send_with_headers(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                decision: Decision | None = state.get(_STATE_KEY)
                if message["status"] == 401:
                    try:
                        decision, refuse = await run_in_threadpool(
                            limiter.sign_in_failed, request_meta(request).client_ip, claimed_subject(request))
                    except Exception:
                        log.error("rate_limit_auth_failure_uncounted")
                    else:
                        if refuse:
                            replaced = True
                            await _refusal(decision)(scope, receive, send)
                            return
                if decision is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in decision.headers.items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _place_middleware(app: FastAPI) -> None:
    """Put the middleware where the design wants it: just outside the body-size cap of
    `app.edge.http` when that is installed (inside CORS, so a browser can read a 429), else
    innermost. Done when the stack is built, so the order of the install() calls does not matter."""
    entries = [m for m in app.user_middleware if m.cls is not RateLimitMiddleware]
    index = len(entries)
    try:
        from app.edge.http import BodyLimitMiddleware
    except ImportError:  # pragma: no cover - the edge middlewares are not part of this build
        BodyLimitMiddleware = None  # noqa: N806
    for i, entry in enumerate(entries):
        if BodyLimitMiddleware is not None and entry.cls is BodyLimitMiddleware:
            index = i
            break
    entries.insert(index, Middleware(RateLimitMiddleware))
    app.user_middleware[:] = entries


def install(
    app: FastAPI,
    settings: Settings,
    *,
    store: Store | None = None,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    authenticate: Authenticate | None = None,
) -> RateLimiter:
    """Put the limiter on `app.state`, add the middleware and the 429/503 handlers.

    Call it before the app serves; call it again to reconfigure (tests: a shorter window), the
    middleware and handlers are added once. The default store is PostgreSQL through
    `app.state.engine` (made in the app's lifespan). The routes get the per-caller limit from the
    `limit` dependency on the API router.
    """
    if app.middleware_stack is not None:
        raise RuntimeError("install() must run before the app serves its first request")
    limiter = RateLimiter(settings, store=store or PostgresStore(lambda: app.state.engine), window_seconds=window_seconds)
    app.state.rate_limiter = limiter
    if authenticate is not None:
        app.state.rate_limit_authenticate = authenticate
    if getattr(app.state, "rate_limit_installed", False):
        return limiter
    app.state.rate_limit_installed = True

    build_inner: Callable[[], ASGIApp] = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        _place_middleware(app)
        return build_inner()

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]

    @app.exception_handler(RateLimited)
    async def _limited(request: Request, exc: RateLimited) -> JSONResponse:
        return _refusal(exc.decision)

    @app.exception_handler(RateLimiterUnavailable)
    async def _unavailable(request: Request, exc: RateLimiterUnavailable) -> JSONResponse:
        return problems.problem(503, detail="The service is busy; retry shortly.", headers={"Retry-After": "1"})

    return limiter
