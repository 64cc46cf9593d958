"""A body no route could accept is refused before it is parsed (app/edge/bodies.py).

Every request model is a flat object of scalars, so a body that is not one (lists, nested objects,
more members than the model has fields plus a few) can be refused by one regular expression
instead of `json.loads`, which FastAPI runs before authentication and the rate limit.
"""

from __future__ import annotations

import json

import pytest

from app.edge.bodies import SPARE_MEMBERS, flat_fields, flat_object
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
    '{"token": [' + ",".join(["[]"] * 300_000) + "]}",
    '{"token": ' + "[" * 400_000 + "]" * 400_000 + "}",
    "{" + ",".join(f'"{i:x}": 0' for i in range(SPARE_MEMBERS + 2)) + "}",
])
def test_a_structured_body_is_refused_unparsed_before_authentication(world: World, body: str) -> None:
    # No token at all: the shape is refused before the token would be looked at.
    r = world.client.post(ACCEPT, content=body, headers={"Content-Type": "application/json"})
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
