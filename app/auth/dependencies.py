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


def get_principal(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    try:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthenticated("missing")
        principal = request.app.state.verifier.verify(credentials.credentials)
    except VendorRoleRefused as exc:
        # A validly signed token claiming vendor staff from an issuer not trusted for it: who it named
        # is worth keeping (the issuer vouched for the subject, not for the role).
        record_failed_sign_in(request, action="token.vendor_role_refused",
                              actor=Actor(issuer=exc.issuer, subject=exc.subject, user_id=None, role="authenticated"))
        raise Unauthenticated() from None
    except Unauthenticated as exc:
        # Recorded (never the token itself) so repeated failures per address raise an alert.
        record_failed_sign_in(request, action="token.missing" if exc.detail == "missing" else "token.rejected")
        raise Unauthenticated() from None
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def _internal_admin(caller: Caller) -> Principal:
    if not caller.is_internal_admin:
        raise Forbidden("This needs the internal_admin role.")
    return caller


InternalAdmin = Annotated[Principal, Depends(_internal_admin)]
