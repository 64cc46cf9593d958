"""Alerting: rules (data) counted in PostgreSQL across replicas, notified by a signed webhook.

Code deep in the stack (secret providers, breakers, the rate limiter) calls `alerts.observe(...)`;
it is a no-op until the app installs its engine with `alerts.install(engine)`, and never blocks or
raises either way.
"""

from __future__ import annotations

from typing import Any

from app.alerts.engine import AlertEngine, sign
from app.alerts.rules import (
    ACCESS_DENIED,
    APPROVAL_BACKLOG,
    AUDIT_CHAIN_BROKEN,
    AUTH_FAILURE_IP,
    AUTH_FAILURE_ISSUER,
    BREAKER_OPEN,
    DATA_DELETION,
    DATA_EXPORT,
    DATABASE_BUSY,
    DEFAULT_RULES,
    HTTP_5XX,
    RATE_LIMIT_SATURATED,
    ROLE_ESCALATION,
    SECRET_PROVIDER_ERROR,
    WORKSPACE_CROSSING,
    Rule,
    actor_key,
    describe_rules,
    ip_key,
    markdown_table,
    observations_for_audit_event,
)

_engine: AlertEngine | None = None


def install(engine: AlertEngine | None) -> None:
    """Make `engine` the one `alerts.observe()` feeds (None uninstalls)."""
    global _engine
    _engine = engine


def current() -> AlertEngine | None:
    return _engine


def observe(signal: str, key: str, *, value: float = 1.0, details: dict[str, Any] | None = None) -> None:
    """Observe through the installed engine; nothing happens when none is installed."""
    engine = _engine
    if engine is not None:
        engine.observe(signal, key, value=value, details=details)


def observe_audit_event(event: dict[str, Any]) -> None:
    """`audit.committed_hooks` entry: feeds committed audit events to the installed engine."""
    engine = _engine
    if engine is not None:
        engine.observe_audit_event(event)


__all__ = [
    "ACCESS_DENIED", "APPROVAL_BACKLOG", "AUDIT_CHAIN_BROKEN", "AUTH_FAILURE_IP", "AUTH_FAILURE_ISSUER",
    "BREAKER_OPEN", "DATABASE_BUSY", "DATA_DELETION", "DATA_EXPORT", "DEFAULT_RULES", "HTTP_5XX", "RATE_LIMIT_SATURATED",
    "ROLE_ESCALATION", "SECRET_PROVIDER_ERROR", "WORKSPACE_CROSSING", "AlertEngine", "Rule", "actor_key",
    "current", "describe_rules", "install", "ip_key", "markdown_table", "observe", "observe_audit_event",
    "observations_for_audit_event", "sign",
]
