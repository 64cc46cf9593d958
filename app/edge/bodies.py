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

Which routes: those whose JSON body is one flat object in the app's OpenAPI document, read at the
first request. Routes whose body is not one flat model (forms, uploads) are left alone.
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
from app.edge.http import _route_path, _template_regex

# Members allowed beyond the model's own fields: a client's few stray fields still reach the model,
# which names them (`app.schemas.StrictInput`).
SPARE_MEMBERS = 16
_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean", "null"})

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
                out.append(_Guarded(method.upper(), _template_regex(template, subtree=False), members, flat_object(members)))
    return out


def _refusal(members: int) -> Any:
    return problems.problem(422, detail="The request is not valid.", errors_total=1, errors=[{
        "loc": ["body"], "type": "body_shape",
        "msg": f"Expected a JSON object of at most {members} fields, each a string, number, boolean or null",
    }])


class BodyShapeMiddleware:
    """For routes with a flat body model: a body that is not a flat JSON object is a 422 before parsing."""

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
        chunks: list[bytes] = []
        while True:
            message = await receive()  # the body cap outside refuses a body past its limit
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
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
