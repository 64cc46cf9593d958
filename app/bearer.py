"""What a bearer token says about itself, before anything verifies it.

A compact JWS is `header.claims.signature`, the first two base64url-encoded JSON objects. Reading
them needs no key: the verifier (`app.auth.oidc`) reads the header's `alg`/`kid` and the claims'
`iss` to pick the issuer and key, then PyJWT verifies the whole token; the rate limiter
(`app.edge.ratelimit`) reads the `iss`/`sub` a failing token claims, and a verified token's `exp`.
Nothing read here is trusted for more than that.

Why not PyJWT for this too: its unverified decode checks every character of every segment in a
Python loop (~120 µs for a 2048-bit RS256 token on this project's machine), and a failing sign-in
was read three times before it was refused (issue 15: ~3 ms of CPU per refused attempt under a
flood). Here the two JSON segments are decoded by the standard library's base64 and json, once.
A token PyJWT would refuse may still be read here (base64 here skips characters outside the
alphabet); it is then refused by PyJWT's verification, never trusted.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The header and claims of a compact JWS, NOT verified; None when it is not three segments
    whose first two are base64url-encoded JSON objects."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2])
    except (ValueError, binascii.Error):  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not (isinstance(header, dict) and isinstance(claims, dict)):
        return None
    return header, claims
