"""A hostile body costs little to refuse, and its refusal is small.

Before: a 979 KB body of 90k unknown keys got an 8.1 MB 422 listing every field, after ~0.5 s of
CPU, and any valid token could send it (`POST /invitations/accept` needs no membership). Now
unknown fields are refused in one error before any field is validated, and the problem lists at
most MAX_ERRORS errors, saying how many there were.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import problems
from app.problems import MAX_ERRORS
from tests.support.api import World, invitee


def test_ninety_thousand_unknown_keys(world: World) -> None:
    body = {"token": "x" * 10, **{f"{i:x}": 0 for i in range(90_000)}}  # ~900 KB, under the body cap
    r = invitee(world.client, world.idp).post("/api/v1/invitations/accept", json=body)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert len(r.content) < 4_096
    # Refused before it is read past the route's own cap, unparsed (app/edge/bodies.py): ~3.5 KB
    # is the longest body the model can take. Where a route's cap is larger (documents), the
    # body's shape refuses it (tests/edge/test_body_shape.py).
    assert r.status_code == 413, r.text[:300]


def test_a_few_unknown_keys_are_named(world: World) -> None:
    body = {"token": "x" * 10, **{f"{i:x}": 0 for i in range(5)}}
    r = invitee(world.client, world.idp).post("/api/v1/invitations/accept", json=body)
    assert r.status_code == 422, r.text[:300]
    errors = r.json()["errors"]
    # The first few unknown fields are named (that is what a client needs to fix its request);
    # the rest are never looked at.
    assert [e["loc"] for e in errors] == [["body", "0"], ["body", "1"], ["body", "2"]]
    assert {e["type"] for e in errors} == {"extra_forbidden"}


def test_many_errors_are_capped_and_counted() -> None:
    # No Palisade route takes a list today; the handler is the app's own, on a route that does.
    app = FastAPI()
    problems.install(app)

    @app.post("/numbers")
    def numbers(values: list[int]) -> int:
        return len(values)

    r = TestClient(app).post("/numbers", json=["not a number"] * 500)
    assert r.status_code == 422
    assert len(r.json()["errors"]) == MAX_ERRORS and r.json()["errors_total"] == 500
    assert len(r.content) < 8_192


def test_a_few_errors_are_all_listed(world: World) -> None:
    r = world.admin.post(f"{world.base}/workspaces", json={"name": "", "slug": "Not A Slug"})
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["errors"]} == {("body", "name"), ("body", "slug")}
    assert r.json()["errors_total"] == 2
