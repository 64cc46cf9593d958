"""Alert rules: data, not code. Each rule counts one signal per key in a fixed window and fires once
per cooldown when the count reaches its threshold (or, for a gauge, when the observed value does).

A *signal* is what the application observes (`AlertEngine.observe(signal, key)`); a *key* is what a
rule counts per — a client address, a tenant, an actor, a provider. Keys carry ids only (UUIDs,
addresses, route templates, provider names), never names, e-mail addresses or free text, and they
must have bounded cardinality: route *templates*, not raw paths; configured issuers, not the `iss`
of an unverified token. A per-tenant key starts with the tenant id, so the alert tables themselves
stay platform-level operational state without a `tenant_id` column.

`observations_for_audit_event()` maps a committed audit event (the dict the audit service hands
its `committed_hooks`) to the signals it feeds; everything else is observed where it happens.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

# The signals. Each default rule counts exactly one; a signal nobody counts is ignored cheaply.
AUTH_FAILURE_IP = "auth.failure.client_ip"
AUTH_FAILURE_ISSUER = "auth.failure.tenant_issuer"
ACCESS_DENIED = "authz.access_denied"
WORKSPACE_CROSSING = "authz.workspace_crossing"
ROLE_ESCALATION = "authz.role_escalation"
DATA_EXPORT = "privacy.data_export"
DATA_DELETION = "privacy.data_deletion"
AUDIT_CHAIN_BROKEN = "audit.chain_verification_failed"
HTTP_5XX = "http.server_error"
DATABASE_BUSY = "db.busy"
SECRET_PROVIDER_ERROR = "secrets.provider_error"
RATE_LIMIT_SATURATED = "edge.rate_limit_saturated"
BREAKER_OPEN = "pipelines.breaker_open"
APPROVAL_BACKLOG = "approvals.backlog"
VENDOR_ACCESS = "vendor.access_grant"

# Roles whose grant is an escalation worth a page, whoever grants them.
ESCALATION_ROLES = frozenset({"owner", "admin", "customer_admin"})

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SIGNAL = re.compile(r"^[a-z][a-z0-9_.]{0,127}$")


@dataclass(frozen=True)
class Rule:
    """One alert rule.

    kind "count": every observation of `signal` adds `value` (default 1) to the key's counter for
    the current fixed window of `window_seconds`; at `count >= threshold` the rule fires.
    kind "gauge": each observation carries the current level as `value`; the rule fires when
    `value >= threshold` (nothing is counted; `window_seconds` is 0).
    Either way it notifies at most once per rule and key per `cooldown_seconds`, across replicas.
    """

    name: str
    description: str
    signal: str
    threshold: float
    window_seconds: int
    cooldown_seconds: int
    key: str  # what the key is, for people
    kind: Literal["count", "gauge"] = "count"
    severity: Literal["info", "warning", "critical"] = "warning"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"rule name {self.name!r} must be lower-case letters, digits and _ (max 64)")
        if not _SIGNAL.match(self.signal):
            raise ValueError(f"signal {self.signal!r} must be lower-case letters, digits, _ and .")
        if self.kind not in ("count", "gauge"):
            raise ValueError(f"rule {self.name}: kind must be count or gauge")
        if not self.threshold > 0:
            raise ValueError(f"rule {self.name}: threshold must be positive")
        if self.kind == "count" and self.window_seconds < 1:
            raise ValueError(f"rule {self.name}: a count rule needs a window of at least 1 second")
        if self.kind == "gauge" and self.window_seconds != 0:
            raise ValueError(f"rule {self.name}: a gauge rule has no window (0)")
        if self.cooldown_seconds < 0:
            raise ValueError(f"rule {self.name}: cooldown must not be negative")


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="auth_failures_per_ip",
        description="Repeated authentication failures (missing, invalid or rejected tokens) from one client address: "
        "credential stuffing or token guessing.",
        signal=AUTH_FAILURE_IP, threshold=20, window_seconds=300, cooldown_seconds=900,
        key="client IP address (IPv6 grouped by /64); `unknown` when there is none",
    ),
    Rule(
        name="auth_failures_per_tenant_issuer",
        description="Repeated authentication failures against one tenant (the platform chain when the tenant is "
        "unknown) and issuer: a distributed attack on one customer, or a broken IdP configuration.",
        signal=AUTH_FAILURE_ISSUER, threshold=50, window_seconds=300, cooldown_seconds=900,
        key="`<tenant_id>|<issuer>` (`-` for an unverified or absent issuer)",
    ),
    Rule(
        name="access_denied_burst",
        description="Burst of refused requests (403) by one actor: probing for other tenants' or workspaces' ids, "
        "or a compromised account exploring.",
        signal=ACCESS_DENIED, threshold=20, window_seconds=300, cooldown_seconds=900,
        key="`<tenant_id>|<actor>`: actor is the user id, else `<issuer>|<subject>`, else `ip:<address>`",
    ),
    Rule(
        name="workspace_crossing_spike",
        description="Spike of explicit workspace crossings (copying or moving content between client workspaces) "
        "by one actor: possible exfiltration between brands.",
        signal=WORKSPACE_CROSSING, threshold=25, window_seconds=600, cooldown_seconds=1800,
        key="`<tenant_id>|<actor>`",
    ),
    Rule(
        name="role_escalation",
        description="Any grant of owner, admin or customer_admin (role change or accepted invitation); every one "
        "is notified.",
        signal=ROLE_ESCALATION, threshold=1, window_seconds=60, cooldown_seconds=300, severity="critical",
        key="`<tenant_id>|<user id granted>|<role>`",
    ),
    Rule(
        name="data_export_requested",
        description="A tenant data export was requested (at most one notice per tenant per hour).",
        signal=DATA_EXPORT, threshold=1, window_seconds=3600, cooldown_seconds=3600,
        key="`<tenant_id>`",
    ),
    Rule(
        name="data_deletion_requested",
        description="A data deletion was requested: a workspace, a user's data, a tenant, a privacy erasure "
        "(single documents and files deleted through the content API are ordinary edits and are not counted).",
        signal=DATA_DELETION, threshold=1, window_seconds=3600, cooldown_seconds=3600, severity="critical",
        key="`<tenant_id>|<target type>:<target id>`",
    ),
    Rule(
        name="vendor_access_granted",
        description="A customer_admin approved vendor staff's access request (or one was requested, denied, "
        "revoked or expired): every approval is notified, each lifecycle step is counted.",
        signal=VENDOR_ACCESS, threshold=1, window_seconds=3600, cooldown_seconds=300, severity="critical",
        key="`<tenant_id>|<grant id>|<step>` (request, approve, deny, revoke, expire)",
    ),
    Rule(
        name="audit_chain_broken",
        description="Audit hash-chain verification failed: an audit row was edited, deleted, inserted or reordered.",
        signal=AUDIT_CHAIN_BROKEN, threshold=1, window_seconds=3600, cooldown_seconds=3600, severity="critical",
        key="`<tenant_id>` of the chain (the nil UUID for the platform chain)",
    ),
    Rule(
        name="http_5xx_rate",
        description="Server errors (HTTP 5xx) on one class of routes: a failing dependency or a bug being hit.",
        signal=HTTP_5XX, threshold=25, window_seconds=300, cooldown_seconds=900,
        key="`<process kind>|<route template>` (e.g. `api|GET /api/v1/tenants/{tenant_id}`; `unmatched` "
        "when no route matched)",
    ),
    Rule(
        name="database_busy",
        description="Requests refused with 503 because the database was busy (a lock, statement or pool timeout), "
        "counted from the audit trail's aggregated `database_busy` events: one tenant's long transactions, or a "
        "saturated database.",
        signal=DATABASE_BUSY, threshold=10, window_seconds=300, cooldown_seconds=900,
        key="`<tenant_id>` of the refused caller (the nil UUID when the tenant is not known)",
    ),
    Rule(
        name="secret_provider_errors",
        description="Errors reading keys or secrets from the secret provider (Key Vault, key files): decryption "
        "will start failing.",
        signal=SECRET_PROVIDER_ERROR, threshold=5, window_seconds=300, cooldown_seconds=900, severity="critical",
        key="provider name (e.g. `azure_key_vault`, `file`)",
    ),
    Rule(
        name="rate_limit_saturation",
        description="One tenant keeps hitting its rate limit or fair-share ceiling: abuse, a runaway client, or a "
        "plan that is too small.",
        signal=RATE_LIMIT_SATURATED, threshold=100, window_seconds=300, cooldown_seconds=1800,
        key="`<tenant_id>` (fair-share refusals) or the rate-limit bucket: `user:<issuer>|<subject>`, `ip:<address>`",
    ),
    Rule(
        name="circuit_breaker_open",
        description="An upstream circuit breaker opened (LLM provider, IdP, billing): requests to it fail fast.",
        signal=BREAKER_OPEN, threshold=1, window_seconds=300, cooldown_seconds=900,
        key="provider name (e.g. `openai`, `azure_openai`)",
    ),
    Rule(
        name="approval_backlog",
        description="Pending human-in-the-loop approvals reached the threshold: reviewers are not keeping up.",
        signal=APPROVAL_BACKLOG, threshold=50, window_seconds=0, cooldown_seconds=3600, kind="gauge",
        key="`<tenant_id>`",
    ),
)


def validate(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """The rules as a tuple, refusing duplicate names."""
    result = tuple(rules)
    seen: set[str] = set()
    for rule in result:
        if rule.name in seen:
            raise ValueError(f"duplicate alert rule name {rule.name!r}")
        seen.add(rule.name)
    return result


validate(DEFAULT_RULES)


def describe_rules(rules: Iterable[Rule] = DEFAULT_RULES) -> list[dict[str, Any]]:
    """The rules as plain dicts, in order (for the README and `palisade` tooling)."""
    return [asdict(rule) for rule in rules]


def markdown_table(rules: Iterable[Rule] = DEFAULT_RULES) -> str:
    """The rules as a Markdown table, ready for the README."""
    lines = [
        "| rule | signal | fires at | window | cooldown | key | what it means |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rules:
        fires = f"value ≥ {r.threshold:g}" if r.kind == "gauge" else f"count ≥ {r.threshold:g}"
        window = "—" if r.kind == "gauge" else f"{r.window_seconds} s"
        lines.append(
            f"| `{r.name}` | `{r.signal}` | {fires} | {window} | {r.cooldown_seconds} s | {r.key} | {r.description} |"
        )
    return "\n".join(lines)


# ---- keys -------------------------------------------------------------------------------------


def ip_key(address: str | None) -> str:
    """A client address as a key: IPv6 grouped by /64 (one host holds a whole /64)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def actor_key(
    tenant_id: object,
    *,
    user_id: object = None,
    issuer: str | None = None,
    subject: str | None = None,
    client_ip: str | None = None,
) -> str:
    """`<tenant_id>|<actor>`: the user id, else issuer and subject, else the client address."""
    if user_id:
        actor = str(user_id)
    elif issuer and subject:
        actor = f"{issuer}|{subject}"
    else:
        actor = "ip:" + ip_key(client_ip)
    return f"{tenant_id}|{actor}"


class Observation(NamedTuple):
    signal: str
    key: str
    value: float = 1.0
    details: dict[str, Any] | None = None


_FAILED = frozenset({"failure", "denied", "error", "rejected"})


def _granted_role(event: Mapping[str, Any]) -> str | None:
    """The role an event grants, if it is an escalation role."""
    details = event.get("details") or {}
    if not isinstance(details, Mapping):
        return None
    candidates: list[Any] = []
    if event.get("category") == "role_change":
        candidates = [details.get("after"), details.get("role")]
    elif event.get("category") == "invitation" and str(event.get("action", "")).endswith(".accept"):
        candidates = [details.get("tenant_role"), details.get("workspace_role")]
    for role in candidates:
        if isinstance(role, str) and role in ESCALATION_ROLES:
            return role
    return None


def observations_for_audit_event(event: Mapping[str, Any]) -> list[Observation]:
    """What a committed audit event feeds the rules (the event as the audit log line: plain values)."""
    category = event.get("category")
    outcome = str(event.get("outcome") or "")
    tenant = str(event.get("tenant_id") or "-")
    actor = actor_key(
        tenant,
        user_id=event.get("actor_user_id"),
        issuer=event.get("actor_issuer"),
        subject=event.get("actor_subject"),
        client_ip=event.get("client_ip"),
    )
    ids = {
        name: event[name]
        for name in ("id", "seq", "category", "action", "outcome", "workspace_id", "target_type", "target_id",
                     "correlation_id", "trace_id")
        if event.get(name) is not None
    }
    out: list[Observation] = []
    # Failed sign-ins and database-busy refusals arrive aggregated (`app.audit.buffered`): one
    # event stands for `details.count` of them.
    count = (event.get("details") or {}).get("count")
    value = float(count) if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1.0
    if category == "authentication" and outcome in _FAILED:
        out.append(Observation(AUTH_FAILURE_IP, ip_key(event.get("client_ip")), value=value, details=ids))
        out.append(Observation(AUTH_FAILURE_ISSUER, f"{tenant}|{event.get('actor_issuer') or '-'}", value=value, details=ids))
    elif category == "availability" and event.get("action") == "database_busy":
        out.append(Observation(DATABASE_BUSY, tenant, value=value, details=ids))
    elif category == "access_denied":
        out.append(Observation(ACCESS_DENIED, actor, details=ids))
    elif category == "workspace_crossing" and outcome not in _FAILED:
        out.append(Observation(WORKSPACE_CROSSING, actor, details=ids))
    elif category in ("role_change", "invitation") and outcome == "success":
        role = _granted_role(event)
        if role is not None:
            user = event.get("target_id") or event.get("actor_user_id") or "-"
            out.append(Observation(ROLE_ESCALATION, f"{tenant}|{user}|{role}", details={**ids, "role": role}))
    elif category == "vendor_access" and str(event.get("action") or "").startswith("vendor_grant."):
        step = str(event["action"]).removeprefix("vendor_grant.")
        out.append(Observation(VENDOR_ACCESS, f"{tenant}|{event.get('target_id') or '-'}|{step}", details=ids))
    elif category == "data_export" and outcome not in _FAILED:
        out.append(Observation(DATA_EXPORT, tenant, details=ids))
    elif category == "data_deletion" and outcome not in _FAILED and event.get("target_type") not in ("document", "file"):
        target = f"{event.get('target_type') or '-'}:{event.get('target_id') or '-'}"
        out.append(Observation(DATA_DELETION, f"{tenant}|{target}", details=ids))
    return out
