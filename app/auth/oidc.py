"""JWT bearer verification against configured OpenID Providers (discovery document + JWKS).

Only asymmetric algorithms are accepted; the algorithm list is fixed here, never taken from the
token, so `alg: none` and HS256-signed-with-the-public-key both fail. Keys are cached per issuer;
an unknown `kid` triggers one prompt refetch (key rotation), rate-limited per issuer so a flood of
made-up kids cannot hammer the IdP.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from app.auth.principal import INTERNAL_ADMIN, Principal
from app.bearer import unverified
from app.config import IssuerConfig, Settings
from app.errors import Unauthenticated, WouldWait

log = logging.getLogger(__name__)


class VendorRoleRefused(Unauthenticated):
    """A valid token asserting `internal_admin` from an issuer not trusted for vendor staff.

    Answered like any other 401; the caller's identity is kept only for the audit trail.
    """

    def __init__(self, *, issuer: str, subject: str) -> None:
        super().__init__()
        self.issuer = issuer
        self.subject = subject

ALLOWED_ALGORITHMS = frozenset({"RS256", "PS256", "ES256"})
_KEY_TYPES = {"RSA", "EC"}


@dataclass(frozen=True)
class SigningKey:
    jwk: PyJWK
    # The `alg` the JWKS pins this key to, if any; a token must then use exactly that one.
    declared_alg: str | None


class IssuerKeys:
    """The signing keys of one issuer: fetched via discovery, cached, refreshed off the request path.

    Stale-while-revalidate: once the cache expires, requests keep verifying with the keys they
    have while one background refresh runs (its own HTTP timeout); an unknown `kid` (most likely a
    rotation) starts a refresh at most once per cooldown and waits for it at most
    `unknown_kid_wait` seconds. Only while no key has ever been fetched does a request wait for
    the fetch itself (nothing else could verify it). The lock is never held across I/O.
    """

    def __init__(
        self,
        config: IssuerConfig,
        *,
        http: httpx.Client | None,
        cache_seconds: float,
        cooldown_seconds: float,
        static_jwks: Mapping[str, Any] | None = None,
        unknown_kid_wait: float = 1.0,
    ) -> None:
        self.config = config
        self._http = http
        self._cache_seconds = cache_seconds
        self._cooldown = cooldown_seconds
        self._unknown_kid_wait = unknown_kid_wait
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at = float("-inf")
        self._last_unknown_kid_fetch = float("-inf")
        self._failed_at = float("-inf")
        self._refreshing: threading.Event | None = None  # set when the refresh in flight ends
        self._static = static_jwks is not None
        if static_jwks is not None:
            self._keys = self._parse(static_jwks)

    def key_for(self, kid: str, *, wait: bool = True) -> SigningKey:
        """The key named `kid`; raises Unauthenticated when there is none, and `WouldWait` instead
        of waiting for a fetch in flight when `wait` is false."""
        done = None if self._static else self._maybe_refresh(kid, time.monotonic())
        key = self._keys.get(kid)
        if key is None and done is not None:
            if not wait:
                raise WouldWait()
            # First use waits for the fetch (bounded by the HTTP timeout); a rotation only briefly.
            done.wait(None if not self._keys else self._unknown_kid_wait)
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated()
        return key

    def _maybe_refresh(self, kid: str, now: float) -> threading.Event | None:
        """Start a background refresh when one is due; the event of the refresh in flight, if any."""
        with self._lock:
            # The cache expired: refetch, unless the IdP failed us within the cooldown.
            due = now - self._fetched_at >= self._cache_seconds and now - self._failed_at >= self._cooldown
            # An unknown kid is most likely a rotation: refetch at once, but once per cooldown only.
            if not due and kid not in self._keys and now - self._last_unknown_kid_fetch >= self._cooldown:
                self._last_unknown_kid_fetch = now
                due = True
            if due and self._refreshing is None:
                self._refreshing = threading.Event()
                # In the triggering request's context, so its trace shows the fetch as a child span.
                context = contextvars.copy_context()
                threading.Thread(target=context.run, args=(self._refresh, self._refreshing), daemon=True,
                                 name=f"jwks-refresh {self.config.issuer}").start()
            return self._refreshing

    def _refresh(self, done: threading.Event) -> None:
        assert self._http is not None
        started = time.monotonic()
        try:
            discovery = self._http.get(self.config.discovery).raise_for_status().json()
            if not isinstance(discovery, dict) or discovery.get("issuer") != self.config.issuer:
                raise ValueError("discovery document names another issuer")
            jwks = self._http.get(discovery["jwks_uri"]).raise_for_status().json()
            if not isinstance(jwks, dict):
                raise ValueError("the JWKS is not a JSON object")
            keys = self._parse(jwks)
            with self._lock:
                self._keys, self._fetched_at = keys, started
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            # Keep serving with the keys we have; the IdP may be briefly down.
            with self._lock:
                self._failed_at = started
            log.warning("jwks_refresh_failed", extra={"issuer": self.config.issuer, "error": type(exc).__name__})
        finally:
            with self._lock:
                self._refreshing = None
            done.set()

    @staticmethod
    def _parse(jwks: Mapping[str, Any]) -> dict[str, SigningKey]:
        keys: dict[str, SigningKey] = {}
        for data in jwks.get("keys", []):
            if data.get("kty") not in _KEY_TYPES or data.get("use", "sig") != "sig" or "kid" not in data:
                continue
            if data.get("alg") is not None and data["alg"] not in ALLOWED_ALGORITHMS:
                continue
            try:
                keys[data["kid"]] = SigningKey(PyJWK(data), data.get("alg"))
            except jwt.PyJWTError:
                continue
        return keys


class TokenVerifier:
    """Verifies bearer tokens from any configured issuer and maps them to a Principal."""

    def __init__(self, settings: Settings, *, static_issuers: Mapping[str, tuple[IssuerConfig, Mapping[str, Any]]] | None = None) -> None:
        self._leeway = settings.jwt_leeway_seconds
        self._http = httpx.Client(timeout=settings.http_timeout_seconds, follow_redirects=False)
        self._issuers: dict[str, IssuerKeys] = {
            cfg.issuer: IssuerKeys(
                cfg,
                http=self._http,
                cache_seconds=settings.jwks_cache_seconds,
                cooldown_seconds=settings.jwks_refetch_cooldown_seconds,
            )
            for cfg in settings.issuers
        }
        for name, (cfg, jwks) in (static_issuers or {}).items():
            self._issuers[name] = IssuerKeys(cfg, http=None, cache_seconds=0, cooldown_seconds=0, static_jwks=jwks)

    @property
    def http(self) -> httpx.Client:
        """The client that fetches discovery documents and JWKS (instrumented for tracing)."""
        return self._http

    def close(self) -> None:
        self._http.close()

    def verify(self, token: str, *, wait: bool = True) -> Principal:
        """Return the principal of a valid token; raise Unauthenticated (no reason given) otherwise.
        With `wait` false, raise `WouldWait` rather than wait for the issuer's keys to arrive (no I/O
        is then waited on: safe on the event loop)."""
        try:
            # Read once, unverified, to pick the issuer and key (app/bearer.py); PyJWT verifies below.
            parts = unverified(token)
            if parts is None:
                raise Unauthenticated()
            header, claimed = parts
            alg = header.get("alg")
            kid = header.get("kid")
            # Type checks first: an unhashable alg or iss (a JSON list/object) must be a 401, not a 500.
            if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS or not isinstance(kid, str):
                raise Unauthenticated()
            iss = claimed.get("iss")
            keys = self._issuers.get(iss) if isinstance(iss, str) else None
            if keys is None:
                raise Unauthenticated()
            key = keys.key_for(kid, wait=wait)
            if key.declared_alg is not None and key.declared_alg != alg:
                raise Unauthenticated()
            claims = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                audience=keys.config.audience,
                issuer=keys.config.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            raise Unauthenticated() from None
        roles = _dotted(claims, keys.config.roles_claim)
        token_roles = frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset()
        if INTERNAL_ADMIN in token_roles and not _vendor_staff(keys.config, claims):
            # A tenant's own IdP (or the vendor's, without the required group) cannot mint vendor staff.
            raise VendorRoleRefused(issuer=claims["iss"], subject=str(claims["sub"]))
        return Principal(
            issuer=claims["iss"],
            subject=str(claims["sub"]),
            token_roles=token_roles,
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
            email_verified=claims.get("email_verified") is True,
            name=claims.get("name") if isinstance(claims.get("name"), str) else None,
        )


def _vendor_staff(config: IssuerConfig, claims: Mapping[str, Any]) -> bool:
    """May this issuer's token carry internal_admin: the vendor's issuer, with the required claim value if one is set."""
    if not config.vendor:
        return False
    if config.vendor_claim is None:
        return True
    value = _dotted(claims, config.vendor_claim)
    if isinstance(value, str):
        return value == config.vendor_claim_value
    return isinstance(value, list) and config.vendor_claim_value in [v for v in value if isinstance(v, str)]


def _dotted(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
