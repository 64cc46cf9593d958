"""The rules are data: documented, valid, and fed by the right audit events."""

from __future__ import annotations

import uuid
from dataclasses import FrozenInstanceError, replace

import pytest

from app.alerts import rules as R

TENANT = str(uuid.uuid4())


def test_the_documented_rules():
    names = [r.name for r in R.DEFAULT_RULES]
    assert names == [
        "auth_failures_per_ip", "auth_failures_per_tenant_issuer", "access_denied_burst",
        "workspace_crossing_spike", "role_escalation", "data_export_requested", "data_deletion_requested",
        "vendor_access_granted",
        "audit_chain_broken", "http_5xx_rate", "database_busy", "secret_provider_errors", "rate_limit_saturation",
        "circuit_breaker_open", "approval_backlog",
    ]
    assert len({r.signal for r in R.DEFAULT_RULES}) == len(names)
    for name in ("role_escalation", "data_export_requested", "data_deletion_requested", "vendor_access_granted",
                 "audit_chain_broken"):
        assert next(r for r in R.DEFAULT_RULES if r.name == name).threshold == 1
    assert next(r for r in R.DEFAULT_RULES if r.name == "approval_backlog").kind == "gauge"


def test_describe_rules_and_the_table():
    described = R.describe_rules()
    assert len(described) == len(R.DEFAULT_RULES)
    for item in described:
        assert set(item) == {"name", "description", "signal", "threshold", "window_seconds", "cooldown_seconds",
                             "key", "kind", "severity"}
        assert item["description"] and item["key"]
    table = R.markdown_table()
    assert all(f"`{r.name}`" in table for r in R.DEFAULT_RULES)


def test_rules_are_frozen_and_validated():
    rule = R.DEFAULT_RULES[0]
    with pytest.raises(FrozenInstanceError):
        rule.threshold = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        replace(rule, threshold=0)
    with pytest.raises(ValueError):
        replace(rule, window_seconds=0)
    with pytest.raises(ValueError):
        replace(rule, name="Bad Name")
    with pytest.raises(ValueError, match="duplicate"):
        R.validate([rule, rule])


def test_ip_keys():
    assert R.ip_key("203.0.113.9") == "203.0.113.9"
    assert R.ip_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert R.ip_key("::ffff:198.51.100.1") == "198.51.100.1"
    assert R.ip_key(None) == R.ip_key("not an ip") == "unknown"


def event(**fields):
    return {"tenant_id": TENANT, "outcome": "success", "details": {}, **fields}


def signals(evt):
    return [(o.signal, o.key) for o in R.observations_for_audit_event(evt)]


def test_failed_authentication_counts_per_address_and_per_tenant_issuer():
    evt = event(category="authentication", action="token.rejected", outcome="denied", client_ip="203.0.113.7")
    assert signals(evt) == [(R.AUTH_FAILURE_IP, "203.0.113.7"), (R.AUTH_FAILURE_ISSUER, f"{TENANT}|-")]
    assert signals(event(category="authentication", action="sign_in")) == []


def test_an_aggregated_failed_sign_in_counts_as_many_failures():
    evt = event(category="authentication", action="token.rejected", outcome="denied", client_ip="203.0.113.7",
                details={"count": 37})
    assert [o.value for o in R.observations_for_audit_event(evt)] == [37.0, 37.0]
    for odd in (0, -3, True, "37", None):
        evt["details"] = {"count": odd}
        assert [o.value for o in R.observations_for_audit_event(evt)] == [1.0, 1.0]


def test_denials_and_crossings_count_per_actor():
    user = str(uuid.uuid4())
    assert signals(event(category="access_denied", outcome="denied", actor_user_id=user)) == [
        (R.ACCESS_DENIED, f"{TENANT}|{user}")]
    assert signals(event(category="access_denied", outcome="denied", actor_issuer="https://idp", actor_subject="s1")) == [
        (R.ACCESS_DENIED, f"{TENANT}|https://idp|s1")]
    assert signals(event(category="workspace_crossing", actor_user_id=user)) == [
        (R.WORKSPACE_CROSSING, f"{TENANT}|{user}")]


@pytest.mark.parametrize(("category", "action", "details", "role"), [
    ("role_change", "workspace_member.set_role", {"before": "member", "after": "owner"}, "owner"),
    ("role_change", "workspace_member.set_role", {"before": "viewer", "after": "admin"}, "admin"),
    ("role_change", "tenant_member.role_change", {"before": "member", "after": "customer_admin"}, "customer_admin"),
    ("invitation", "invitation.accept", {"tenant_role": "customer_admin", "workspace_role": None}, "customer_admin"),
    ("invitation", "invitation.accept", {"tenant_role": "member", "workspace_role": "admin"}, "admin"),
    ("role_change", "workspace_member.set_role", {"before": "admin", "after": "member"}, None),
    ("invitation", "invitation.create", {"tenant_role": "customer_admin"}, None),
])
def test_role_escalation(category, action, details, role):
    target = str(uuid.uuid4())
    got = signals(event(category=category, action=action, details=details, target_id=target))
    assert got == ([(R.ROLE_ESCALATION, f"{TENANT}|{target}|{role}")] if role else [])


def test_exports_and_deletions():
    assert signals(event(category="data_export", action="export.request")) == [(R.DATA_EXPORT, TENANT)]
    ws = str(uuid.uuid4())
    assert signals(event(category="data_deletion", action="workspace.delete", target_type="workspace",
                         target_id=ws)) == [(R.DATA_DELETION, f"{TENANT}|workspace:{ws}")]
    assert signals(event(category="data_deletion", action="document.delete", target_type="document",
                         target_id=ws)) == []
    assert signals(event(category="content_change", action="document.update")) == []


@pytest.mark.parametrize("step", ["request", "approve", "deny", "revoke", "expire"])
def test_each_vendor_grant_step_is_a_signal(step):
    grant = str(uuid.uuid4())
    got = signals(event(category="vendor_access", action=f"vendor_grant.{step}", target_id=grant))
    assert got == [(R.VENDOR_ACCESS, f"{TENANT}|{grant}|{step}")]
    # A vendor's read under a grant is audited in the same category but is no lifecycle step.
    assert signals(event(category="vendor_access", action="GET /tenants/{tenant_id}/audit-events")) == []
