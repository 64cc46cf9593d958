"""Rate limits: the real app on real PostgreSQL with real IdP tokens; counts shared through the database."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, pool, text

from app.auth.oidc import TokenVerifier
from app.config import Settings
from app.edge import ratelimit
from app.edge.ratelimit import Counts, MemoryStore, PostgresStore, decide, next_allowed_in, route_class_for
from app.main import create_app
from tests.support.api import Caller, person, settings_for
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP

PROBLEM_JSON = "application/problem+json"
_addresses = (f"198.51.100.{i}" for i in itertools.count(10))


def build(database: TestDatabase, idp: TestIdP, *, window: int = 60, **overrides: Any) -> tuple[FastAPI, Settings]:
    settings = settings_for(database, idp, **overrides)
    app = create_app(settings)
    ratelimit.install(app, settings, window_seconds=window)
    return app, settings


@contextmanager
def serve(app: FastAPI, address: str | None = None) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False, client=(address or next(_addresses), 50000)) as client:
        yield client


def vendor(client: TestClient, idp: TestIdP) -> Caller:
    # Vendor staff: GET /api/v1/tenants answers them 200, a cheap authenticated route.
    return person(client, idp, roles=["internal_admin"])


def assert_limited(response: httpx.Response, *, limit: int, window: int = 60) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["status"] == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert int(response.headers["RateLimit-Reset"]) >= 1
    assert response.headers["RateLimit-Policy"] == f"{limit};w={window}"


def test_limit_is_reached_exactly_at_the_configured_count(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=5)
    with serve(app) as client:
        caller = vendor(client, idp)
        for expected_remaining in (4, 3, 2, 1, 0):
            r = caller.get("/api/v1/tenants")
            assert r.status_code == 200, r.text
            assert r.headers["RateLimit-Limit"] == "5"
            assert r.headers["RateLimit-Remaining"] == str(expected_remaining)
            assert r.headers["RateLimit-Policy"] == "5;w=60"
            # The window's end; with nothing left, when the next request fits (can be past it).
            assert 1 <= int(r.headers["RateLimit-Reset"]) <= (60 if expected_remaining else 120)
            assert "Retry-After" not in r.headers
        assert_limited(caller.get("/api/v1/tenants"), limit=5)


def test_refusal_is_answered_from_the_database_too(database: TestDatabase, idp: TestIdP) -> None:
    # Two apps: the second has never seen this user, so its refusal comes from the shared count,
    # not from the first app's local memory of a full bucket.
    app1, _ = build(database, idp, rate_limit_per_minute=5)
    app2, _ = build(database, idp, rate_limit_per_minute=5)
    with serve(app1) as c1, serve(app2) as c2:
        caller = vendor(c1, idp)
        other_app = Caller(c2, caller.subject, caller.token)
        seen = []
        for client_caller in (caller, caller, caller, other_app, other_app):
            r = client_caller.get("/api/v1/tenants")
            assert r.status_code == 200, r.text
            seen.append(int(r.headers["RateLimit-Remaining"]))
        assert seen == [4, 3, 2, 1, 0]
        assert_limited(caller.get("/api/v1/tenants"), limit=5)
        assert_limited(other_app.get("/api/v1/tenants"), limit=5)


def test_two_app_instances_share_one_count(database: TestDatabase, idp: TestIdP) -> None:
    app1, _ = build(database, idp, rate_limit_per_minute=6)
    app2, _ = build(database, idp, rate_limit_per_minute=6)
    with serve(app1) as c1, serve(app2) as c2:
        on1 = vendor(c1, idp)
        on2 = Caller(c2, on1.subject, on1.token)
        statuses = [(on1 if i % 2 == 0 else on2).get("/api/v1/tenants").status_code for i in range(6)]
        assert statuses == [200] * 6
        # Each app alone counted only three; together they used the six.
        assert on1.get("/api/v1/tenants").status_code == 429
        assert on2.get("/api/v1/tenants").status_code == 429


def test_the_window_slides_and_the_limit_comes_back(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, window=2, rate_limit_per_minute=3)
    with serve(app) as client:
        caller = vendor(client, idp)
        for _ in range(3):
            assert caller.get("/api/v1/tenants").status_code == 200
        refused = caller.get("/api/v1/tenants")
        assert_limited(refused, limit=3, window=2)
        deadline = time.monotonic() + 20
        while True:
            r = caller.get("/api/v1/tenants")
            if r.status_code == 200:
                break
            assert r.status_code == 429, r.text
            assert time.monotonic() < deadline, "the limit never came back"
            time.sleep(0.2)
        assert r.headers["RateLimit-Limit"] == "3"


def test_different_users_do_not_share_buckets(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=5)
    with serve(app) as client:
        first, second = vendor(client, idp), vendor(client, idp)
        for _ in range(5):
            assert first.get("/api/v1/tenants").status_code == 200
        assert first.get("/api/v1/tenants").status_code == 429
        r = second.get("/api/v1/tenants")
        assert r.status_code == 200
        assert r.headers["RateLimit-Remaining"] == "4"


def test_failed_authentication_is_counted_per_address(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=50, rate_limit_classes={"auth-failure": 3})
    guesser_address, neighbour_address = next(_addresses), next(_addresses)
    with serve(app, guesser_address) as guesser:
        for expected_remaining, headers in zip((2, 1, 0), ({}, {"Authorization": "Bearer not-a-jwt"}, {}), strict=True):
            r = guesser.get("/api/v1/tenants", headers=headers)
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="palisade"'
            assert r.headers["RateLimit-Limit"] == "3"
            assert r.headers["RateLimit-Remaining"] == str(expected_remaining)
        # Over the limit: every failing attempt is refused, whatever token it carries.
        assert_limited(guesser.get("/api/v1/tenants", headers={"Authorization": "Bearer guess"}), limit=3)
        assert_limited(guesser.get("/api/v1/tenants"), limit=3)
        # Probes stay open.
        assert guesser.get("/health/live").status_code == 200
        # Another address (no lifespan of its own: the app is already running) is counted apart.
        neighbour = TestClient(app, raise_server_exceptions=False, client=(neighbour_address, 50000))
        r = neighbour.get("/api/v1/tenants")
        assert r.status_code == 401
        assert r.headers["RateLimit-Remaining"] == "2"


def test_a_valid_token_is_never_refused_for_the_failures_of_its_address(database: TestDatabase, idp: TestIdP) -> None:
    # An office behind one NAT address: someone there fails sign-ins past the limit; everyone
    # with a valid token keeps working (they were all refused 429 before issue 15).
    app, _ = build(database, idp, rate_limit_per_minute=50, rate_limit_classes={"auth-failure": 2})
    with serve(app) as office:
        for _ in range(2):
            assert office.get("/api/v1/tenants", headers={"Authorization": "Bearer expired-or-garbage"}).status_code == 401
        assert_limited(office.get("/api/v1/tenants", headers={"Authorization": "Bearer expired-or-garbage"}), limit=2)
        colleague = vendor(office, idp)
        for _ in range(3):
            r = colleague.get("/api/v1/tenants")
            assert r.status_code == 200, r.text
            assert r.headers["RateLimit-Limit"] == "50"  # its own class: the per-user default
        # A public route still answers the address; a route needing a token still refuses it.
        assert office.get("/api/v1/openapi.json").status_code == 200
        assert_limited(office.get("/api/v1/tenants"), limit=2)
        # ... while failing attempts from the address stay refused, answered by the middleware after
        # a signature check: no routing, no database (the failure is buffered for the audit trail).
        pending = app.state.audit_buffer.pending()
        with statements_on(app.state.engine) as statements:
            assert_limited(office.get("/api/v1/tenants", headers={"Authorization": "Bearer expired-or-garbage"}), limit=2)
            assert_limited(office.get("/api/v1/tenants/" + str(uuid.uuid4()), headers={"Authorization": "Bearer x"}), limit=2)
        assert statements == []
        assert app.state.audit_buffer.pending() == pending + 2


def test_failed_sign_ins_claiming_one_subject_are_limited_across_addresses(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=50, rate_limit_classes={"auth-failure-subject": 3})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with serve(app) as client:
        victim = vendor(client, idp)
        claims = jwt.decode(victim.token, options={"verify_signature": False})
        forged = idp.forge(claims, key=stranger)  # the victim's claims, signed by a key the IdP never published

        def attempt(token: str) -> httpx.Response:  # each from an address of its own
            return TestClient(app, raise_server_exceptions=False, client=(next(_addresses), 50000)).get(
                "/api/v1/tenants", headers={"Authorization": f"Bearer {token}"})

        for expected_remaining in (2, 1, 0):
            r = attempt(forged)
            assert r.status_code == 401
            assert r.headers["RateLimit-Remaining"] == str(expected_remaining)  # the tighter of the two counts
        assert_limited(attempt(forged), limit=3)
        assert_limited(attempt(idp.forge({**claims, "jti": secrets.token_hex(8)}, key=stranger)), limit=3)
        # The victim's own valid token still works, from anywhere.
        assert Caller(TestClient(app, client=(next(_addresses), 50000)), victim.subject, victim.token).get(
            "/api/v1/tenants").status_code == 200
        # Someone else's subject is counted apart.
        other = idp.forge({**claims, "sub": f"user-{secrets.token_hex(6)}"}, key=stranger)
        assert attempt(other).status_code == 401


def test_route_classes_have_their_own_limits_and_keys(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=5, rate_limit_classes={"export": 2, "auth-public": 2})
    with serve(app) as client:
        staff = vendor(client, idp)
        for _ in range(2):
            r = staff.get("/api/v1/audit-events/export")
            assert r.status_code == 200, r.text
            assert r.headers["RateLimit-Limit"] == "2"  # set on a streamed response too
        assert_limited(staff.get("/api/v1/audit-events/export"), limit=2)
        # The export class is its own bucket: the default class is untouched.
        r = staff.get("/api/v1/tenants")
        assert r.status_code == 200
        assert (r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"]) == ("5", "4")
        # auth-public is per address: different people from one address share it.
        for _ in range(2):
            r = vendor(client, idp).post("/api/v1/invitations/accept", json={"token": secrets.token_urlsafe(32)})
            assert r.status_code != 429, r.text
            assert r.headers["RateLimit-Limit"] == "2"
        assert_limited(vendor(client, idp).post("/api/v1/invitations/accept", json={"token": "x" * 43}), limit=2)


def test_refusals_feed_the_saturation_alert(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=1)
    with serve(app) as client:
        caller = vendor(client, idp)
        assert caller.get("/api/v1/tenants").status_code == 200
        assert caller.get("/api/v1/tenants").status_code == 429
        issuer = idp.issuer
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:  # the app's shutdown drained the alert queue
            count = conn.execute(
                text("select sum(count) from alert_counters where rule = 'rate_limit_saturation' and key = :key"),
                {"key": f"user:{issuer}|{caller.subject}"},
            ).scalar()
    finally:
        engine.dispose()
    assert count == 1


def test_settings_naming_an_unknown_class_are_refused(database: TestDatabase, idp: TestIdP) -> None:
    settings = settings_for(database, idp, rate_limit_classes={"exports": 5})
    with pytest.raises(ValueError, match="unknown classes"):
        ratelimit.install(create_app(settings), settings)


def test_the_route_class_table_names_real_routes(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp)
    paths = app.openapi()["paths"]
    for label, name in ratelimit.ROUTE_CLASSES.items():
        assert name in ratelimit.CLASSES
        if "*" not in label:
            method, template = label.split(" ", 1)
            assert method.lower() in paths.get("/api/v1" + template, {}), label
    assert route_class_for("GET", "/api/v1/tenants/{tenant_id}/audit-events/export") == "export"
    assert route_class_for("GET", "/tenants/{tenant_id}") == "default"
    assert route_class_for("POST", "/api/v1/tenants/{tenant_id}/workspaces/{workspace_id}/files") == "upload"
    assert route_class_for("GET", "/tenants/{tenant_id}/workspaces/{workspace_id}/files/{file_id}/content") == "default"
    assert route_class_for("POST", "/tenants/{tenant_id}/privacy/exports") == "export"
    assert route_class_for("POST", "/anything", {"x-rate-limit-class": "upload"}) == "upload"
    with pytest.raises(ValueError):
        route_class_for("POST", "/anything", {"x-rate-limit-class": "uploads"})


# ---- the store and the algorithm, without the app ----------------------------------------------


def test_the_store_admits_exactly_the_limit_under_concurrency(database: TestDatabase) -> None:
    engine = create_engine(database.app_url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=16)
    store = PostgresStore(engine)
    bucket = f"test/60|ip|{secrets.token_hex(16)}"
    results: list[Counts] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def hammer() -> None:
        start.wait()
        for _ in range(5):
            counts = store.hit(bucket, limit=25, window_seconds=60)
            with lock:
                results.append(counts)

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.dispose()
    admitted = [c for c in results if c.counted]
    # A window boundary may pass meanwhile (the previous window then weighs in): never more than 25.
    assert 1 <= len(admitted) <= 25
    assert len(results) == 80
    if all(c.previous == 0 for c in results):
        assert len(admitted) == 25
        assert sorted(c.current for c in admitted) == list(range(1, 26))


def test_old_windows_are_pruned(database: TestDatabase) -> None:
    engine = create_engine(database.app_url.replace("postgresql://", "postgresql+psycopg://", 1))
    store = PostgresStore(engine)
    old, fresh = f"test/60|ip|{secrets.token_hex(16)}", f"test/60|ip|{secrets.token_hex(16)}"
    try:
        with engine.begin() as conn:
            conn.execute(text("insert into rate_limit_windows values (:b, now() - interval '2 hours', 3)"), {"b": old})
        store.hit(fresh, limit=5, window_seconds=60)
        assert store.prune(keep_seconds=600) >= 1
        with engine.connect() as conn:
            left = set(conn.execute(text("select bucket from rate_limit_windows where bucket in (:a, :b)"), {"a": old, "b": fresh}).scalars())
    finally:
        engine.dispose()
    assert left == {fresh}


_WAL = text("select wal_write, wal_sync from pg_stat_wal")


def _wal_flushes_for_hits(database: TestDatabase, superuser: Engine, hits: int) -> tuple[int, int]:
    """pg_stat_wal's (wal_write, wal_sync) deltas around `hits` counted hits on one connection that
    has synchronous_commit on. The counters are cluster-wide: other activity only adds to them."""
    engine = create_engine(database.app_url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=1, max_overflow=0,
                           connect_args={"options": "-c synchronous_commit=on"})
    store = PostgresStore(engine)
    bucket = f"test/60|ip|{secrets.token_hex(16)}"
    try:
        with engine.connect() as conn:  # the pool's one connection: every hit below runs on it
            pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
            assert conn.execute(text("show synchronous_commit")).scalar_one() == "on"
        with superuser.connect() as conn:
            before = conn.execute(_WAL).one()
        for _ in range(hits):
            assert store.hit(bucket, limit=10**6, window_seconds=60).counted
    finally:
        engine.dispose()
    with superuser.connect() as conn:
        # A backend reports its pending WAL statistics when it exits, at the latest.
        deadline = time.monotonic() + 10
        while conn.execute(text("select exists (select 1 from pg_stat_activity where pid = :pid)"), {"pid": pid}).scalar_one():
            assert time.monotonic() < deadline, "the hits' backend did not exit"
            time.sleep(0.01)
        after = conn.execute(_WAL).one()
    return after.wal_write - before.wal_write, after.wal_sync - before.wal_sync


def test_a_counted_hit_does_not_wait_for_a_wal_flush(fresh_database: TestDatabase) -> None:
    # Issue 9: the limiter adds no synchronous commit per request. A commit that waits for its WAL
    # writes it out (wal_write) and fsyncs it (wal_sync; not counted when fsync is off) itself: a hit
    # on an UNLOGGED table writes only its commit record, which PostgreSQL commits without waiting
    # even with synchronous_commit on. Noise from other sessions on the server only adds to the
    # counters, so the best of three runs is held to a generous bound; the control (the same
    # table LOGGED, on a database of its own) shows the probe sees a flush per hit.
    hits = 300
    superuser = create_engine(fresh_database.superuser_db_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        runs = []
        for _ in range(3):
            runs.append(_wal_flushes_for_hits(fresh_database, superuser, hits))
            if max(runs[-1]) < hits / 4:
                break
        assert min(max(run) for run in runs) < hits / 4, f"WAL (writes, syncs) per {hits} hits: {runs}"
        with superuser.connect() as conn:
            conn.execute(text("alter table rate_limit_windows set logged"))
        writes, _ = _wal_flushes_for_hits(fresh_database, superuser, hits)
        # Another session's flush can cover a commit record now and then: at least half still show.
        assert writes >= hits / 2, f"the probe did not see the flushes of a logged table ({writes} writes)"
    finally:
        superuser.dispose()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sliding_window_never_admits_twice_the_limit_around_a_boundary() -> None:
    clock = FakeClock(6000.0 + 59.0)  # one second before a window boundary
    store = MemoryStore(clock)
    admitted = sum(store.hit("b/60|ip|x", limit=10, window_seconds=60).counted for _ in range(10))
    clock.now += 2  # just past the boundary: a fixed window would admit ten more
    admitted_after = sum(store.hit("b/60|ip|x", limit=10, window_seconds=60).counted for _ in range(10))
    assert (admitted, admitted_after) == (10, 0)
    clock.now += 30  # halfway through: the previous window weighs 10 * (1 - 31/60) ≈ 4.8
    assert sum(store.hit("b/60|ip|x", limit=10, window_seconds=60).counted for _ in range(10)) == 5


def test_retry_after_is_when_the_next_hit_fits() -> None:
    window, limit = 60, 10
    for current, previous, elapsed in [(10, 0, 5.0), (4, 10, 12.0), (10, 10, 59.0), (3, 9, 0.0), (1, 1, 0.0)]:
        wait = next_allowed_in(current, previous, elapsed, limit, window)
        clock = FakeClock(6000.0 + elapsed)
        store = MemoryStore(clock)
        store._windows[("b", window, 99)] = previous  # the window before the one starting at 100 * 60
        store._windows[("b", window, 100)] = current
        if wait > 0:
            clock.now = 6000.0 + elapsed + wait - 0.01
            assert not store.hit("b", limit=limit, window_seconds=window).counted, (current, previous, elapsed)
        clock.now = 6000.0 + elapsed + wait + 0.01
        assert store.hit("b", limit=limit, window_seconds=window).counted, (current, previous, elapsed)


def test_decisions_count_down_and_refuse_with_retry_after() -> None:
    allowed, full_for = decide("default", Counts(current=3, previous=0, elapsed=10.0, counted=True), 5, 60)
    assert (allowed.allowed, allowed.remaining, allowed.reset, full_for) == (True, 2, 50, 0.0)
    last, full_for = decide("default", Counts(current=5, previous=0, elapsed=10.0, counted=True), 5, 60)
    assert (last.allowed, last.remaining, last.retry_after) == (True, 0, 0)
    assert full_for == pytest.approx(50 + 60 * (1 - 4 / 5))
    refused, _ = decide("default", Counts(current=5, previous=0, elapsed=10.0, counted=False), 5, 60)
    assert (refused.allowed, refused.remaining, refused.retry_after) == (False, 0, 62)
    assert refused.headers["Retry-After"] == "62"
    assert "Retry-After" not in last.headers


def test_refusals_sit_inside_the_edge_middlewares(database: TestDatabase, idp: TestIdP) -> None:
    # Whatever order the installs ran in, the limiter sits inside CORS and the security headers,
    # so a browser can read the 429 (and its Retry-After) and the refusal is hardened like any answer.
    from app.edge import http as edge

    origin = "https://app.example.test"
    app, settings = build(database, idp, rate_limit_per_minute=1, cors_allow_origins=[origin])
    if not getattr(app.state, "edge_http_installed", False):
        edge.install(app, settings)
    ratelimit.install(app, settings)  # again, after the edge: still placed once, inside CORS
    with serve(app) as client:
        caller = vendor(client, idp)
        assert caller.get("/api/v1/tenants", headers={"Origin": origin}).status_code == 200
        refused = caller.get("/api/v1/tenants", headers={"Origin": origin})
        assert_limited(refused, limit=1)
        assert refused.headers["Access-Control-Allow-Origin"] == origin
        assert refused.headers["X-Content-Type-Options"] == "nosniff"
        assert "X-Correlation-ID" in refused.headers
    names = [m.cls.__name__ for m in app.user_middleware]
    assert names.count("RateLimitMiddleware") == 1
    assert names.index("CorsMiddleware") < names.index("RateLimitMiddleware") < names.index("BodyLimitMiddleware")


# ---- repeat refusals answered before the token is verified (issue 9, noisy neighbour) ----------


@contextmanager
def statements_on(engine: Engine) -> Iterator[list[str]]:
    """The statements the app runs on its engine meanwhile (the alert engine's writes left out:
    they are coalesced and flushed from their own thread on a timer)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "alert_" not in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def verifier_rejecting_every_token(app: FastAPI, settings: Settings) -> Iterator[None]:
    """A real verifier that knows no issuer: any token that reaches it is a 401."""
    original, rejecting = app.state.verifier, TokenVerifier(settings.model_copy(update={"issuers": []}))
    app.state.verifier = rejecting
    try:
        yield
    finally:
        app.state.verifier = original
        rejecting.close()


def test_a_repeated_refusal_is_answered_before_the_token_is_verified(database: TestDatabase, idp: TestIdP) -> None:
    app, settings = build(database, idp, rate_limit_per_minute=2)
    with serve(app) as client:
        caller, neighbour = vendor(client, idp), vendor(client, idp)
        for _ in range(2):
            assert caller.get("/api/v1/tenants").status_code == 200
        first = caller.get("/api/v1/tenants")  # refused by the limiter after verification: remembered
        assert_limited(first, limit=2)
        # Another caller on the same path, and another class of this caller, are untouched.
        assert neighbour.get("/api/v1/tenants").status_code == 200
        assert caller.get("/api/v1/audit-events/export").status_code == 200
        with verifier_rejecting_every_token(app, settings), statements_on(app.state.engine) as statements:
            # The same token, method and path (the query string does not matter): 429 without the
            # token reaching the verifier (it would be a 401 now), without routing or the database.
            for url in ("/api/v1/tenants", "/api/v1/tenants?page=2"):
                again = caller.get(url)
                assert_limited(again, limit=2)
                assert int(again.headers["Retry-After"]) <= int(first.headers["Retry-After"])
                assert again.headers["RateLimit-Reset"] == again.headers["Retry-After"]
                assert "X-Correlation-ID" in again.headers  # still inside the outer middlewares
            assert statements == []
            # Everything else takes the normal path, and so meets the verifier:
            assert neighbour.get("/api/v1/tenants").status_code == 401  # another token, same path
            assert caller.get("/api/v1/tenants/" + str(uuid.uuid4())).status_code == 401  # same token, other path
            assert caller.post("/api/v1/tenants", json={}).status_code == 401  # same token and path, other method
            # The same subject with other token bytes (here: signed by a key the IdP never published).
            forged = idp.forge(jwt.decode(caller.token, options={"verify_signature": False}),
                               key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
            assert Caller(client, caller.subject, forged).get("/api/v1/tenants").status_code == 401
            assert statements  # the 401s were counted against the address: the normal path ran
        # Back to the real verifier: the other path is refused by the caller's bucket, as before.
        assert_limited(caller.get("/api/v1/tenants/" + str(uuid.uuid4())), limit=2)


def test_a_remembered_refusal_ends_at_the_retry_time(database: TestDatabase, idp: TestIdP) -> None:
    app, settings = build(database, idp, window=4, rate_limit_per_minute=2)
    with serve(app) as client:
        caller = vendor(client, idp)
        for _ in range(2):
            assert caller.get("/api/v1/tenants").status_code == 200
        first = caller.get("/api/v1/tenants")
        refused_at = time.monotonic()
        assert_limited(first, limit=2, window=4)
        retry_after = int(first.headers["Retry-After"])
        assert retry_after >= 3  # 2 hits in a 4 s window: the next fits 2-6 s later
        with verifier_rejecting_every_token(app, settings):  # answered from the remembered refusal
            second = caller.get("/api/v1/tenants")
            time.sleep(1.05)
            third = caller.get("/api/v1/tenants")
        assert_limited(second, limit=2, window=4)
        assert_limited(third, limit=2, window=4)
        assert int(third.headers["Retry-After"]) <= int(second.headers["Retry-After"]) - 1
        # At the retry time the entry is gone and the request is counted again (and admitted).
        time.sleep(max(0.0, refused_at + retry_after + 0.2 - time.monotonic()))
        r = caller.get("/api/v1/tenants")
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Limit"] == "2"


def test_a_remembered_refusal_ends_when_the_token_expires(database: TestDatabase, idp: TestIdP) -> None:
    app, _ = build(database, idp, rate_limit_per_minute=1, jwt_leeway_seconds=0)
    with serve(app) as client:
        claims = jwt.decode(vendor(client, idp).token, options={"verify_signature": False})
        expires = int(time.time()) + 3
        short = Caller(client, claims["sub"], idp.forge({**claims, "exp": expires}))  # signed with the IdP's own key
        assert short.get("/api/v1/tenants").status_code == 200
        assert_limited(short.get("/api/v1/tenants"), limit=1)  # retry in about a minute; the token ends sooner
        time.sleep(max(0.0, expires + 1.1 - time.time()))
        r = short.get("/api/v1/tenants")
        assert r.status_code == 401, r.text  # verified again (and expired), not a remembered 429
