from __future__ import annotations

import uuid
from datetime import datetime

from app.schemas import Output
from app.uploads.inspect import Purpose


class FileRead(Output):
    id: uuid.UUID
    workspace_id: uuid.UUID
    purpose: Purpose
    filename: str
    # Detected from the content (the declared type is never stored).
    content_type: str
    size: int
    sha256: str
    uploaded_by: uuid.UUID | None
    created_at: datetime


class FilePage(Output):
    items: list[FileRead]
    next_cursor: str | None
