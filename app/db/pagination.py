"""Keyset pagination cursors over (created_at, id): opaque to clients, checked when they come back."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Protocol

from app.errors import DomainError


class Keyed(Protocol):
    created_at: datetime
    id: uuid.UUID


def encode_cursor(row: Keyed) -> str:
    raw = json.dumps([row.created_at.isoformat(), str(row.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a page continues after; a cursor we did not make is a 400."""
    try:
        created, ident = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(created, str) and isinstance(ident, str)):
            raise TypeError("cursor parts must be strings")
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (ValueError, TypeError, binascii.Error):
        raise DomainError("The cursor is not valid.") from None
