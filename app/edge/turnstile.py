"""Cloudflare Turnstile on public routes, verified server-side against siteverify.

On when a secret is configured (production requires one) and PALISADE_TURNSTILE is not `off`,
which production accepts only as an explicit choice (no route to Cloudflare). Any doubt fails closed: a missing,
invalid, reused or mismatched token is a 400; siteverify unreachable or answering nonsense is a
503, never a pass. Both are audited; the token and the secret are never logged.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

import httpx
from fastapi import Depends, Request

from app.audit.service import Category
from app.authz.denials import record_refusal
from app.config import Settings
from app.edge.client import client_address
from app.errors import DomainError

log = logging.getLogger(__name__)

HEADER = "CF-Turnstile-Response"
_MAX_TOKEN = 2048  # Cloudflare documents tokens of up to 2048 characters


class TurnstileFailed(DomainError):
    status = 400
    title = "Bad Request"


class TurnstileUnavailable(DomainError):
    status = 503
    title = "Service Unavailable"


class TurnstileVerifier:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http = httpx.Client(timeout=settings.http_timeout_seconds, follow_redirects=False)

    @property
    def enabled(self) -> bool:
        return self._settings.turnstile == "on" and bool(self._settings.turnstile_secret)

    def close(self) -> None:
        self._http.close()

    def verify(self, token: str | None, *, remote_ip: str | None) -> None:
        """Raise TurnstileFailed or TurnstileUnavailable unless siteverify vouches for this token."""
        if not token or len(token) > _MAX_TOKEN:
            raise TurnstileFailed("A Turnstile token is required (CF-Turnstile-Response header).")
        form = {"secret": self._settings.turnstile_secret, "response": token, "idempotency_key": str(uuid.uuid4())}
        if remote_ip:
            form["remoteip"] = remote_ip
        try:
            answer = self._http.post(self._settings.turnstile_siteverify_url, data=form)
            answer.raise_for_status()
            result = answer.json()
            if not isinstance(result, dict) or not isinstance(result.get("success"), bool):
                raise ValueError("not a siteverify answer")
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("turnstile_unavailable", extra={"error": type(exc).__name__})
            raise TurnstileUnavailable("The human check could not be verified right now; try again.") from None
        expected_host, expected_action = self._settings.turnstile_expected_hostname, self._settings.turnstile_expected_action
        if (
            not result["success"]
            or (expected_host and result.get("hostname") != expected_host)
            or (expected_action and result.get("action") != expected_action)
        ):
            log.info("turnstile_rejected", extra={"error_codes": result.get("error-codes", [])})
            raise TurnstileFailed("The human check failed; reload the page and try again.")


def require_turnstile(request: Request) -> None:
    """Dependency for public routes: a verified Turnstile token, or a 400/503 that is audited."""
    verifier: TurnstileVerifier = request.app.state.turnstile
    if not verifier.enabled:
        return
    address = client_address(request)
    try:
        verifier.verify(request.headers.get(HEADER), remote_ip=str(address) if address else None)
    except (TurnstileFailed, TurnstileUnavailable) as exc:
        record_refusal(request, action="turnstile.unavailable" if isinstance(exc, TurnstileUnavailable) else "turnstile.failed",
                       category=Category.authentication)
        raise


HumanVerified = Annotated[None, Depends(require_turnstile)]
