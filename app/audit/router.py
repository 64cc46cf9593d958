"""HTTP for reading and exporting the audit trail."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from app.audit import repository as repo
from app.audit.chain import PLATFORM_TENANT, plain
from app.audit.schemas import AuditEventFilter, AuditEventPage, AuditEventQuery, AuditEventRead
from app.audit.service import Category, as_dict, record_vendor_action
from app.auth.dependencies import InternalAdmin
from app.auth.principal import INTERNAL_ADMIN
from app.authz.dependencies import AuditTrailReader
from app.db.dependencies import DbSession
from app.db.session import DbContext, apply_context
from app.edge.client import Meta

router = APIRouter(tags=["audit"])

Filters = Annotated[AuditEventFilter, Query()]
PageQuery = Annotated[AuditEventQuery, Query()]


def _filter(f: AuditEventFilter) -> repo.EventFilter:
    return repo.EventFilter(**f.model_dump(include=set(AuditEventFilter.model_fields)))


def _read(evt) -> AuditEventRead:
    return AuditEventRead.model_validate({k: plain(v) for k, v in as_dict(evt).items()})


def _page(session: Session, tenant_id: uuid.UUID, query: AuditEventQuery) -> AuditEventPage:
    events = repo.page(session, tenant_id, _filter(query), limit=query.limit + 1, before_seq=query.cursor)
    items = events[: query.limit]
    more = len(events) > query.limit and items[-1].seq is not None
    return AuditEventPage(items=[_read(e) for e in items], next_cursor=str(items[-1].seq) if more else None)


def _jsonl(sessions: sessionmaker[Session], context: DbContext, tenant_id: uuid.UUID, filters: repo.EventFilter) -> Iterator[str]:
    """One event per line, then a trailer line: how many events came and the SHA-256 of their bytes.

    An export that stops early (the database went away, the connection broke) has no trailer, so a
    client can tell a cut export from a complete one even though the status was already 200.
    """
    digest, count = hashlib.sha256(), 0
    # Its own transaction: the stream outlives the request's, which committed the export record.
    with sessions() as session, session.begin():
        apply_context(session, context)
        for evt in repo.stream(session, tenant_id, filters):
            line = json.dumps({k: plain(v) for k, v in as_dict(evt).items()}, separators=(",", ":")) + "\n"
            digest.update(line.encode())
            count += 1
            yield line
    yield json.dumps({"trailer": {"events": count, "sha256": digest.hexdigest()}}, separators=(",", ":")) + "\n"


def _export(request: Request, scope_context: DbContext, tenant_id: uuid.UUID, filters: AuditEventFilter) -> StreamingResponse:
    return StreamingResponse(
        _jsonl(request.app.state.sessions, scope_context, tenant_id, _filter(filters)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="audit-{tenant_id}.jsonl"'},
    )


@router.get("/tenants/{tenant_id}/audit-events", response_model=AuditEventPage)
def list_tenant_events(scope: AuditTrailReader, query: PageQuery) -> AuditEventPage:
    """The tenant's trail, newest first: its customer_admins, or vendor staff while a grant is active."""
    return _page(scope.session, scope.tenant_id, query)


@router.get("/tenants/{tenant_id}/audit-events/export", response_class=StreamingResponse)
def export_tenant_events(request: Request, scope: AuditTrailReader, filters: Filters) -> StreamingResponse:
    """The tenant's trail as JSON Lines, oldest first, streamed (memory stays flat)."""
    scope.audit(category=Category.data_export, action="audit_events.export", target_type="audit_trail",
                details={"filters": filters.model_dump(mode="json", exclude_none=True)})
    context = DbContext(tenant_id=scope.tenant_id, user_id=scope.user_id,
                        platform_role=INTERNAL_ADMIN if scope.user_id is None else None)
    return _export(request, context, scope.tenant_id, filters)


@router.get("/audit-events", response_model=AuditEventPage)
def list_platform_events(caller: InternalAdmin, session: DbSession, meta: Meta, query: PageQuery) -> AuditEventPage:
    """Platform-level events (vendor staff's own actions, sign-in failures, refusals outside a tenant)."""
    record_vendor_action(session, principal=caller, meta=meta, action="audit_events.list")
    return _page(session, PLATFORM_TENANT, query)


@router.get("/audit-events/export", response_class=StreamingResponse)
def export_platform_events(request: Request, caller: InternalAdmin, session: DbSession, meta: Meta, filters: Filters) -> StreamingResponse:
    record_vendor_action(session, principal=caller, meta=meta, action="audit_events.export",
                         details={"filters": filters.model_dump(mode="json", exclude_none=True)})
    return _export(request, DbContext(tenant_id=PLATFORM_TENANT, platform_role=INTERNAL_ADMIN), PLATFORM_TENANT, filters)
