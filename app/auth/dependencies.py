"""The bearer-token dependency that the whole API router carries."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.principal import Principal
from app.errors import Forbidden, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="An OIDC access token (JWT) from a configured issuer.")


def get_principal(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated()
    principal = request.app.state.verifier.verify(credentials.credentials)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def _internal_admin(caller: Caller) -> Principal:
    if not caller.is_internal_admin:
        raise Forbidden()
    return caller


InternalAdmin = Annotated[Principal, Depends(_internal_admin)]
