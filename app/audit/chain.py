"""The audit hash chain: canonical encoding, hashing, and verification of a stored chain.

An event's hash covers every field a reader relies on, its place in the chain (`seq`) and the
previous event's hash, so editing, deleting, inserting or reordering rows breaks the chain at the
first event touched. The chain head (last seq and hash) catches rows cut off at the end.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
# The platform's own chain (vendor staff actions, failed sign-ins) lives under the nil tenant id.
PLATFORM_TENANT = uuid.UUID(int=0)

CHAINED_FIELDS = (
    "tenant_id", "seq", "id", "occurred_at", "category", "action", "outcome", "workspace_id",
    "actor_type", "actor_user_id", "actor_issuer", "actor_subject", "actor_role", "target_type",
    "target_id", "client_ip", "user_agent", "correlation_id", "trace_id", "details", "prev_hash",
)


def plain(value: Any) -> Any:
    """A field value as JSON: timestamps in UTC ISO form with microseconds, ids as strings."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if value is None or isinstance(value, (str, int, bool, dict, list)):
        return value
    return str(value)  # UUID, IP address


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: the chained fields as sorted, compact UTF-8 JSON."""
    body = {name: plain(event.get(name)) for name in CHAINED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first place a chain stops proving itself."""

    tenant_id: uuid.UUID
    kind: str  # altered | missing | reordered | unchained | truncated
    seq: int | None
    event_id: uuid.UUID | None
    message: str


def verify_chain(tenant_id: uuid.UUID, events: Iterable[Mapping[str, Any]], head: tuple[int, str] | None) -> tuple[int, Break | None]:
    """Walk one tenant's events in seq order; returns (events checked, first break or None)."""
    expected_seq, prev_hash, checked = 1, GENESIS, 0
    for event in events:
        seq, event_id = event.get("seq"), event.get("id")
        if seq is None or event.get("hash") is None:
            return checked, Break(tenant_id, "unchained", None, event_id, f"event {event_id} carries no chain link")
        if seq > expected_seq:
            return checked, Break(tenant_id, "missing", expected_seq, event_id,
                                  f"event seq {expected_seq} is missing (next present: seq {seq}, id {event_id})")
        if event.get("prev_hash") != prev_hash:
            return checked, Break(tenant_id, "reordered", seq, event_id,
                                  f"event seq {seq} (id {event_id}) does not link to seq {seq - 1}: events were reordered, or the one before it rewritten")
        if event_hash(event) != event["hash"]:
            return checked, Break(tenant_id, "altered", seq, event_id, f"event seq {seq} (id {event_id}) was altered: its hash does not match")
        expected_seq, prev_hash, checked = seq + 1, event["hash"], checked + 1
    last = (expected_seq - 1, prev_hash)
    if head is not None and (head[0], head[1]) != last:
        return checked, Break(tenant_id, "truncated", head[0], None,
                              f"the chain head says seq {head[0]} but the events end at seq {last[0]}: events were removed")
    if head is None and checked:
        return checked, Break(tenant_id, "truncated", None, None, "the chain head is missing")
    return checked, None
