"""The alert engine against real PostgreSQL (as the app role) and a real local webhook receiver."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.alerts import rules as R
from app.alerts.engine import DELIVERY_HEADER, AlertEngine
from app.config import Settings
from app.db.session import make_engine
from tests.support.database import TestDatabase
from tests.support.webhook import SECRET, Receiver, verify_signature


def rule(name: str, **changes: Any) -> R.Rule:
    base = next(r for r in R.DEFAULT_RULES if r.name == name)
    return replace(base, **changes)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def unique_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4()}"


# ---- engines ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_db(database: TestDatabase) -> Iterator[Engine]:
    engine = make_engine(database.app_url, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def alerts(app_db: Engine, database: TestDatabase, receiver: Receiver) -> Iterator[Callable[..., AlertEngine]]:
    """Builds started engines (the app role's connection pool, the receiver's URL); stops them after."""
    made: list[AlertEngine] = []

    def build(*rules: R.Rule, url: str | None = "receiver", start: bool = True, timeout: float = 30.0,
              **kw: Any) -> AlertEngine:
        settings = Settings(
            _env_file=None,
            database_url=database.app_url,
            alert_webhook_url=receiver.url if url == "receiver" else url,
            alert_webhook_secret=SECRET,
            http_timeout_seconds=timeout,
        )
        kw.setdefault("retry_base_delay", 0.01)
        kw.setdefault("retry_max_delay", 0.05)
        engine = AlertEngine(app_db, settings, rules=rules or None, **kw)
        made.append(engine)
        return engine.start() if start else engine

    yield build
    for engine in made:
        engine.stop(timeout=10)


# ---- firing and cooldown ------------------------------------------------------------------------


def test_threshold_fires_exactly_once_signed_with_the_right_body(alerts, receiver):
    engine = alerts(rule("auth_failures_per_ip", threshold=3, window_seconds=3600, cooldown_seconds=3600))
    key = unique_key("ip")
    for _ in range(2):
        engine.observe(R.AUTH_FAILURE_IP, key, details={"action": "token.rejected"})
    assert engine.flush()
    assert receiver.count() == 0

    engine.observe(R.AUTH_FAILURE_IP, key, details={"action": "token.rejected", "correlation_id": "c-1"})
    assert engine.flush()
    assert receiver.count() == 1
    received = receiver.requests[0]
    verify_signature(received)
    assert received.headers["content-type"] == "application/json"
    body = received.json
    assert set(body) == {"rule", "key", "count", "window_seconds", "threshold", "fired_at", "details"}
    assert body["rule"] == "auth_failures_per_ip"
    assert body["key"] == key
    assert body["count"] == 3
    assert body["threshold"] == 3
    assert body["window_seconds"] == 3600
    assert datetime.fromisoformat(body["fired_at"]).tzinfo is not None
    assert body["details"] == {"action": "token.rejected", "correlation_id": "c-1"}

    # Further observations within the cooldown: counted, not notified again.
    for _ in range(5):
        engine.observe(R.AUTH_FAILURE_IP, key)
    assert engine.flush()
    assert receiver.count() == 1
    assert engine.stats["fired"] == 1 and engine.stats["delivered"] == 1


def test_another_replica_within_the_cooldown_does_not_notify_again(alerts, receiver):
    r = rule("access_denied_burst", threshold=2, window_seconds=3600, cooldown_seconds=3600)
    first, second = alerts(r), alerts(r)
    key = unique_key("actor")
    first.observe(R.ACCESS_DENIED, key)
    first.observe(R.ACCESS_DENIED, key)
    assert first.flush()
    assert receiver.count() == 1

    # The other replica counts on in the same window (3, 4, 5 ≥ 2) but cannot claim the firing.
    for _ in range(3):
        second.observe(R.ACCESS_DENIED, key)
    assert second.flush()
    assert receiver.count() == 1
    assert second.stats["counted"] == 3 and second.stats["fired"] == 0


def test_replicas_racing_on_a_fresh_key_notify_once(alerts, receiver):
    r = rule("access_denied_burst", threshold=3, window_seconds=3600, cooldown_seconds=3600)
    engines = [alerts(r) for _ in range(3)]
    key = unique_key("race")
    start = threading.Barrier(len(engines))

    def hammer(engine: AlertEngine) -> None:
        start.wait()
        for _ in range(20):
            engine.observe(R.ACCESS_DENIED, key)

    threads = [threading.Thread(target=hammer, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e.flush() for e in engines)
    assert receiver.count() == 1
    assert sum(e.stats["fired"] for e in engines) == 1


def test_a_different_key_fires_separately(alerts, receiver):
    engine = alerts(rule("workspace_crossing_spike", threshold=2, window_seconds=3600, cooldown_seconds=3600))
    a, b = unique_key("a"), unique_key("b")
    for key in (a, a, b, b, a, b):
        engine.observe(R.WORKSPACE_CROSSING, key)
    assert engine.flush()
    assert sorted(r.json["key"] for r in receiver.requests) == sorted([a, b])


def test_fires_again_after_the_cooldown(alerts, receiver):
    engine = alerts(rule("secret_provider_errors", threshold=2, window_seconds=3600, cooldown_seconds=1))
    key = unique_key("provider")
    engine.observe(R.SECRET_PROVIDER_ERROR, key)
    engine.observe(R.SECRET_PROVIDER_ERROR, key)
    assert engine.flush()
    assert receiver.count() == 1

    def observe_and_check() -> bool:
        engine.observe(R.SECRET_PROVIDER_ERROR, key)
        engine.flush()
        return receiver.count() >= 2

    assert wait_for(observe_and_check)
    assert receiver.count() == 2
    first, second = (r.json for r in receiver.requests)
    assert datetime.fromisoformat(second["fired_at"]) > datetime.fromisoformat(first["fired_at"])
    assert second["count"] > first["count"]


def test_gauge_fires_when_the_value_reaches_the_threshold(alerts, receiver):
    engine = alerts(rule("approval_backlog", threshold=10, cooldown_seconds=3600))
    key = str(uuid.uuid4())
    engine.observe(R.APPROVAL_BACKLOG, key, value=5)
    engine.observe(R.APPROVAL_BACKLOG, key, value=9.5)
    assert engine.flush()
    assert receiver.count() == 0

    engine.observe(R.APPROVAL_BACKLOG, key, value=10)
    engine.observe(R.APPROVAL_BACKLOG, key, value=12)  # still above, within the cooldown
    assert engine.flush()
    assert receiver.count() == 1
    body = receiver.requests[0].json
    assert (body["rule"], body["key"], body["count"], body["threshold"], body["window_seconds"]) == (
        "approval_backlog", key, 10, 10, 0)


# ---- delivery ---------------------------------------------------------------------------------


def test_500_twice_then_200_is_delivered_after_retries(alerts, receiver):
    receiver.script = [500, 500]
    engine = alerts(rule("circuit_breaker_open", cooldown_seconds=3600))
    key = unique_key("provider")
    engine.observe(R.BREAKER_OPEN, key)
    assert engine.flush()
    assert receiver.count() == 3
    bodies = {r.body for r in receiver.requests}
    assert len(bodies) == 1  # the same notification, byte for byte
    assert len({r.headers[DELIVERY_HEADER.lower()] for r in receiver.requests}) == 1
    for received in receiver.requests:
        verify_signature(received)
    assert engine.stats["delivered"] == 1
    assert engine.stats["delivery_attempts"] == 3
    assert engine.stats["delivery_failed"] == 0


def test_429_is_retried(alerts, receiver):
    receiver.script = [429]
    engine = alerts(rule("circuit_breaker_open", cooldown_seconds=3600))
    engine.observe(R.BREAKER_OPEN, unique_key("provider"))
    assert engine.flush()
    assert receiver.count() == 2
    assert engine.stats["delivered"] == 1


def test_other_4xx_is_not_retried_and_releases_the_claim(alerts, receiver):
    receiver.script = [400]
    engine = alerts(rule("circuit_breaker_open", cooldown_seconds=3600))
    key = unique_key("provider")
    engine.observe(R.BREAKER_OPEN, key)
    assert engine.flush()
    assert receiver.count() == 1
    assert engine.stats["delivery_failed"] == 1 and engine.stats["delivered"] == 0

    # The undelivered firing does not silence the next one for the cooldown.
    engine.observe(R.BREAKER_OPEN, key)
    assert engine.flush()
    assert receiver.count() == 2
    assert engine.stats["delivered"] == 1


def test_attempts_are_bounded_when_the_webhook_is_unreachable(alerts):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = alerts(rule("circuit_breaker_open", cooldown_seconds=3600), url=f"http://127.0.0.1:{port}/", max_attempts=3)
    engine.observe(R.BREAKER_OPEN, unique_key("provider"))
    assert engine.flush()
    assert engine.stats["delivery_attempts"] == 3
    assert engine.stats["delivery_failed"] == 1


def test_observe_returns_while_the_webhook_hangs(alerts, receiver, app_db):
    receiver.hold = True
    engine = alerts(rule("role_escalation", cooldown_seconds=3600))
    key = unique_key("tenant")
    engine.observe(R.ROLE_ESCALATION, key)
    assert receiver.entered.wait(20)  # the delivery thread is now stuck in the receiver

    other = unique_key("tenant")
    for _ in range(50):
        engine.observe(R.ROLE_ESCALATION, other)
    # We got here: every observe() returned while the receiver still holds the first request.
    assert not receiver.release.is_set()
    assert receiver.count() == 1

    # Counting goes on while delivery hangs.
    def counted() -> bool:
        with app_db.connect() as conn:
            return conn.execute(
                text("select count from alert_counters where rule = 'role_escalation' and key = :k"), {"k": other}
            ).scalar() == 50

    assert wait_for(counted)
    receiver.release.set()
    assert engine.flush()
    assert sorted(r.json["key"] for r in receiver.requests) == sorted([key, other])


def test_full_queue_drops_and_counts_without_raising(alerts, receiver):
    engine = alerts(rule("auth_failures_per_ip", threshold=2, window_seconds=3600), start=False, queue_size=2)
    key = unique_key("ip")
    for _ in range(5):
        engine.observe(R.AUTH_FAILURE_IP, key)
    assert engine.dropped == 3
    engine.observe("no.such.signal", key)
    engine.observe(R.AUTH_FAILURE_IP, key, value=object())  # type: ignore[arg-type]
    assert engine.stats["ignored"] == 1
    assert engine.stats["errors"] == 1

    engine.start()
    assert engine.flush()
    assert engine.stats["counted"] == 2
    assert receiver.count() == 1


# ---- details, audit events, configuration ------------------------------------------------------


def test_details_are_scrubbed_before_they_leave(alerts, receiver):
    engine = alerts(rule("circuit_breaker_open", cooldown_seconds=3600))
    engine.observe(R.BREAKER_OPEN, unique_key("provider"),
                   details={"password": "hunter2-not-for-webhooks", "provider": "openai"})
    assert engine.flush()
    assert receiver.count() == 1
    assert b"hunter2-not-for-webhooks" not in receiver.requests[0].body
    assert receiver.requests[0].json["details"]["provider"] == "openai"



def test_a_committed_audit_event_feeds_its_rule(alerts, receiver):
    engine = alerts()  # the default rules
    tenant, user = uuid.uuid4(), uuid.uuid4()
    engine.observe_audit_event({
        "tenant_id": str(tenant), "id": str(uuid.uuid4()), "seq": 7, "category": "role_change",
        "action": "workspace_member.set_role", "outcome": "success", "actor_user_id": str(uuid.uuid4()),
        "target_type": "user", "target_id": str(user), "details": {"before": "member", "after": "owner"},
    })
    assert engine.flush()
    assert receiver.count() == 1
    body = receiver.requests[0].json
    assert (body["rule"], body["key"]) == ("role_escalation", f"{tenant}|{user}|owner")
    assert body["details"]["seq"] == 7 and body["details"]["role"] == "owner"


def test_without_a_webhook_firings_are_logged_not_sent(alerts, receiver):
    engine = alerts(rule("circuit_breaker_open", cooldown_seconds=3600), url=None)
    engine.observe(R.BREAKER_OPEN, unique_key("provider"))
    assert engine.flush()
    assert engine.stats["fired"] == 1
    assert receiver.count() == 0


def test_a_webhook_without_a_secret_is_refused(app_db, database):
    settings = Settings(_env_file=None, database_url=database.app_url, alert_webhook_url="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="SECRET"):
        AlertEngine(app_db, settings)


def test_old_windows_are_pruned(alerts, app_db):
    key = unique_key("old")
    with app_db.begin() as conn:
        conn.execute(text("insert into alert_counters (rule, key, window_start, count) "
                          "values ('http_5xx_rate', :k, now() - interval '3 days', 9)"), {"k": key})
    engine = alerts(rule("http_5xx_rate"), prune_interval=0)
    engine.observe(R.HTTP_5XX, unique_key("route"))
    assert engine.flush()
    with app_db.connect() as conn:
        assert conn.execute(text("select count(*) from alert_counters where key = :k"), {"k": key}).scalar() == 0


def test_an_injected_clock_drives_windows_and_cooldowns(alerts, receiver):
    now = [datetime.fromisoformat("2030-01-01T00:00:00+00:00")]
    from datetime import timedelta

    engine = alerts(rule("rate_limit_saturation", threshold=2, window_seconds=60, cooldown_seconds=600),
                    clock=lambda: now[0])
    key = unique_key("tenant")
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    now[0] += timedelta(seconds=61)  # next window: the count starts over
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    assert engine.flush()
    assert receiver.count() == 0
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    assert engine.flush()
    assert receiver.count() == 1
    assert receiver.requests[0].json["fired_at"].startswith("2030-01-01T00:01:01")
    now[0] += timedelta(seconds=120)  # a new window, still inside the cooldown
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    assert engine.flush()
    assert receiver.count() == 1
    now[0] += timedelta(seconds=600)  # past the cooldown
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    engine.observe(R.RATE_LIMIT_SATURATED, key)
    assert engine.flush()
    assert receiver.count() == 2
    assert receiver.requests[1].json["fired_at"].startswith("2030-01-01T00:13:01")


def test_the_app_role_has_only_the_grants_it_needs(app_db):
    with app_db.connect() as conn:
        rows = conn.execute(text(
            "select t, p, has_table_privilege(t, p) from unnest(array['alert_counters', 'alert_firings']) t, "
            "unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES']) p"
        )).all()
        columns = conn.execute(text(
            "select count(*) from information_schema.columns "
            "where table_name in ('alert_counters', 'alert_firings') and column_name = 'tenant_id'"
        )).scalar()
    held = {(t, p) for t, p, ok in rows if ok}
    assert held == {
        ("alert_counters", "SELECT"), ("alert_counters", "INSERT"), ("alert_counters", "UPDATE"),
        ("alert_counters", "DELETE"), ("alert_firings", "SELECT"), ("alert_firings", "INSERT"),
        ("alert_firings", "UPDATE"),
    }
    assert columns == 0


def test_a_queued_flood_of_keys_is_counted_together_and_exactly(alerts, receiver, app_db):
    # A flood from many addresses used to cost one transaction per observation; what is queued is
    # now counted in one statement per rule, same-key values summed, every key still exact.
    engine = alerts(rule("auth_failures_per_ip", threshold=5, window_seconds=3600, cooldown_seconds=3600), start=False)
    cold = [unique_key("ip") for _ in range(300)]
    hot = unique_key("ip")
    for key in cold:
        engine.observe(R.AUTH_FAILURE_IP, key)
    for n in range(3):
        engine.observe(R.AUTH_FAILURE_IP, hot, value=2, details={"n": n})  # aggregated events: 6 in all
    engine.start()
    assert engine.flush()
    assert engine.stats["counted"] == 303
    (fired,) = [r.json for r in receiver.requests]
    assert (fired["key"], fired["count"], fired["details"]) == (hot, 6, {"n": 2})
    with app_db.connect() as conn:
        counts = dict(conn.execute(text("select key, count from alert_counters where rule = 'auth_failures_per_ip'"
                                         " and key = any(:keys)"), {"keys": [*cold, hot]}).all())
    assert counts == {**dict.fromkeys(cold, 1), hot: 6}
