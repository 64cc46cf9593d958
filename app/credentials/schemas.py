from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, Field, SecretStr, StringConstraints

from app.credentials.models import CredentialKind, Provider
from app.credentials.service import MAX_SECRET_CHARS, MIN_SECRET_CHARS
from app.schemas import Output, StrictInput

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# SecretStr: masked in every repr and log line; a validation error never echoes it (app.problems).
Secret = Annotated[SecretStr, Field(min_length=MIN_SECRET_CHARS, max_length=MAX_SECRET_CHARS)]


class CredentialCreate(StrictInput):
    # The error's text leaves the value out too, should anything ever log a ValidationError.
    model_config = ConfigDict(hide_input_in_errors=True)

    provider: Provider
    label: Label
    kind: CredentialKind = CredentialKind.api_key
    secret: Secret


class CredentialReplace(StrictInput):
    model_config = ConfigDict(hide_input_in_errors=True)

    secret: Secret


class CredentialRead(Output):
    """What anyone ever sees of a credential: never the value."""

    id: uuid.UUID
    provider: Provider
    label: str
    kind: CredentialKind
    last4: str | None
    fingerprint: str
    created_at: datetime
    updated_at: datetime


class CredentialList(Output):
    items: list[CredentialRead]
