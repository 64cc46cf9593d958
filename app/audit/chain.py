"""The audit hash chain: canonical encoding, hashing, and verification of a stored chain.

An event's hash covers every field a reader relies on, its place in the chain (`seq`) and the
previous event's hash, so editing, deleting, inserting or reordering rows breaks the chain at the
first event touched. The chain head (last seq and hash) catches rows cut off at the end.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, Protocol

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
    if value is None or type(value) is str or isinstance(value, (str, int, bool, dict, list)):
        return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return str(value)  # UUID, IP address


# The canonical form is `json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
# of the chained fields. `canonical` writes that same text without building the body dict: the
# top-level keys are fixed, so their sorted order and `"key":` prefixes are computed once, and
# each value is rendered as the encoder renders it inside the body (`_json`). Verifying a long
# chain spends most of its time here; tests/audit/test_canonical.py holds it to `json.dumps`.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_SLOTS = tuple((("{" if i == 0 else ",") + _ENCODE(name) + ":", name) for i, name in enumerate(sorted(CHAINED_FIELDS)))


def _json(value: Any) -> str:
    """One field's `plain` value as JSON, exactly as `_ENCODE` writes it inside an object."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)  # what the encoder uses for strings when ensure_ascii=False
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is dict and not value:
        return "{}"
    value = plain(value)
    if type(value) is str:  # timestamps, ids, addresses
        return encode_basestring(value)
    return _ENCODE(value)  # objects (sorted, nested), lists, floats, subclasses: the encoder itself


def reference_canonical(event: Mapping[str, Any]) -> bytes:
    """The definition `canonical` must equal, byte for byte."""
    body = {name: plain(event.get(name)) for name in CHAINED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: the chained fields as sorted, compact UTF-8 JSON."""
    get = event.get
    return ("".join([prefix + _json(get(name)) for prefix, name in _SLOTS]) + "}").encode()


# The two chained fields only known under the chain head's lock sit next to each other in the
# sorted order: `..."prev_hash":<prev>,"seq":<seq>,...`. `service.record` sends the rest of the
# canonical text, rendered here, and lets PostgreSQL fill in the two values it reads under that
# lock (see `link_canonical` for what it computes).
_NAMES = [name for _, name in _SLOTS]
_PREV_AT = _NAMES.index("prev_hash")
assert _NAMES[_PREV_AT + 1] == "seq", "prev_hash and seq must be adjacent in the canonical form"


def canonical_around_link(event: Mapping[str, Any]) -> tuple[bytes, bytes, bytes]:
    """`canonical(event)` cut around its link values: (before, between, after).

    For a chain head's hash `prev_hash` (a string) and the next `seq` (an int), `link_canonical`
    joins them into exactly `canonical({**event, "prev_hash": prev_hash, "seq": seq})`.
    """
    get = event.get
    before = "".join([prefix + _json(get(name)) for prefix, name in _SLOTS[:_PREV_AT]]) + _SLOTS[_PREV_AT][0]
    after = "".join([prefix + _json(get(name)) for prefix, name in _SLOTS[_PREV_AT + 2:]]) + "}"
    return before.encode(), _SLOTS[_PREV_AT + 1][0].encode(), after.encode()


def link_canonical(parts: tuple[bytes, bytes, bytes], prev_hash: str, seq: int) -> bytes:
    """The canonical bytes from `canonical_around_link`'s parts and the link values; the SQL in
    `service.record` computes the same: before || to_json(prev_hash) || between || seq || after."""
    before, between, after = parts
    return before + _json(prev_hash).encode() + between + int.__repr__(seq).encode() + after


def event_hash(event: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first place a chain stops proving itself."""

    tenant_id: uuid.UUID
    kind: str  # altered | missing | reordered | unchained | truncated | rewritten | dropped (the last two: against a checkpoint)
    seq: int | None
    event_id: uuid.UUID | None
    message: str


def _event_id(event: Mapping[str, Any]) -> uuid.UUID | None:
    value = event.get("id")
    return uuid.UUID(value) if isinstance(value, str) else value


class Anchor(Protocol):
    """A signed checkpoint of a chain (`app.audit.anchor.Checkpoint`): its seq and hash at a time."""

    seq: int
    hash: str
    at: datetime


def _at(anchor: Anchor) -> str:
    return anchor.at.astimezone(UTC).isoformat(timespec="seconds")


def verify_chain(tenant_id: uuid.UUID, events: Iterable[Mapping[str, Any]], head: tuple[int, str] | None,
                 anchors: Sequence[Anchor] = ()) -> tuple[int, Break | None]:
    """Walk one tenant's events in seq order; returns (events checked, first break or None).

    `anchors` (sorted by seq) are checkpoints taken earlier: the event at each one's seq must still
    carry its hash (else the chain was rewritten and re-chained since), and the chain must reach
    the highest one (else events were dropped).
    """
    expected_seq, prev_hash, checked = 1, GENESIS, 0
    anchor_at, next_anchor = 0, anchors[0].seq if anchors else None
    matched: Anchor | None = None
    for event in events:
        seq = event.get("seq")
        if seq is None or event.get("hash") is None:
            event_id = _event_id(event)
            return checked, Break(tenant_id, "unchained", None, event_id, f"event {event_id} carries no chain link")
        if seq > expected_seq:
            event_id = _event_id(event)
            return checked, Break(tenant_id, "missing", expected_seq, event_id,
                                  f"event seq {expected_seq} is missing (next present: seq {seq}, id {event_id})")
        if event.get("prev_hash") != prev_hash:
            event_id = _event_id(event)
            return checked, Break(tenant_id, "reordered", seq, event_id,
                                  f"event seq {seq} (id {event_id}) does not link to seq {seq - 1}: events were reordered, or the one before it rewritten")
        if event_hash(event) != event["hash"]:
            event_id = _event_id(event)
            return checked, Break(tenant_id, "altered", seq, event_id, f"event seq {seq} (id {event_id}) was altered: its hash does not match")
        if seq == next_anchor:
            while anchor_at < len(anchors) and anchors[anchor_at].seq == seq:
                anchor = anchors[anchor_at]
                if anchor.hash != event["hash"]:
                    event_id = _event_id(event)
                    since = f"after seq {matched.seq} (checkpoint of {_at(matched)} matches)" if matched else "from seq 1"
                    return checked, Break(tenant_id, "rewritten", seq, event_id,
                                          f"event seq {seq} (id {event_id}) does not carry the hash of the checkpoint of {_at(anchor)}: "
                                          f"an event {since} up to seq {seq} was rewritten and the chain re-chained since")
                matched, anchor_at = anchor, anchor_at + 1
            next_anchor = anchors[anchor_at].seq if anchor_at < len(anchors) else None
        expected_seq, prev_hash, checked = seq + 1, event["hash"], checked + 1
    last = (expected_seq - 1, prev_hash)
    if head is not None and (head[0], head[1]) != last:
        return checked, Break(tenant_id, "truncated", head[0], None,
                              f"the chain head says seq {head[0]} but the events end at seq {last[0]}: events were removed")
    if head is None and checked:
        return checked, Break(tenant_id, "truncated", None, None, "the chain head is missing")
    if anchor_at < len(anchors):
        highest = anchors[-1]
        return checked, Break(tenant_id, "dropped", highest.seq, None,
                              f"the checkpoint of {_at(highest)} records seq {highest.seq} but the chain ends at seq {last[0]}: "
                              f"events seq {last[0] + 1} to {highest.seq} were dropped (and the head moved back)")
    return checked, None
