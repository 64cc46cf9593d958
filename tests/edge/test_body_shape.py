"""A body no route could accept is refused before it is parsed (app/edge/bodies.py).

Every request model is a flat object of scalars, so a body that is not one (lists, nested objects,
more members than the model has fields plus a few) can be refused by one regular expression
instead of `json.loads`, which FastAPI runs before authentication and the rate limit.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from app.edge.bodies import SPARE_MEMBERS, flat_fields, flat_object, guarded_routes
from app.knowledge.schemas import DocumentCreate, DocumentUpdate
from app.tenancy.schemas import InvitationAccept, InvitationCreate, VendorAccessRequest
from tests.support.api import World, invitee

ACCEPT = "/api/v1/invitations/accept"


@pytest.mark.parametrize("value", [
    {}, {"token": "x" * 10}, {"a": 1, "b": -2.5e-3, "c": True, "d": False, "e": None},
    {"quote": 'a "b" \\ c \u0000 \n', "unicode": "é日本🎉", "empty": ""},
])
@pytest.mark.parametrize("dump", [
    json.dumps, lambda v: json.dumps(v, ensure_ascii=False), lambda v: json.dumps(v, indent=2),
    lambda v: " \n" + json.dumps(v, separators=(",", ":")) + "\r\n",
])
def test_every_flat_object_passes(value, dump) -> None:
    assert flat_object(5).fullmatch(dump(value).encode()) is not None


@pytest.mark.parametrize("body", [
    '{"token": ["x"]}', '{"token": {}}', '[{"token": "x"}]', '"token"', '{"token": [[], []]}',
    '{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}', '{"a" 1}', '{"a": 1,}', '{"a": "unterminated}',
])
def test_what_is_not_a_flat_object_of_at_most_n_members_fails(body: str) -> None:
    assert flat_object(5).fullmatch(body.encode()) is None


def test_no_input_makes_it_backtrack() -> None:
    # Would take hours if adjacent quantifiers could trade characters; each is possessive.
    for body in (b'{"a":1' + b" " * 1_000_000 + b"x", b'{"a":"' + b"\\\\" * 500_000 + b"x",
                 b'{"a":' + b"1" * 1_000_000 + b"x", b"{" + b'"a":1,' * 100_000):
        assert flat_object(20).fullmatch(body) is None


def test_the_request_models_are_flat() -> None:
    assert flat_fields(InvitationAccept) == 1
    assert flat_fields(DocumentCreate) == flat_fields(DocumentUpdate) == 2
    assert flat_fields(InvitationCreate) == 4
    assert flat_fields(VendorAccessRequest) == 4


@pytest.mark.parametrize("body", [
    '{"title": [' + ",".join(["[]"] * 300_000) + "]}",
    '{"title": ' + "[" * 400_000 + "]" * 400_000 + "}",
    "{" + ",".join(f'"{i:x}": 0' for i in range(SPARE_MEMBERS + 3)) + "}",
])
def test_a_structured_body_is_refused_unparsed_before_authentication(world: World, body: str) -> None:
    # No token at all: the shape is refused before the token would be looked at. (Documents: a
    # route whose own cap is the app's 1 MiB; invitation acceptance's is a few KB, see below.)
    r = world.client.post(f"{world.ws(0)}/documents", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [(e["loc"], e["type"]) for e in r.json()["errors"]] == [(["body"], "body_shape")]
    assert r.json()["errors_total"] == 1 and len(r.content) < 1_024


def test_a_flat_body_still_reaches_the_model(world: World) -> None:
    caller = invitee(world.client, world.idp)
    r = caller.post(ACCEPT, json={"token": "x" * 10})
    assert r.status_code == 404, r.text[:300]  # an unknown invitation: the body was read as sent
    r = caller.post(ACCEPT, json={"token": "x" * 201})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "token"]


# -- each route's body cap, sized to its model --------------------------------------------------


def _longest(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A value of `schema` as long as it may be: strings at maxLength of characters outside the BMP."""
    if "$ref" in schema:
        return _longest(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return max((_longest(s, defs) for s in schema["anyOf"]), key=lambda v: len(json.dumps(v)))
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v)))
    if schema.get("type") == "string":
        if schema.get("format") == "uuid":
            return f"urn:uuid:{uuid.uuid4()}"
        return "\U0001f389" * schema["maxLength"]
    return -(2**63)


def test_every_routes_longest_valid_body_fits_its_cap(world: World) -> None:
    document = world.client.app.openapi()
    defs = document["components"]["schemas"]
    routes = guarded_routes(world.client.app)
    assert routes
    for route in routes:
        template = next(t for t in document["paths"] if route.path.fullmatch(re.sub(r"\{[^}]+\}", "x", t)))
        schema = document["paths"][template][route.method.lower()]["requestBody"]["content"]["application/json"]["schema"]
        properties = defs[schema["$ref"].rsplit("/", 1)[-1]]["properties"]
        body = json.dumps({name: _longest(p, defs) for name, p in properties.items()}, indent=2).encode()
        assert route.max_bytes is not None and len(body) <= route.max_bytes, (template, len(body))


def test_a_valid_body_at_the_models_limits_reaches_the_model(world: World) -> None:
    caller = invitee(world.client, world.idp)
    body = json.dumps({"token": "\U0001f389" * 200}, indent=2)  # 2,415 bytes of escapes
    r = caller.post(ACCEPT, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 404, r.text[:300]  # read and validated: no such invitation


def _over(cap: int) -> bytes:
    return json.dumps({"name": "x" * cap}).encode()  # over the cap, far under the app's 1 MiB


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_its_routes_cap_is_413_before_parsing_and_changes_nothing(world: World, chunked: bool) -> None:
    (cap,) = [g.max_bytes for g in guarded_routes(world.client.app)
              if g.method == "POST" and g.path.fullmatch(f"{world.base}/workspaces")]
    assert cap is not None and cap < 8_192
    body = _over(cap)
    assert len(body) < world.client.app.state.settings.max_body_bytes
    before = world.admin.get(f"{world.base}/workspaces").json()
    content: Any = iter([body[:1000], body[1000:]]) if chunked else body
    r = world.admin.post(f"{world.base}/workspaces", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["max_body_bytes"] == cap
    assert world.admin.get(f"{world.base}/workspaces").json() == before


def test_the_hostile_string_of_escapes_is_refused_at_the_cap(world: World) -> None:
    # The costliest body left under the app's 1 MiB cap (bench/hostile.py): one string of escapes.
    body = b'{"token": "' + b"\\u00e9" * 170_000 + b'"}'
    r = invitee(world.client, world.idp).post(ACCEPT, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 1_024
