"""Bodies no route could accept are refused before they are parsed (issue 15, finding 1).

FastAPI parses a JSON body (`json.loads`) before any dependency runs — authentication, the rate
limit, membership — so whatever a body costs to parse, anyone can make the one worker pay it, and a
refusal (401, 403, 429) comes only after. Under the 1 MiB cap, a body of nothing but structure
costs 60–80 ms of CPU to parse (`[[],[],…]`, 90,000 invented keys; `bench/hostile.py`), and
while it is parsed every other tenant's request on that worker waits.

Every request model of the API is a flat object: each field a string, number, boolean or null
(no lists, no nested objects). So for each route whose body model is flat, `BodyShapeMiddleware`
first reads the body (the body cap, just outside, bounds it) and checks it with one regular
expression: a JSON object of at most `fields + SPARE_MEMBERS` members whose values are scalars.
What fails is a 422 problem (`loc: ["body"]`, type `body_shape`) at once; the expression stops at
the first nested `[` or `{`, or after the members it allows, so such a refusal costs microseconds
of matching. What passes goes on, unchanged, to FastAPI's parse and the model's validation (the
expression is a superset of flat JSON objects: `json.loads` still decides whether it is JSON; a few
unknown members are still named by the model). Strings are scanned at the speed of a character
class; every quantifier is possessive, so no input makes the match backtrack.

Each such route also gets a body cap sized to its model (`model_body_bytes`), far under the app's
`max_body_bytes` where the model is small (invitation acceptance: about 3.5 KB instead of 1 MiB):
the longest body a valid request can be, each string at its `maxLength` with every character in
JSON's longest escape (12 bytes: a surrogate pair, `\ud83d\ude00`), each member name escaped too,
numbers 32 bytes, plus `SLACK_BYTES` for whitespace and a few stray members. A `Content-Length`
over it is a 413 problem before anything is read; a body that grows past it while arriving is
refused as soon as it does, unparsed. A model with a string of no `maxLength` gets no cap of its
own (the app's `max_body_bytes` holds). So the cost of the worst body a route reads is bounded by
its own model, not by the app's largest.

Which routes: those whose JSON body is one flat object in the app's OpenAPI document, read at the
first request (so when the app is built, not when a module is imported). Routes whose body is not
one flat model (forms, uploads) are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import problems
from app.edge.http import _header_values, _route_path, _template_regex, _too_large

# Members allowed beyond the model's own fields: a client's few stray fields still reach the model,
# which names them (`app.schemas.StrictInput`).
SPARE_MEMBERS = 16
_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean", "null"})
# Sizing a model's longest valid body: JSON's longest spelling of one character (a surrogate
# pair's two escapes), of any number the models take, and what whitespace and strays may add.
ESCAPED_CHAR_BYTES = 12
NUMBER_BYTES = 32
SLACK_BYTES = 1024
# The longest spelling of a UUID pydantic reads (`urn:uuid:` + 36), for `format: uuid` strings.
_UUID_CHARS = 45

_WS = rb"[ \t\n\r]*+"
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
# A superset of JSON's scalars as `json.loads` reads them (it decides the details).
_SCALAR = rb"(?:" + _STRING + rb"|[-+0-9.eE]++|true|false|null|NaN|-?Infinity)"
_MEMBER = _WS + _STRING + _WS + rb":" + _WS + _SCALAR + _WS


def flat_object(members: int) -> re.Pattern[bytes]:
    """A JSON object of at most `members` members, each value a scalar (for `fullmatch`)."""
    return re.compile(_WS + rb"\{(?:" + _MEMBER + rb"(?:," + _MEMBER + rb"){0,%d}+)?+" % (members - 1) + _WS + rb"\}" + _WS)


def _scalar(schema: dict[str, Any], defs: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return _scalar(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return all(_scalar(s, defs) for s in schema[key])
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return all(t in _SCALAR_TYPES for t in types)
    return "enum" in schema or "const" in schema


def _value_bytes(schema: dict[str, Any], defs: dict[str, Any]) -> int | None:
    """The longest JSON spelling of a valid scalar value of `schema`; None when unbounded."""
    if "$ref" in schema:
        return _value_bytes(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            sizes = [_value_bytes(s, defs) for s in schema[key]]
            return None if None in sizes else max(size for size in sizes if size is not None)
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return max(2 + ESCAPED_CHAR_BYTES * len(str(v)) if isinstance(v, str) else NUMBER_BYTES for v in values)
    types = schema.get("type")
    out = 0
    for kind in types if isinstance(types, list) else [types]:
        if kind == "string":
            chars = schema.get("maxLength", _UUID_CHARS if schema.get("format") == "uuid" else None)
            if chars is None:
                return None
            out = max(out, 2 + ESCAPED_CHAR_BYTES * int(chars))
        elif kind in ("integer", "number", "boolean", "null"):
            out = max(out, NUMBER_BYTES)
        else:
            return None
    return out


def model_body_bytes(properties: dict[str, Any], defs: dict[str, Any]) -> int | None:
    """The body cap of a flat model with these JSON-schema `properties` (see the module's docstring)."""
    total = 2 + SLACK_BYTES  # the braces
    for name, schema in properties.items():
        value = _value_bytes(schema, defs)
        if value is None:
            return None
        total += 2 + ESCAPED_CHAR_BYTES * len(name) + 2 + value  # "name": value,
    return total


def flat_fields(model: Any) -> int | None:
    """How many fields `model` has when it is a model whose every field is a scalar; else None."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    properties = schema.get("properties", {})
    return len(properties) if all(_scalar(p, defs) for p in properties.values()) else None


@dataclass(frozen=True)
class _Guarded:
    method: str
    path: re.Pattern[str]
    members: int
    pattern: re.Pattern[bytes]
    max_bytes: int | None  # the model's own cap (`model_body_bytes`)


def guarded_routes(app: FastAPI) -> list[_Guarded]:
    """From the app's OpenAPI document (every route, its full path and its JSON body's schema): the
    operations whose JSON body is one flat model."""
    document = app.openapi()
    defs = document.get("components", {}).get("schemas", {})
    out = []
    for template, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            if set(content) != {"application/json"}:
                continue
            schema = content["application/json"].get("schema", {})
            schema = defs.get(schema["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in schema else schema
            properties = schema.get("properties", {}) if schema.get("type") == "object" else None
            if properties is not None and all(_scalar(p, defs) for p in properties.values()):
                members = len(properties) + SPARE_MEMBERS
                out.append(_Guarded(method.upper(), _template_regex(template, subtree=False), members,
                                    flat_object(members), model_body_bytes(properties, defs)))
    return out


def _refusal(members: int) -> Any:
    return problems.problem(422, detail="The request is not valid.", errors_total=1, errors=[{
        "loc": ["body"], "type": "body_shape",
        "msg": f"Expected a JSON object of at most {members} fields, each a string, number, boolean or null",
    }])


class BodyShapeMiddleware:
    """For routes with a flat body model: a body over the model's cap is a 413, one that is not a flat
    JSON object a 422, both before parsing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes: list[_Guarded] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = None
        if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            if self.routes is None:  # at the first request: every route is included by then
                self.routes = guarded_routes(scope["app"])
            path = _route_path(scope)
            guarded = next((g for g in self.routes if g.method == scope["method"] and g.path.match(path)), None)
        if guarded is None:
            await self.app(scope, receive, send)
            return
        cap = guarded.max_bytes
        lengths = _header_values(scope, b"content-length")  # one well-formed value: the edge's body cap checked it
        if cap is not None and lengths and int(lengths[0]) > cap:
            await _too_large(cap)(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()  # the edge's body cap, outside, bounds a route without a cap
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if cap is not None and received > cap:
                await _too_large(cap)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and guarded.pattern.fullmatch(body) is None:
            await _refusal(guarded.members)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def install(app: FastAPI) -> None:
    """The innermost user middleware (inside the body cap): call after the routes are included."""
    if app.middleware_stack is not None:
        raise RuntimeError("the app has started; middleware must be added before")
    app.user_middleware.append(Middleware(BodyShapeMiddleware))
