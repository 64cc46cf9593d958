"""Refused access is recorded, in a transaction of its own: the request's own work rolls back.

A refusal inside a tenant the caller belongs to goes to that tenant's chain. A refusal where the
caller has no tenant (a tenant they are not in, a vendor-only route) goes to the platform chain, so
a probed tenant's existence is never written into anybody's trail but ours. A failed sign-in (a
missing or unusable token) goes to the platform chain too, buffered and aggregated
(`record_failed_sign_in`, `app.audit.buffered`), and so does a request refused because the database
is busy (`record_database_busy`; to the caller's tenant when known).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app import problems
from app.audit.chain import PLATFORM_TENANT
from app.audit.service import ANONYMOUS, Actor, Category, record_detached
from app.auth.principal import INTERNAL_ADMIN
from app.edge.client import request_meta
from app.errors import Forbidden
from app.observability.tracing import current_trace_id


def record_refusal(
    request: Request,
    *,
    action: str,
    tenant_id: uuid.UUID | None = None,
    actor: Actor | None = None,
    category: Category = Category.access_denied,
    **fields: Any,
) -> None:
    """Write one refusal event (best effort) for this request."""
    record_detached(
        request.app.state.sessions,
        tenant_id=tenant_id or PLATFORM_TENANT,
        actor=actor or _actor(request),
        meta=request_meta(request),
        category=category,
        action=action,
        outcome="denied",
        **fields,
    )


def record_failed_sign_in(request: Request, *, action: str, actor: Actor | None = None) -> None:
    """Buffer one failed sign-in for the platform chain (`app.audit.buffered`): no I/O here."""
    request.app.state.audit_buffer.add(category=Category.authentication, action=action, actor=actor or ANONYMOUS,
                                       meta=request_meta(request), trace_id=current_trace_id())


def record_database_busy(request: Request, reason: str) -> None:
    """Buffer one database-busy refusal (`app.audit.buffered`): no I/O here, the database is saturated.

    To the caller's tenant when they are a member of it (as `record_refusal` decides), else to the
    platform chain; labelled with the reason and the route template, never the request's content.
    """
    scope = getattr(request.state, "authz_scope", None)
    request.app.state.audit_buffer.add(
        category=Category.availability, action="database_busy", actor=_actor(request), meta=request_meta(request),
        tenant_id=scope.tenant_id if scope and scope.user_id else None, outcome="refused",
        trace_id=current_trace_id(), labels={"reason": reason, "route": route_label(request)})


def route_label(request: Request) -> str:
    """`METHOD /path/{template}` (relative to the API root): names the route without the ids in it."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


def _actor(request: Request) -> Actor:
    scope = getattr(request.state, "authz_scope", None)
    if scope is not None:
        return scope.actor()
    principal = getattr(request.state, "principal", None)
    if principal is None:
        return ANONYMOUS
    return Actor(issuer=principal.issuer, subject=principal.subject, user_id=None,
                 role=INTERNAL_ADMIN if principal.is_internal_admin else "authenticated")


def install(app: FastAPI) -> None:
    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        scope = getattr(request.state, "authz_scope", None)
        await run_in_threadpool(
            record_refusal,
            request,
            action=route_label(request),
            tenant_id=scope.tenant_id if scope and scope.user_id else None,
            workspace_id=getattr(scope, "workspace_id", None),
            details={"reason": exc.detail or "forbidden"},
        )
        return problems.problem(403, detail=exc.detail)
