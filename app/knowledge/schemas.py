from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import StringConstraints

from app.schemas import Output, StrictInput

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
Body = Annotated[str, StringConstraints(max_length=100_000)]


class DocumentCreate(StrictInput):
    title: Title
    body: Body


class DocumentUpdate(StrictInput):
    title: Title | None = None
    body: Body | None = None


class DocumentCopy(StrictInput):
    target_workspace_id: uuid.UUID


class DocumentRead(Output):
    id: uuid.UUID
    workspace_id: uuid.UUID
    title: str
    body: str
    author_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class DocumentPage(Output):
    items: list[DocumentRead]
    next_cursor: str | None
