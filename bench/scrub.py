"""The log scrubber's cost per log line, and what its personal-data pass adds.

Every log line passes `app.observability.scrub.scrub` once, as the event dict the processor chain
hands it (message, level, logger, timestamp, request context, extra fields). Measured here on
three kinds of line, in this process, one core, no I/O:

- `request`: a typical request-scoped line (event name, context ids, a route, a duration);
- `audit`: the audit trail's line (`palisade.audit`, 23 fields incl. IP, subject, user agent,
  hashes, details);
- `personal`: a line whose message holds a phone number and an IBAN (both get masked).

Each line is scrubbed `n` times per round, the best of the rounds is kept (the least disturbed by
the machine); reported in microseconds per line, with the personal-data pass on and, as the
baseline, with it replaced by the identity (what the scrubber cost before the pass existed).

    python -m bench.scrub            # ~5 s; also part of `scripts/bench`
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from app.observability import scrub as scrub_module
from bench.kit import Context, Row, Section

NAME = "scrub"
TITLE = "Log scrubber, per line"

_TS = "2026-01-02T03:04:05.678901Z"
_CONTEXT = {"correlation_id": "c0ffee00-1234-4abc-8def-0123456789ab", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "tenant_id": "3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f"}

LINES: dict[str, dict[str, Any]] = {
    "request": {"event": "document_created", "level": "info", "logger": "palisade.knowledge", "timestamp": _TS,
                **_CONTEXT, "route": "/api/v1/tenants/{tenant_id}/workspaces/{workspace_id}/documents",
                "status": 201, "duration_ms": 12.5},
    "audit": {"event": "audit_event", "level": "info", "logger": "palisade.audit", "timestamp": _TS, **_CONTEXT,
              "audit": {"tenant_id": _CONTEXT["tenant_id"], "seq": 1234567, "id": "5b6a4c7d-8e9f-4a1b-8c3d-4e5f3f1c2d4e",
                        "occurred_at": _TS, "category": "content", "action": "document.create", "outcome": "success",
                        "workspace_id": "8e9f0a1b-2c3d-4e5f-8a6b-7c8d9e0f1a2b", "actor_type": "user",
                        "actor_user_id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                        "actor_issuer": "https://login.example.com/realms/acme", "actor_subject": "user-3f1c2d4e5b6a",
                        "actor_role": "member", "target_type": "document",
                        "target_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "client_ip": "203.0.113.7",
                        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                      "Chrome/120.0.6099.109 Safari/537.36",
                        "correlation_id": _CONTEXT["correlation_id"], "trace_id": _CONTEXT["trace_id"],
                        "details": {"title_length": 42, "bytes": 18231},
                        "prev_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                        "hash": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"}},
    "personal": {"event": "callback requested on +44 20 7946 0958, refund to GB82WEST12345698765432",
                 "level": "warning", "logger": "palisade.billing", "timestamp": _TS, **_CONTEXT},
}


def _per_line_us(fn: Callable[[Any], Any], line: dict[str, Any], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(n):
            fn(line)
        best = min(best, (time.perf_counter() - began) / n)
    return best * 1e6


def measure(n: int = 20_000, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """{line kind: (µs per line with the personal-data pass, µs per line without it)}."""
    results: dict[str, tuple[float, float]] = {}
    real = scrub_module.scrub_pii
    for kind, line in LINES.items():
        with_pii = _per_line_us(scrub_module.scrub, line, n, rounds)
        scrub_module.scrub_pii = lambda text: text  # the scrubber as it was before the pass
        try:
            without = _per_line_us(scrub_module.scrub, line, n, rounds)
        finally:
            scrub_module.scrub_pii = real
        results[kind] = (with_pii, without)
    return results


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    smoke = ctx.scale.name == "smoke"
    for kind, (with_pii, without) in measure(n=500 if smoke else 20_000, rounds=2 if smoke else 5).items():
        section.add(Row(metric=f"{kind} line, µs (baseline: without the personal-data pass)", value=with_pii,
                        unit="µs", baseline=without, ratio=with_pii / without))
    return section


def main() -> int:
    print("| line | µs per line | without the personal-data pass | added |")
    print("| --- | --- | --- | --- |")
    for kind, (with_pii, without) in measure().items():
        print(f"| {kind} | {with_pii:.1f} | {without:.1f} | {with_pii - without:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
