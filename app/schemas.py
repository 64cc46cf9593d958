"""Shared schema building blocks: strict models and bounded field types."""

from __future__ import annotations

import functools
import itertools
import typing
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ValidationError

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)]
# Surrounding whitespace is dropped, then it must look like an address. The pattern is also the
# OpenAPI document's (JSON Schema, ECMA-262 regex), whose `\s` differs from Python's: both sets
# are spelled out (Python's adds U+001C-U+001F and U+0085, ECMA's U+FEFF), so both refuse the same.
_NOT_AT_OR_SPACE = r"[^@\s\x1c-\x1f\x85\ufeff]"
Email = Annotated[str, StringConstraints(strip_whitespace=True, pattern=rf"^{_NOT_AT_OR_SPACE}{{1,64}}@{_NOT_AT_OR_SPACE}{{1,255}}$",
                                         max_length=320)]


# How many unknown fields a 422 names (each name cut to 64 characters); the rest are not looked at.
UNKNOWN_FIELDS_NAMED = 3
# The largest value of a PostgreSQL bigint: integer inputs that reach one are bounded by it.
BIGINT_MAX = 2**63 - 1


def _storable(value: Any) -> bool:
    """False if a string anywhere in `value` holds U+0000, which PostgreSQL text and jsonb cannot store."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_storable(v) for v in value)
    return True


def _numeric(value: int | float | str) -> bool:
    if not isinstance(value, str):
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


@functools.cache
def _date_time_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, field in model.model_fields.items()
                     if field.annotation is datetime or datetime in typing.get_args(field.annotation))


class StrictInput(BaseModel):
    """Request bodies and query models: unknown fields are an error, not silently dropped, and no
    string may hold a NUL character (a 422 naming the field, instead of PostgreSQL's refusal)."""

    model_config = ConfigDict(extra="forbid", str_max_length=100_000)

    @model_validator(mode="wrap")
    @classmethod
    def _unknown_fields_first(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        # One error for all unknown fields, before any field is validated: a body of 90k invented
        # keys would otherwise cost one validation error (and one line of the 422) per key.
        if isinstance(data, dict):
            known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
            unknown = [key for key in itertools.islice((k for k in data if k not in known), UNKNOWN_FIELDS_NAMED)]
            if unknown:
                raise ValidationError.from_exception_data(cls.__name__, [
                    {"type": "extra_forbidden", "loc": (str(key)[:64],), "input": None} for key in unknown
                ])
        return handler(data)

    @field_validator("*", mode="before")
    @classmethod
    def _date_times_as_text(cls, value: Any, info: ValidationInfo) -> Any:
        # A date-time is RFC 3339 text, as the schema says; pydantic alone would also take a number
        # (or a numeric query string like `until=0.5`) as seconds since 1970.
        if isinstance(value, (int, float, str)) and info.field_name in _date_time_fields(cls) and _numeric(value):
            raise ValueError("must be an RFC 3339 date-time, not a number")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if not _storable(value):
            raise ValueError("must not contain the NUL character (U+0000)")
        return value


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)
