"""Idempotency-Key on every creating POST (app/idempotency.py): the real app, real PostgreSQL, real tokens.

A client whose create committed but whose response was lost retries with the same key: it gets the
original response back and nothing is created twice (issue 15, finding 10: it was duplicated).
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, pool, text

from app.idempotency import HEADER, REPLAYED
from app.main import create_app
from tests.support.api import Caller, World, make_world, new_email, person, settings_for
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP

PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def api(database: TestDatabase, idp: TestIdP, kek_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(database, idp, kek_dir=kek_dir)), raise_server_exceptions=False,
                    client=("203.0.113.9", 50000)) as c:
        yield c


@pytest.fixture(scope="module")
def staff(api: TestClient, idp: TestIdP) -> Caller:
    return person(api, idp, roles=["internal_admin"])


@pytest.fixture
def place(api: TestClient, idp: TestIdP, staff: Caller) -> World:
    return make_world(api, idp, staff)


@pytest.fixture(scope="module")
def sql(database: TestDatabase) -> Iterator[Callable[..., Any]]:
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)

    def run(statement: str, **params: Any) -> Any:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.scalar() if result.returns_rows else None

    yield run
    engine.dispose()


def key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Create:
    """One creating route: how to call it twice with different bodies, and what it creates."""

    name: str
    send: Callable[[World, Caller, Any, dict[str, str]], httpx.Response]
    caller: Callable[[World, Caller], Caller]  # (world, vendor staff) -> who calls
    bodies: Callable[[World], tuple[Any, Any]]
    count: str  # SQL counting what the route creates in :tenant_id


def _post_json(path: Callable[[World], str]) -> Callable[[World, Caller, Any, dict[str, str]], httpx.Response]:
    return lambda w, c, body, headers: c.post(path(w), json=body, headers=headers)


def _doc(world: World) -> str:
    r = world.admin.post(f"{world.ws(0)}/documents", json={"title": "source", "body": "text"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _copier(world: World, _: Caller) -> Caller:
    manager = world.join(workspace=0, role="multi_account_manager")
    r = world.admin.put(f"{world.ws(1)}/members/{world.user_ids[manager.subject]}", json={"role": "multi_account_manager"})
    assert r.status_code == 200, r.text
    return manager


def _upload(world: World, caller: Caller, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return caller.post(f"{world.ws(0)}/files", params={"purpose": "knowledge"}, headers=headers,
                       files={"file": ("notes.txt", body, "text/plain")})


CREATES = [
    Create("tenant", _post_json(lambda w: "/api/v1/tenants"), lambda w, staff: staff,
           lambda w: tuple({"name": "Acme", "slug": f"t-{secrets.token_hex(5)}", "admin_email": new_email()} for _ in "ab"),
           "select count(*) from tenants where slug like 't-%' and created_at > now() - interval '1 hour'"),
    Create("invitation", _post_json(lambda w: f"{w.base}/invitations"), lambda w, staff: w.admin,
           lambda w: ({"email": new_email(), "tenant_role": "member"}, {"email": new_email(), "tenant_role": "member"}),
           "select count(*) from invitations where tenant_id = :tenant_id"),
    Create("vendor access request", _post_json(lambda w: f"{w.base}/vendor-access-requests"), lambda w, staff: staff,
           lambda w: ({"reason": "ticket 1", "scope": "metadata", "hours": 1}, {"reason": "ticket 2", "scope": "audit", "hours": 2}),
           "select count(*) from vendor_access_grants where tenant_id = :tenant_id"),
    Create("workspace", _post_json(lambda w: f"{w.base}/workspaces"), lambda w, staff: w.admin,
           lambda w: ({"name": "Brand C", "slug": "brand-c"}, {"name": "Brand D", "slug": "brand-d"}),
           "select count(*) from workspaces where tenant_id = :tenant_id"),
    Create("document", _post_json(lambda w: f"{w.ws(0)}/documents"), lambda w, staff: w.admin,
           lambda w: ({"title": "Plan", "body": "Q3"}, {"title": "Plan", "body": "Q4"}),
           "select count(*) from documents where tenant_id = :tenant_id"),
    Create("document copy", lambda w, c, body, h: c.post(f"{w.ws(0)}/documents/{body[0]}/copy",
                                                         json={"target_workspace_id": body[1]}, headers=h),
           _copier, lambda w: ((_doc(w), str(w.workspaces[1])), (_doc(w), str(w.workspaces[1]))),
           "select count(*) from documents where tenant_id = :tenant_id"),
    Create("file", _upload, lambda w, staff: w.admin, lambda w: (b"first notes\n", b"other notes\n"),
           "select count(*) from uploaded_files where tenant_id = :tenant_id"),
    Create("credential", _post_json(lambda w: f"{w.ws(0)}/credentials"), lambda w, staff: w.admin,
           lambda w: ({"provider": "openai", "label": "main", "secret": "sk-" + "a" * 40},
                      {"provider": "openai", "label": "spare", "secret": "sk-" + "b" * 40}),
           "select count(*) from provider_credentials where tenant_id = :tenant_id"),
]


def test_every_creating_post_documents_an_idempotency_key(api: TestClient) -> None:
    """Every operation answering 201 offers the header in the OpenAPI document, and is in the table below."""
    schema = api.get("/api/v1/openapi.json").json()
    creating = {(method, path) for path, operations in schema["paths"].items() for method, op in operations.items()
                if "201" in op.get("responses", {})}
    offering = {(method, path) for path, operations in schema["paths"].items() for method, op in operations.items()
                if any(p.get("in") == "header" and p.get("name") == HEADER for p in op.get("parameters", []))}
    assert creating and creating <= offering, sorted(creating - offering)
    assert len(creating) == len(CREATES)


@pytest.mark.parametrize("case", CREATES, ids=lambda c: c.name)
def test_a_retry_returns_the_original_response_and_creates_nothing(case: Create, place: World, staff: Caller, sql) -> None:
    caller = case.caller(place, staff)
    first_body, other_body = case.bodies(place)
    count = lambda: sql(case.count, tenant_id=place.tenant_id)  # noqa: E731
    before, k = count(), key()
    first = case.send(place, caller, first_body, {HEADER: k})
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    retry = case.send(place, caller, first_body, {HEADER: k})
    assert retry.status_code == 201, retry.text
    assert retry.content == first.content
    assert retry.headers[REPLAYED] == "true"
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert count() == before + 1
    # The same key for another request is refused, and creates nothing either.
    other = case.send(place, caller, other_body, {HEADER: k})
    assert other.status_code == 422, other.text
    assert other.headers["content-type"].startswith(PROBLEM_JSON)
    assert HEADER in other.json()["detail"]
    assert other.json()["errors"] == [{"loc": ["header", HEADER], "msg": "used for a different request",
                                       "type": "idempotency_key_reused"}]
    assert count() == before + 1
    # Without a key (or with a new one) the same request runs again: keys are opt-in.
    assert case.send(place, caller, other_body, {HEADER: key()}).status_code == 201
    assert count() == before + 2


def test_keys_belong_to_their_caller(place: World, sql) -> None:
    colleague = place.join(tenant_role="customer_admin")
    k, body = key(), {"name": "Brand X", "slug": "brand-x"}
    mine = place.admin.post(f"{place.base}/workspaces", json=body, headers={HEADER: k})
    assert mine.status_code == 201
    # Same key, same request, another person: theirs runs (and meets the slug already taken).
    theirs = colleague.post(f"{place.base}/workspaces", json=body, headers={HEADER: k})
    assert theirs.status_code == 409 and REPLAYED not in theirs.headers


def test_a_failed_request_leaves_no_claim(place: World) -> None:
    k = key()
    taken = place.admin.post(f"{place.base}/workspaces", json={"name": "A again", "slug": "brand-a"}, headers={HEADER: k})
    assert taken.status_code == 409
    # The refusal rolled the claim back: the key is free for the corrected request.
    fixed = place.admin.post(f"{place.base}/workspaces", json={"name": "A two", "slug": "brand-a2"}, headers={HEADER: k})
    assert fixed.status_code == 201, fixed.text
    assert REPLAYED not in fixed.headers


@pytest.mark.parametrize("bad", ["short", "x" * 256, "has space in it 123", "ünïcödé-key-1234567"])
def test_a_malformed_key_is_refused_and_creates_nothing(place: World, sql, bad: str) -> None:
    before = sql("select count(*) from workspaces where tenant_id = :t", t=place.tenant_id)
    r = place.admin.post(f"{place.base}/workspaces", json={"name": "Bad", "slug": "bad-key"},
                         headers={HEADER: bad.encode()})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert sql("select count(*) from workspaces where tenant_id = :t", t=place.tenant_id) == before


def test_what_is_stored_reveals_neither_the_key_nor_the_response(place: World, sql) -> None:
    k = key()
    r = place.admin.post(f"{place.base}/invitations", json={"email": new_email(), "tenant_role": "member"}, headers={HEADER: k})
    assert r.status_code == 201
    token = r.json()["token"].encode()
    stored = sql("select convert_to(key_digest || fingerprint, 'UTF8') || response from idempotency_keys"
                 " where tenant_id = :t", t=place.tenant_id)
    assert stored and token not in stored and k.encode() not in stored and b"token" not in stored


def test_an_expired_key_can_be_used_again(place: World, sql) -> None:
    k = key()
    assert place.admin.post(f"{place.ws(0)}/documents", json={"title": "a", "body": "1"}, headers={HEADER: k}).status_code == 201
    sql("update idempotency_keys set created_at = now() - interval '2 days', expires_at = now() - interval '1 day'"
        " where tenant_id = :t", t=place.tenant_id)
    again = place.admin.post(f"{place.ws(0)}/documents", json={"title": "b", "body": "2"}, headers={HEADER: k})
    assert again.status_code == 201 and REPLAYED not in again.headers


def test_a_retry_before_the_response_is_stored_is_told_to_wait(place: World, sql) -> None:
    k = key()
    first = place.admin.post(f"{place.ws(0)}/documents", json={"title": "a", "body": "1"}, headers={HEADER: k})
    assert first.status_code == 201
    # As if the process stopped between the commit and storing the response.
    sql("update idempotency_keys set response = null where tenant_id = :t", t=place.tenant_id)
    before = sql("select count(*) from documents where tenant_id = :t", t=place.tenant_id)
    retry = place.admin.post(f"{place.ws(0)}/documents", json={"title": "a", "body": "1"}, headers={HEADER: k})
    assert retry.status_code == 409 and retry.headers["Retry-After"] == "1"
    assert retry.headers["content-type"].startswith(PROBLEM_JSON)
    assert sql("select count(*) from documents where tenant_id = :t", t=place.tenant_id) == before


def test_concurrent_duplicates_create_one(place: World, sql) -> None:
    k, results = key(), []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        results.append(place.admin.post(f"{place.ws(0)}/documents", json={"title": "race", "body": "x"}, headers={HEADER: k}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sql("select count(*) from documents where tenant_id = :t and title = 'race'", t=place.tenant_id) == 1
    created = [r for r in results if r.status_code == 201]
    assert created and len({r.content for r in created}) == 1  # the original, or its replay
    assert all(r.status_code in (201, 409) for r in results), [r.status_code for r in results]
