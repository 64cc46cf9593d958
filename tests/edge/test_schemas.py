"""Every input the API takes is strict and bounded: checked over the whole OpenAPI document, so a
new route cannot slip in an unbounded string, an open object or an unlimited list."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.main import create_app

SAFE_FORMATS = {"uuid", "date-time", "date", "binary"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Settings(_env_file=None, database_url="postgresql://app@localhost/none")).openapi()


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def problems_in(spec: dict[str, Any], schema: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"]
        if name in seen:
            return []
        seen = seen | {name}
    schema = resolve(spec, schema)
    found: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            found += problems_in(spec, sub, f"{where}|{key}[{i}]", seen)
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and "const" not in schema and schema.get("format") not in SAFE_FORMATS:
        if "maxLength" not in schema:
            found.append(f"{where}: string without maxLength")
    if kind == "array":
        if "maxItems" not in schema:
            found.append(f"{where}: array without maxItems")
        found += problems_in(spec, schema.get("items", {}), f"{where}[]", seen)
    if kind == "object" or "properties" in schema:
        if schema.get("additionalProperties", True) is not False:
            found.append(f"{where}: object accepts unknown fields")
        for name, sub in schema.get("properties", {}).items():
            found += problems_in(spec, sub, f"{where}.{name}", seen)
    return found


def test_every_request_body_is_strict_and_bounded(spec):
    found: list[str] = []
    bodies = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                bodies += 1
                found += problems_in(spec, content["schema"], f"{method.upper()} {path} ({media})", set())
    assert bodies >= 8  # the check looked at the real routes
    assert found == []


def test_every_query_and_path_parameter_is_bounded(spec):
    found: list[str] = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                found += problems_in(spec, param["schema"], f"{method.upper()} {path} {param['in']}:{param['name']}", set())
    assert found == []


def test_the_check_catches_an_unbounded_string(spec):
    loose = {"type": "object", "properties": {"note": {"type": "string"}}}
    assert problems_in(spec, loose, "X", set()) == ["X: object accepts unknown fields", "X.note: string without maxLength"]
