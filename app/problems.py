"""RFC 9457 problem details for every error: no stack trace, no internal detail."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.errors import DomainError, Unauthenticated

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# What a client sees on 401; the reason (expired, bad signature, unknown issuer...) stays server-side.
WWW_AUTHENTICATE = 'Bearer realm="palisade"'
# PostgreSQL gave up waiting for us: lock_timeout (55P03), statement_timeout (57014).
_BUSY_SQLSTATES = frozenset({"55P03", "57014"})
BUSY_RETRY_AFTER_SECONDS = 1
# The most validation errors a 422 lists (`errors_total` says how many there were).
MAX_ERRORS = 20


def problem(status: int, *, detail: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


@lru_cache(maxsize=256)
def _path_regex(template: str) -> re.Pattern[str]:
    return compile_path(template)[0]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` serves at `path` (included routers too)."""
    methods: set[str] = set()
    for route in iter_route_contexts(app.routes):
        if route.path and route.methods and _path_regex(route.path).match(path):
            methods |= route.methods
    return sorted(methods)


def install(app: FastAPI, *, on_busy: Callable[[Request, str], None] | None = None) -> None:
    """The exception handlers. `on_busy(request, reason)` hears of each database-busy refusal
    (`create_app` wires it to the buffered audit trail); it must do no I/O."""

    def busy(request: Request, reason: str) -> JSONResponse:
        log.warning("database_busy", extra={"reason": reason})
        if on_busy is not None:
            on_busy(request, reason)
        return problem(503, detail="The service is busy; try again shortly.",
                       headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if isinstance(exc, Unauthenticated) else None
        return problem(exc.status, detail=exc.detail, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # The router names the first route matching the path only; say every method it serves.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request.app, request.url.path))}
        return problem(exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Field locations and messages only: the offending input is never echoed back. At most
        # MAX_ERRORS of them, with the total, so the answer to a hostile body stays small.
        found = exc.errors()
        errors = [{"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
                  for err in found[:MAX_ERRORS]]
        return problem(422, detail="The request is not valid.", errors=errors, errors_total=len(found))

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        # A race the service's own checks could not see (two creates of one slug, a row deleted
        # meanwhile): the transaction rolled back, nothing changed. The constraint stays unnamed.
        if getattr(exc.orig, "sqlstate", None) in {"23505", "23503"}:
            return problem(409, detail="The request conflicts with the current state.")
        log.exception("integrity_error")
        return problem(500)

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
        return busy(request, "pool_timeout")

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # A lock or statement timeout: the transaction rolled back, nothing changed; try again.
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in _BUSY_SQLSTATES:
            return busy(request, "lock_timeout" if sqlstate == "55P03" else "statement_timeout")
        log.exception("database_error")
        return problem(500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error")
        return problem(500)
