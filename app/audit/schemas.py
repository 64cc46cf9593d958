from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from app.audit.service import Category
from app.schemas import BIGINT_MAX, Output, StrictInput


class AuditEventFilter(StrictInput):
    """Query parameters shared by the list and the export."""

    category: Category | None = None
    actor: Annotated[str | None, StringConstraints(max_length=255)] = Field(default=None, description="User id or IdP subject.")
    target_id: Annotated[str | None, StringConstraints(max_length=128)] = None
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: Annotated[str | None, StringConstraints(max_length=128)] = None


class AuditEventQuery(AuditEventFilter):
    """The list's parameters: the filters plus keyset pagination."""

    limit: int = Field(default=100, ge=1, le=500)
    cursor: int | None = Field(default=None, ge=0, le=BIGINT_MAX, description="`next_cursor` of the previous page.")


class AuditEventRead(Output):
    tenant_id: uuid.UUID
    seq: int | None
    id: uuid.UUID
    occurred_at: datetime
    category: str
    action: str
    outcome: str
    workspace_id: uuid.UUID | None
    actor_type: str | None
    actor_user_id: uuid.UUID | None
    actor_issuer: str | None
    actor_subject: str | None
    actor_role: str | None
    target_type: str | None
    target_id: str | None
    client_ip: str | None
    user_agent: str | None
    correlation_id: str | None
    trace_id: str | None
    details: dict[str, Any]
    prev_hash: str | None
    hash: str | None


class AuditEventPage(Output):
    items: list[AuditEventRead]
    next_cursor: str | None
