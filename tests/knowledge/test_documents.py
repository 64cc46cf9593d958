"""Knowledge-base documents over HTTP: CRUD, pagination, validation, the audited copy across
workspaces, and the audit trail every material action leaves behind."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.api import Caller, World, invitee

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    assert r.json()["status"] == status
    return r.json()


def new_doc(world: World, caller: Caller, ws: int = 0, title: str = "Doc", body: str = "text", **kw: Any) -> dict[str, Any]:
    r = caller.post(f"{world.ws(ws)}/documents", json={"title": title, "body": body}, **kw)
    assert r.status_code == 201, r.text
    return r.json()


def cid() -> str:
    return f"test-{uuid.uuid4().hex}"


def with_cid(correlation_id: str) -> dict[str, Any]:
    return {"headers": {"X-Correlation-ID": correlation_id}}


@pytest.fixture(scope="module")
def superuser(database):
    """Reads rows as the database superuser: the audit trail, bypassing RLS."""
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()


def audit_rows(engine, tenant_id: uuid.UUID, correlation_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("select *, xmin::text as xmin from audit_events where tenant_id = :t and correlation_id = :c"),
            {"t": tenant_id, "c": correlation_id},
        ).mappings().all()
    return [dict(r) for r in rows]


def only_audit_row(engine, world: World, correlation: str, /, **expected: Any) -> dict[str, Any]:
    rows = audit_rows(engine, world.tenant_id, correlation)
    assert len(rows) == 1, rows
    row = rows[0]
    assert {k: row[k] for k in expected} == expected
    return row


def documents_in(world: World, ws: int) -> list[dict[str, Any]]:
    r = world.admin.get(f"{world.ws(ws)}/documents?limit=100")
    assert r.status_code == 200, r.text
    return r.json()["items"]


class TestCrudRoundTrip:
    def test_create_read_list_update_delete(self, world: World) -> None:
        base = f"{world.ws(0)}/documents"
        created = new_doc(world, world.admin, title="  Brand guide  ", body="Use the blue logo.")
        assert created["title"] == "Brand guide"  # surrounding whitespace stripped
        assert created["workspace_id"] == str(world.workspaces[0])
        assert created["author_id"] == str(world.user_ids[world.admin.subject])

        got = world.admin.get(f"{base}/{created['id']}")
        assert got.status_code == 200 and got.json() == created

        listing = world.admin.get(base).json()
        assert listing == {"items": [created], "next_cursor": None}

        patched = world.admin.patch(f"{base}/{created['id']}", json={"body": "Use the green logo."})
        assert patched.status_code == 200, patched.text
        assert (patched.json()["title"], patched.json()["body"]) == ("Brand guide", "Use the green logo.")
        assert patched.json()["updated_at"] >= created["updated_at"]
        assert world.admin.get(f"{base}/{created['id']}").json()["body"] == "Use the green logo."

        assert world.admin.delete(f"{base}/{created['id']}").status_code == 204
        assert_problem(world.admin.get(f"{base}/{created['id']}"), 404)
        assert_problem(world.admin.delete(f"{base}/{created['id']}"), 404)
        assert world.admin.get(base).json() == {"items": [], "next_cursor": None}

    def test_unknown_document_is_404(self, world: World) -> None:
        base = f"{world.ws(0)}/documents/{uuid.uuid4()}"
        assert_problem(world.admin.get(base), 404)
        assert_problem(world.admin.patch(base, json={"title": "x"}), 404)
        assert_problem(world.admin.delete(base), 404)


class TestPagination:
    def test_pages_of_three_newest_first(self, world: World) -> None:
        ids = [new_doc(world, world.admin, title=f"Doc {i}")["id"] for i in range(7)]
        pages, cursor = [], None
        while True:
            params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            r = world.admin.get(f"{world.ws(0)}/documents", params=params)
            assert r.status_code == 200, r.text
            pages.append([d["id"] for d in r.json()["items"]])
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
            assert len(pages) < 5, "pagination does not terminate"
        assert [len(p) for p in pages] == [3, 3, 1]
        seen = [i for p in pages for i in p]
        assert len(set(seen)) == 7
        assert seen == list(reversed(ids))

    def test_exact_multiple_ends_with_null_cursor(self, world: World) -> None:
        for i in range(3):
            new_doc(world, world.admin, title=f"Doc {i}")
        r = world.admin.get(f"{world.ws(0)}/documents", params={"limit": 3})
        assert len(r.json()["items"]) == 3
        assert r.json()["next_cursor"] is None


def _b64(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


TS = "2030-01-01T00:00:00+00:00"


class TestBadCursor:
    @pytest.mark.parametrize(
        "cursor",
        [
            pytest.param("garbage", id="garbage"),
            pytest.param("a", id="one-char"),
            pytest.param(base64.urlsafe_b64encode(b"\xff\xfe not json").decode().rstrip("="), id="not-json"),
            pytest.param(_b64("just a string"), id="json-string"),
            pytest.param(_b64([TS]), id="one-element"),
            pytest.param(_b64(["yesterday", str(uuid.uuid4())]), id="bad-timestamp"),
            pytest.param(_b64([TS, "not-a-uuid"]), id="bad-uuid"),
            pytest.param(_b64([TS, None]), id="null-id"),
            # uuid.UUID(5) raises AttributeError, not ValueError: these once answered 500.
            pytest.param(_b64([TS, 5]), id="numeric-id"),
            pytest.param(_b64([TS, []]), id="list-id"),
            pytest.param(_b64([TS, {}]), id="object-id"),
            pytest.param(_b64([5, str(uuid.uuid4())]), id="numeric-timestamp"),
        ],
    )
    def test_400_problem(self, world: World, cursor: str) -> None:
        new_doc(world, world.admin)
        r = world.admin.get(f"{world.ws(0)}/documents", params={"cursor": cursor})
        body = assert_problem(r, 400)
        assert body["detail"] == "The cursor is not valid."


class TestQueryValidation:
    @pytest.mark.parametrize("limit", [0, 101, -1])
    def test_limit_out_of_range_is_422(self, world: World, limit: int) -> None:
        body = assert_problem(world.admin.get(f"{world.ws(0)}/documents", params={"limit": limit}), 422)
        assert ["query", "limit"] in [e["loc"] for e in body["errors"]]

    @pytest.mark.parametrize("limit", [1, 100])
    def test_limit_bounds_accepted(self, world: World, limit: int) -> None:
        assert world.admin.get(f"{world.ws(0)}/documents", params={"limit": limit}).status_code == 200


class TestBodyValidation:
    SECRET = "SENTINEL-do-not-echo-7f3a9c"

    @pytest.mark.parametrize("method", ["POST", "PATCH"])
    def test_unknown_field_is_422_without_echo(self, world: World, method: str) -> None:
        doc = new_doc(world, world.admin, title="Before")
        url = f"{world.ws(0)}/documents" + (f"/{doc['id']}" if method == "PATCH" else "")
        r = world.admin.request(method, url, json={"title": "After", "body": "b", "author_id": self.SECRET})
        body = assert_problem(r, 422)
        assert {"loc": ["body", "author_id"], "type": "extra_forbidden"} in [
            {"loc": e["loc"], "type": e["type"]} for e in body["errors"]
        ]
        assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
        assert self.SECRET not in r.text
        assert [d["title"] for d in documents_in(world, 0)] == ["Before"]

    def test_title_too_long_is_422(self, world: World) -> None:
        title = "T" * 300 + self.SECRET
        r = world.admin.post(f"{world.ws(0)}/documents", json={"title": title, "body": "b"})
        body = assert_problem(r, 422)
        assert {"loc": ["body", "title"], "type": "string_too_long"} in [
            {"loc": e["loc"], "type": e["type"]} for e in body["errors"]
        ]
        assert self.SECRET not in r.text
        assert documents_in(world, 0) == []

    def test_title_of_300_is_accepted(self, world: World) -> None:
        assert new_doc(world, world.admin, title="T" * 300)["title"] == "T" * 300
        doc = new_doc(world, world.admin)
        r = world.admin.patch(f"{world.ws(0)}/documents/{doc['id']}", json={"title": "T" * 301})
        assert_problem(r, 422)

    @pytest.mark.parametrize("title", ["", "   "])
    def test_blank_title_is_422(self, world: World, title: str) -> None:
        assert_problem(world.admin.post(f"{world.ws(0)}/documents", json={"title": title, "body": "b"}), 422)


class TestCopyAcrossWorkspaces:
    @pytest.fixture
    def source(self, world: World) -> dict[str, Any]:
        return new_doc(world, world.admin, ws=0, title="Campaign plan", body="Q3 launch")

    def joined(self, world: World, ws0: str | None, ws1: str | None) -> Caller:
        """Someone with role ws0 in workspace 0 and ws1 in workspace 1 (None: not a member)."""
        if ws0 is not None:
            user = world.join(workspace=0, role=ws0)
        else:
            user = world.join(workspace=1, role=ws1)
            return user
        if ws1 is not None:
            r = world.admin.put(f"{world.ws(1)}/members/{world.user_ids[user.subject]}", json={"role": ws1})
            assert r.status_code == 200, r.text
        return user

    def copy(self, world: World, caller: Caller, doc_id: str, target: uuid.UUID, correlation_id: str) -> httpx.Response:
        return caller.post(f"{world.ws(0)}/documents/{doc_id}/copy", json={"target_workspace_id": str(target)},
                           **with_cid(correlation_id))

    def test_manager_on_both_sides_copies_and_it_is_audited(self, world: World, source, superuser) -> None:
        mam = self.joined(world, "multi_account_manager", "multi_account_manager")
        c = cid()
        r = self.copy(world, mam, source["id"], world.workspaces[1], c)
        assert r.status_code == 201, r.text
        copy = r.json()
        assert copy["id"] != source["id"]
        assert copy["workspace_id"] == str(world.workspaces[1])
        assert (copy["title"], copy["body"]) == ("Campaign plan", "Q3 launch")
        assert copy["author_id"] == str(world.user_ids[mam.subject])
        assert mam.get(f"{world.ws(1)}/documents/{copy['id']}").json()["title"] == "Campaign plan"
        assert [d["id"] for d in documents_in(world, 0)] == [source["id"]]
        assert [d["id"] for d in documents_in(world, 1)] == [copy["id"]]

        row = only_audit_row(
            superuser, world, c, category="workspace_crossing", action="document.copy", actor_subject=mam.subject,
            actor_role="multi_account_manager", target_id=copy["id"],
        )
        assert row["details"]["from_workspace_id"] == str(world.workspaces[0])
        assert row["details"]["to_workspace_id"] == str(world.workspaces[1])
        assert row["details"]["source_document_id"] == source["id"]
        # Same transaction as the copy itself: both rows carry the same inserting transaction id.
        with superuser.connect() as conn:
            doc_xmin = conn.execute(text("select xmin::text from documents where tenant_id = :t and id = :i"),
                                    {"t": world.tenant_id, "i": copy["id"]}).scalar_one()
        assert row["xmin"] == doc_xmin

    @pytest.mark.parametrize(
        ("ws0", "ws1", "status"),
        [
            pytest.param("member", "multi_account_manager", 403, id="member-on-source"),
            pytest.param("viewer", "owner", 403, id="viewer-on-source"),
            pytest.param("multi_account_manager", "member", 403, id="member-on-target"),
            pytest.param("owner", "viewer", 403, id="viewer-on-target"),
            pytest.param("multi_account_manager", None, 404, id="not-in-target"),
        ],
    )
    def test_refused_without_manager_on_both_sides(self, world: World, source, superuser, ws0, ws1, status) -> None:
        caller = self.joined(world, ws0, ws1)
        c = cid()
        assert_problem(self.copy(world, caller, source["id"], world.workspaces[1], c), status)
        assert documents_in(world, 1) == []
        # Nothing crossed; a refusal (403) is itself on the record, the not-found (404) is not.
        rows = audit_rows(superuser, world.tenant_id, c)
        assert [(r["category"], r["outcome"]) for r in rows] == ([("access_denied", "denied")] if status == 403 else [])

    def test_not_in_target_same_as_random_workspace(self, world: World, source) -> None:
        caller = self.joined(world, "multi_account_manager", None)
        unknown = self.copy(world, caller, source["id"], uuid.uuid4(), cid())
        not_member = self.copy(world, caller, source["id"], world.workspaces[1], cid())
        assert_problem(unknown, 404)
        assert unknown.content == not_member.content

    def test_copy_into_same_workspace_is_404(self, world: World, source) -> None:
        assert_problem(self.copy(world, world.admin, source["id"], world.workspaces[0], cid()), 404)
        assert len(documents_in(world, 0)) == 1


class TestMaterialActionsAreAudited:
    """Each leaves exactly one audit row carrying the actor and the caller's X-Correlation-ID."""

    def test_workspace_create(self, world: World, superuser) -> None:
        c = cid()
        r = world.admin.post(f"{world.base}/workspaces", json={"name": "Brand C", "slug": "brand-c"}, **with_cid(c))
        assert r.status_code == 201, r.text
        assert r.headers["X-Correlation-ID"] == c
        only_audit_row(superuser, world, c, action="workspace.create", category="configuration_change",
                       actor_subject=world.admin.subject, actor_role="customer_admin", target_id=r.json()["id"],
                       correlation_id=c)

    def test_document_create(self, world: World, superuser) -> None:
        member = world.join(workspace=0, role="member")
        c = cid()
        doc = new_doc(world, member, **with_cid(c))
        only_audit_row(superuser, world, c, action="document.create", category="content_change", actor_subject=member.subject,
                       actor_role="member", target_id=doc["id"], workspace_id=world.workspaces[0], correlation_id=c)

    def test_document_delete(self, world: World, superuser) -> None:
        member = world.join(workspace=0, role="member")
        doc = new_doc(world, member)
        c = cid()
        assert member.delete(f"{world.ws(0)}/documents/{doc['id']}", **with_cid(c)).status_code == 204
        only_audit_row(superuser, world, c, action="document.delete", category="data_deletion", actor_subject=member.subject,
                       actor_role="member", target_id=doc["id"], correlation_id=c)

    def test_tenant_role_change(self, world: World, superuser) -> None:
        user = world.join(workspace=0, role="viewer")
        uid = world.user_ids[user.subject]
        c = cid()
        assert world.admin.patch(f"{world.base}/members/{uid}", json={"role": "customer_admin"}, **with_cid(c)).status_code == 200
        row = only_audit_row(superuser, world, c, action="tenant_member.role_change", category="role_change",
                             actor_subject=world.admin.subject, actor_role="customer_admin", target_id=str(uid),
                             correlation_id=c)
        assert row["details"] == {"before": "member", "after": "customer_admin"}

    def test_workspace_role_change(self, world: World, superuser) -> None:
        ws_admin = world.join(workspace=0, role="admin")
        user = world.join(workspace=0, role="viewer")
        uid = world.user_ids[user.subject]
        c = cid()
        assert ws_admin.put(f"{world.ws(0)}/members/{uid}", json={"role": "member"}, **with_cid(c)).status_code == 200
        row = only_audit_row(superuser, world, c, action="workspace_member.set_role", category="role_change",
                             actor_subject=ws_admin.subject, actor_role="admin", target_id=str(uid), correlation_id=c)
        assert row["details"] == {"before": "viewer", "after": "member"}

    def test_tenant_membership_removal(self, world: World, superuser) -> None:
        user = world.join(workspace=0, role="member")
        uid = world.user_ids[user.subject]
        c = cid()
        assert world.admin.delete(f"{world.base}/members/{uid}", **with_cid(c)).status_code == 204
        only_audit_row(superuser, world, c, action="tenant_member.remove", category="membership_removal",
                       actor_subject=world.admin.subject, actor_role="customer_admin", target_id=str(uid), correlation_id=c)

    def test_workspace_membership_removal(self, world: World, superuser) -> None:
        ws_admin = world.join(workspace=0, role="admin")
        user = world.join(workspace=0, role="member")
        uid = world.user_ids[user.subject]
        c = cid()
        assert ws_admin.delete(f"{world.ws(0)}/members/{uid}", **with_cid(c)).status_code == 204
        only_audit_row(superuser, world, c, action="workspace_member.remove", category="membership_removal",
                       actor_subject=ws_admin.subject, actor_role="admin", target_id=str(uid), correlation_id=c)

    def test_invitation_accept(self, world: World, superuser) -> None:
        newcomer = invitee(world.client, world.idp)
        token = world.admin.post(f"{world.base}/invitations", json={
            "email": newcomer.email, "workspace_id": str(world.workspaces[0]), "workspace_role": "member"}).json()["token"]
        c = cid()
        r = newcomer.post(f"{API}/invitations/accept", json={"token": token}, **with_cid(c))
        assert r.status_code == 200, r.text
        only_audit_row(superuser, world, c, action="invitation.accept", category="invitation",
                       actor_subject=newcomer.subject, actor_role="member", actor_user_id=uuid.UUID(r.json()["user_id"]),
                       workspace_id=world.workspaces[0], correlation_id=c)

    def test_refused_action_leaves_no_success_row(self, world: World, superuser) -> None:
        viewer = world.join(workspace=0, role="viewer")
        c = cid()
        assert_problem(viewer.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}, **with_cid(c)), 403)
        assert [r for r in audit_rows(superuser, world.tenant_id, c) if r["outcome"] == "success"] == []
