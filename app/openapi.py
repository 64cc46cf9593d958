"""The OpenAPI document declares the errors each route really returns, as RFC 9457 problem+json.

`install(app)` wraps `app.openapi`: after FastAPI has built the document, every operation gets the
error statuses it can answer, each with `application/problem+json` and the `Problem` schema (the
422 with `ValidationProblem`), and FastAPI's own 422 (`HTTPValidationError`, a body the app never
sends) is gone. Nothing is listed by hand per route; each status comes from what the route is:

- every route: 400 (a repeated query parameter, a bad Content-Length: the edge, before routing)
  and 500 (the bare problem of an unexpected error);
- the API router's dependencies (`get_principal`, `ratelimit.limit`): 401 with `WWW-Authenticate`,
  429 with `Retry-After` and the RateLimit-* headers, 503 (the rate-limit store or the database
  is busy or unreachable);
- a request body (a body model, or an `openapi_extra` requestBody such as the upload's): 413;
- any path, query or body parameter: 422 (validation);
- the tenant and workspace dependencies (`TenantAccess`, `WorkspaceAccess`): 404, and 403 where
  their configuration can refuse a member (customer_admin only, a role above the lowest);
- every `DomainError` the route's own code can construct (the endpoint and its dependencies,
  followed through the functions they call inside `app`): its status (403, 404, 409, 400, 413,
  415, 503...). Found by reading the code (`ast`), once, when the document is first built.

405 belongs to a path, not to an operation (an operation's own method is never refused), so it
is not declared. The schemas mirror `app.problems.problem()`: `type`, `title`, `status`, an
optional `detail`, and the extension members the app adds (`errors`, `errors_total`,
`max_body_bytes`); nothing else (`additionalProperties: false`), so a response that grows a member
fails the schema checks (tests/edge/test_schemathesis.py) until this module says so.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from app import idempotency
from app.auth.dependencies import get_principal
from app.authz.dependencies import TenantAccess, WorkspaceAccess
from app.authz.roles import WorkspaceRole
from app.edge import ratelimit
from app.errors import DomainError
from app.problems import MAX_ERRORS, PROBLEM_JSON

PROBLEM = "Problem"
VALIDATION_PROBLEM = "ValidationProblem"
VALIDATION_ITEM = "ProblemValidationError"

_REF = "#/components/schemas/"

COMPONENT_SCHEMAS: dict[str, dict[str, Any]] = {
    VALIDATION_ITEM: {
        "title": VALIDATION_ITEM,
        "type": "object",
        "description": "One refused field: where it is and why. The submitted value is never echoed.",
        "properties": {
            "loc": {"type": "array", "items": {"type": "string"}, "description": "Where: `body`/`query`/`path`, then the field."},
            "msg": {"type": "string"},
            "type": {"type": "string", "description": "A stable code, e.g. `missing`, `extra_forbidden`."},
        },
        "required": ["loc", "msg", "type"],
        "additionalProperties": False,
    },
    PROBLEM: {
        "title": PROBLEM,
        "type": "object",
        "description": "RFC 9457 problem details (`application/problem+json`). No stack trace, no internal detail.",
        "properties": {
            "type": {"type": "string", "description": "Always `about:blank`: the status says what happened."},
            "title": {"type": "string", "description": "The status's reason phrase."},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What to do about it, when there is more to say."},
            "errors": {
                "type": "array", "maxItems": MAX_ERRORS, "items": {"$ref": _REF + VALIDATION_ITEM},
                "description": "400 (a repeated query parameter) and 422: the fields refused.",
            },
            "errors_total": {"type": "integer", "minimum": 0, "description": "422: how many errors there were in all."},
            "max_body_bytes": {"type": "integer", "minimum": 0, "description": "413: the body limit of this route."},
        },
        "required": ["type", "title", "status"],
        "additionalProperties": False,
    },
    VALIDATION_PROBLEM: {
        "title": VALIDATION_PROBLEM,
        "description": f"A 422: at most {MAX_ERRORS} `errors`, and `errors_total` saying how many there were.",
        "allOf": [{"$ref": _REF + PROBLEM}],
        "properties": {"status": {"const": 422}},
        "required": ["detail", "errors", "errors_total"],
    },
}

_RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 0}}
_RATELIMIT_HEADERS = {
    name: {"description": text, "required": True, "schema": schema}
    for name, text, schema in (
        ("RateLimit-Limit", "Requests allowed per window in this route class.", {"type": "integer"}),
        ("RateLimit-Remaining", "Requests left in the window.", {"type": "integer"}),
        ("RateLimit-Reset", "Seconds until the window frees a request.", {"type": "integer"}),
        ("RateLimit-Policy", "`<limit>;w=<window seconds>`.", {"type": "string"}),
    )
}

# Why each status, as the operation's response description says it.
DESCRIPTIONS = {
    400: "Bad request: a repeated query parameter, a bad Content-Length, or a request the route refuses (named in `detail`).",
    401: "No valid bearer token.",
    403: "The caller is known here but their role does not allow this.",
    404: "Not found, or not visible to the caller: another tenant's or workspace's ids answer the same.",
    409: "The request conflicts with the current state (named in `detail`).",
    413: "The request body is larger than this route accepts.",
    415: "The body's media type is not one this route accepts.",
    422: "The request is not valid: the refused fields are listed, never their values.",
    429: "Too many requests: wait `Retry-After` seconds.",
    500: "An unexpected error; nothing about it is disclosed.",
    503: "A dependency is busy or unreachable (database, rate-limit store, credential storage, human check); try again.",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=\"palisade\"`.", "required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {**_RETRY_AFTER, "required": True}, **_RATELIMIT_HEADERS},
    503: {"Retry-After": {**_RETRY_AFTER, "required": False}},
}

# Every route: the edge's 400s (before routing) and the bare 500.
EVERY_ROUTE = frozenset({400, 500})
# What a dependency means for the statuses of every route that has it.
_DEPENDENCY_STATUSES: dict[Callable[..., Any], frozenset[int]] = {
    get_principal: frozenset({401}),
    # 429 over the limit; 503 when the limit cannot be asked (or the database is busy).
    ratelimit.limit: frozenset({429, 503}),
}


def _lowest_workspace_role() -> WorkspaceRole:
    return min(WorkspaceRole, key=lambda role: role.rank)


def _access_statuses(call: Any) -> frozenset[int] | None:
    """The tenant/workspace dependencies: 404 for anyone outside; 403 only where a member can be refused."""
    if isinstance(call, TenantAccess):
        return frozenset({404, 403}) if call.customer_admin else frozenset({404})
    if isinstance(call, WorkspaceAccess):
        return frozenset({404, 403}) if call.min_role is not _lowest_workspace_role() else frozenset({404})
    return None


# --- what the code can raise -------------------------------------------------------------------


def _unwrap(obj: Any) -> Callable[..., Any] | None:
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return obj.__func__ if isinstance(obj, types.MethodType) else obj
    return None


def _ours(func: Callable[..., Any]) -> bool:
    return getattr(func, "__module__", "").split(".")[0] == "app"


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    """`name` or `module.name` (`a.b.c`) in the function's globals; None if it is anything else."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        if isinstance(owner, types.ModuleType) or inspect.isclass(owner):
            return getattr(owner, node.attr, None)
    return None


def _domain_error(obj: Any) -> type[DomainError] | None:
    return obj if inspect.isclass(obj) and issubclass(obj, DomainError) else None


def _constructed_status(call: ast.Call, cls: type[DomainError]) -> int:
    for keyword in call.keywords:
        if keyword.arg == "status" and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, int):
            return keyword.value.value
    return int(cls.status)


Raised = frozenset[tuple[type[BaseException], int]]

# Exceptions outside `DomainError` that the app's handlers answer with one fixed status.
HANDLED_ERRORS: dict[type[BaseException], int] = {
    idempotency.KeyMismatch: 422,  # an Idempotency-Key reused for another request
    idempotency.ResponsePending: 409,  # a retry while the original's response is being stored
}


def _caught(handler: ast.ExceptHandler, namespace: dict[str, Any]) -> tuple[type[BaseException], ...]:
    """What `except ...:` stops; nothing if it re-raises (a bare `raise`), everything if it names no type."""
    if any(isinstance(n, ast.Raise) and n.exc is None for n in ast.walk(handler)):
        return ()
    if handler.type is None:
        return (BaseException,)
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    types_ = [_resolve(n, namespace) for n in names]
    return tuple(t for t in types_ if inspect.isclass(t) and issubclass(t, BaseException))


class _Walker:
    """Which `DomainError`s (and `HANDLED_ERRORS`), as (class, status), code can construct and let escape, following the functions
    it calls inside `app` (by name or `module.name`; methods on objects are not followed). Errors a
    `try` catches without re-raising stay inside."""

    def __init__(self) -> None:
        self.done: dict[Callable[..., Any], Raised] = {}
        self.active: set[Callable[..., Any]] = set()

    def function(self, func: Callable[..., Any]) -> Raised:
        if func in self.done:
            return self.done[func]
        if func in self.active:  # recursion: what it raises is being collected already
            return frozenset()
        self.active.add(func)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        except (OSError, TypeError, SyntaxError):
            tree = None
        namespace = {**func.__globals__, **_closure(func)}
        found = frozenset(self.node(tree, namespace, ())) if tree is not None else frozenset()
        self.active.discard(func)
        self.done[func] = found
        return found

    def node(self, node: ast.AST, namespace: dict[str, Any], caught: tuple[type[BaseException], ...]) -> set[tuple[type[BaseException], int]]:
        found: set[tuple[type[BaseException], int]] = set()
        if isinstance(node, ast.Try):
            inner = caught + tuple(c for h in node.handlers for c in _caught(h, namespace))
            for child in node.body:
                found |= self.node(child, namespace, inner)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                found |= self.node(child, namespace, caught)
            return found
        if isinstance(node, ast.Call):
            target = _resolve(node.func, namespace)
            cls = _domain_error(target)
            if cls is not None:
                found.add((cls, _constructed_status(node, cls)))
            elif isinstance(target, type) and target in HANDLED_ERRORS:
                found.add((target, HANDLED_ERRORS[target]))
            else:
                callee = _unwrap(target) if target is not None else None
                if callee is not None and _ours(callee):
                    found |= set(self.function(callee))
        for child in ast.iter_child_nodes(node):
            found |= self.node(child, namespace, caught)
        return {(cls, status) for cls, status in found if not issubclass(cls, caught)}


_WALKER = _Walker()


def raised_statuses(func: Callable[..., Any]) -> frozenset[int]:
    """The statuses of the `DomainError`s `func` can let escape (see `_Walker`)."""
    return frozenset(status for _, status in _WALKER.function(func))


def _closure(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return dict(inspect.getclosurevars(func).nonlocals)
    except (TypeError, ValueError):
        return {}


# --- per route ---------------------------------------------------------------------------------


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependencies(sub)


def _has_body(route: RouteContext) -> bool:
    return route.body_field is not None or "requestBody" in (route.openapi_extra or {})


def _has_parameters(route: RouteContext) -> bool:
    return any(d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params
               for d in (route.dependant, *_dependencies(route.dependant)))


def error_statuses(route: RouteContext) -> frozenset[int]:
    """Every error status `route` can answer (see the module's docstring for where each comes from)."""
    statuses = set(EVERY_ROUTE)
    if _has_body(route):
        statuses.add(413)
    if _has_parameters(route):
        statuses.add(422)
    calls: list[Any] = [route.endpoint]
    for sub in _dependencies(route.dependant):
        if sub.call is None:
            continue
        known = _DEPENDENCY_STATUSES.get(sub.call)
        access = _access_statuses(sub.call)
        if known is not None:
            statuses |= known
        elif access is not None:
            statuses |= access
        else:
            calls.append(sub.call)
    for call in calls:
        func = _unwrap(call)
        if func is not None and _ours(func):
            statuses |= raised_statuses(func)
    if statuses & {401, 429}:
        statuses.add(503)  # the rate-limit store and the database: busy is a 503 (app.problems)
    return frozenset(statuses)


def _response(status: int) -> dict[str, Any]:
    if status == 422:
        schema: dict[str, Any] = {"$ref": _REF + VALIDATION_PROBLEM}
    else:
        schema = {"allOf": [{"$ref": _REF + PROBLEM}], "properties": {"status": {"const": status}}}
    response: dict[str, Any] = {
        "description": DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
        "content": {PROBLEM_JSON: {"schema": schema}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def declare_errors(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """Put each route's error responses into `document` (FastAPI's), in place; returns it."""
    paths = document.get("paths", {})
    for route in iter_route_contexts(app.routes):  # included routers too, with their prefixes and dependencies
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        operations = paths.get(route.path_format, {})
        statuses = error_statuses(route)
        for method in route.methods:
            operation = operations.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's HTTPValidationError: not what the app sends
            for status in sorted(statuses):
                responses[str(status)] = _response(status)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(COMPONENT_SCHEMAS)
    return document


def parameters_without_null(document: dict[str, Any]) -> dict[str, Any]:
    """A parameter is absent or a string on the wire, never null: FastAPI writes `X | None` as
    `anyOf: [X, {type: null}]`, which generators send as the text "None". Keep `X`; `required:
    false` already says it may be left out. In place; returns `document`."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
                if "anyOf" in schema and len(branches) == 1 and len(branches) < len(schema["anyOf"]):
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    parameter["schema"] = {**branches[0], **rest}
    return document


def install(app: FastAPI) -> None:
    """Serve the document with the declared errors and non-null parameters (built once, on first use, like FastAPI's)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = parameters_without_null(declare_errors(app, build()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
