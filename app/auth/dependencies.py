"""The bearer-token dependency that the whole API router carries."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.audit.service import Actor
from app.auth.oidc import VendorRoleRefused
from app.auth.principal import Principal
from app.authz.denials import record_failed_sign_in
from app.errors import Forbidden, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="An OIDC access token (JWT) from a configured issuer.")


def authenticate(request: Request, token: str | None, *, wait: bool = True) -> Principal:
    """The principal of a bearer token; a missing or unusable one is recorded as a failed sign-in
    (never the token itself) and raised as `Unauthenticated`, the same whatever the reason. With
    `wait` false, `WouldWait` (nothing recorded) where the answer needs the issuer's keys fetched."""
    try:
        if token is None:
            raise Unauthenticated("missing")
        return request.app.state.verifier.verify(token, wait=wait)
    except VendorRoleRefused as exc:
        # A validly signed token claiming vendor staff from an issuer not trusted for it: who it named
        # is worth keeping (the issuer vouched for the subject, not for the role).
        record_failed_sign_in(request, action="token.vendor_role_refused",
                              actor=Actor(issuer=exc.issuer, subject=exc.subject, user_id=None, role="authenticated"))
        raise Unauthenticated() from None
    except Unauthenticated as exc:
        # Recorded so repeated failures per address raise an alert.
        record_failed_sign_in(request, action="token.missing" if exc.detail == "missing" else "token.rejected")
        raise Unauthenticated() from None


def get_principal(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    token = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else None
    principal = authenticate(request, token)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def _internal_admin(caller: Caller) -> Principal:
    if not caller.is_internal_admin:
        raise Forbidden("This needs the internal_admin role.")
    return caller


InternalAdmin = Annotated[Principal, Depends(_internal_admin)]
