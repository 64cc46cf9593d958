"""Input PostgreSQL cannot store, or a number outside its column, is a 422 naming the field.

Before: a NUL character (U+0000) in any JSON string, or an audit `cursor` of 2^63 or more, got
past validation and PostgreSQL refused it with a 500. Now it is refused at validation, the problem
names the field and never echoes the value, and nothing is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import World, new_email

NUL = "before\u0000after"


def assert_refused(r: Any, loc: list[str]) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert loc in [e["loc"] for e in errors], errors
    assert "before" not in r.text and "\\u0000" not in r.text


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/workspaces/{ws}/documents", {"title": NUL, "body": "text"}, "title"),
    ("/workspaces/{ws}/documents", {"title": "t", "body": NUL}, "body"),
    ("/workspaces", {"name": NUL, "slug": "fine-slug"}, "name"),
    ("/workspaces/{ws}/credentials", {"provider": "openai", "label": NUL, "secret": "sk-abc"}, "label"),
    ("/workspaces/{ws}/credentials", {"provider": "openai", "label": "l", "secret": NUL}, "secret"),
])
def test_nul_in_a_json_string(world: World, path: str, body: dict[str, Any], field: str) -> None:
    url = world.base + path.format(ws=world.workspaces[0])
    before = world.admin.get(f"{world.ws(0)}/documents").json()["items"]
    assert_refused(world.admin.post(url, json=body), ["body", field])
    assert world.admin.get(f"{world.ws(0)}/documents").json()["items"] == before


def test_nul_in_an_invitation_email(world: World) -> None:
    assert_refused(world.admin.post(f"{world.base}/invitations", json={"email": f"a\u0000{new_email()}", "tenant_role": "member"}),
                   ["body", "email"])


def test_nul_in_a_nested_value_of_a_patch(world: World) -> None:
    doc = world.admin.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}).json()
    assert_refused(world.admin.patch(f"{world.ws(0)}/documents/{doc['id']}", json={"title": NUL}), ["body", "title"])
    assert world.admin.get(f"{world.ws(0)}/documents/{doc['id']}").json()["title"] == "t"


@pytest.mark.parametrize("param", ["actor", "target_id", "correlation_id"])
def test_nul_in_an_audit_filter(world: World, param: str) -> None:
    for route in ("audit-events", "audit-events/export"):
        assert_refused(world.admin.get(f"{world.base}/{route}", params={param: NUL}), ["query", param])


@pytest.mark.parametrize("cursor", [str(2**63), str(2**64), "99999999999999999999"])
def test_an_audit_cursor_beyond_bigint(world: World, cursor: str) -> None:
    r = world.admin.get(f"{world.base}/audit-events", params={"cursor": cursor})
    assert r.status_code == 422, r.text
    assert ["query", "cursor"] in [e["loc"] for e in r.json()["errors"]]


def test_the_largest_cursor_is_fine(world: World) -> None:
    r = world.admin.get(f"{world.base}/audit-events", params={"cursor": str(2**63 - 1)})
    assert r.status_code == 200, r.text
