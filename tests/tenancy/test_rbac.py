"""Role-based access as callers notice it: what each role may do, re-checked on every request."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import pytest

from tests.support.api import Caller, World, person

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
NOT_FOUND = {"type": "about:blank", "title": "Not Found", "status": 404}


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    assert r.json()["status"] == status
    return r.json()


def new_doc(world: World, caller: Caller, ws: int = 0, title: str = "Doc") -> dict[str, Any]:
    r = caller.post(f"{world.ws(ws)}/documents", json={"title": title, "body": "text"})
    assert r.status_code == 201, r.text
    return r.json()


def ws_role(world: World, ws: int, subject: str) -> str | None:
    r = world.admin.get(f"{world.ws(ws)}/members")
    assert r.status_code == 200, r.text
    return next((m["role"] for m in r.json() if m["subject"] == subject), None)


def tenant_role(world: World, subject: str) -> str | None:
    r = world.admin.get(f"{world.base}/members")
    assert r.status_code == 200, r.text
    return next((m["role"] for m in r.json() if m["subject"] == subject), None)


INVITEE = "newcomer@people.example"


def invite(world: World, inviter: Caller, **body: Any) -> httpx.Response:
    body.setdefault("email", INVITEE)
    if "workspace" in body:
        body["workspace_id"] = str(world.workspaces[body.pop("workspace")])
    return inviter.post(f"{world.base}/invitations", json=body)


def accept(world: World, token: str, email: str = INVITEE) -> tuple[Caller, httpx.Response]:
    """A new person, whose token carries `email` (verified), accepts."""
    newcomer = person(world.client, world.idp, email=email)
    return newcomer, newcomer.post(f"{API}/invitations/accept", json={"token": token})


class TestViewerReadsOnly:
    @pytest.fixture
    def viewer(self, world: World) -> Caller:
        return world.join(workspace=0, role="viewer")

    def test_can_read(self, world: World, viewer: Caller) -> None:
        doc = new_doc(world, world.admin, title="Readable")
        listing = viewer.get(f"{world.ws(0)}/documents")
        assert listing.status_code == 200, listing.text
        assert [d["id"] for d in listing.json()["items"]] == [doc["id"]]
        one = viewer.get(f"{world.ws(0)}/documents/{doc['id']}")
        assert one.status_code == 200 and one.json()["title"] == "Readable"

    def test_cannot_create(self, world: World, viewer: Caller) -> None:
        assert_problem(viewer.post(f"{world.ws(0)}/documents", json={"title": "x", "body": "y"}), 403)
        assert world.admin.get(f"{world.ws(0)}/documents").json()["items"] == []

    def test_cannot_update(self, world: World, viewer: Caller) -> None:
        doc = new_doc(world, world.admin, title="Original")
        assert_problem(viewer.patch(f"{world.ws(0)}/documents/{doc['id']}", json={"title": "Hijacked"}), 403)
        assert world.admin.get(f"{world.ws(0)}/documents/{doc['id']}").json()["title"] == "Original"

    def test_cannot_delete(self, world: World, viewer: Caller) -> None:
        doc = new_doc(world, world.admin)
        assert_problem(viewer.delete(f"{world.ws(0)}/documents/{doc['id']}"), 403)
        assert world.admin.get(f"{world.ws(0)}/documents/{doc['id']}").status_code == 200


class TestMemberWritesAndDeletesOwnOnly:
    @pytest.fixture
    def member(self, world: World) -> Caller:
        return world.join(workspace=0, role="member")

    def test_creates_and_updates(self, world: World, member: Caller) -> None:
        doc = new_doc(world, member, title="Mine")
        assert doc["author_id"] == str(world.user_ids[member.subject])
        r = member.patch(f"{world.ws(0)}/documents/{doc['id']}", json={"title": "Mine, edited", "body": "new"})
        assert r.status_code == 200, r.text
        again = member.get(f"{world.ws(0)}/documents/{doc['id']}").json()
        assert (again["title"], again["body"]) == ("Mine, edited", "new")

    def test_deletes_own(self, world: World, member: Caller) -> None:
        doc = new_doc(world, member)
        assert member.delete(f"{world.ws(0)}/documents/{doc['id']}").status_code == 204
        assert_problem(member.get(f"{world.ws(0)}/documents/{doc['id']}"), 404)

    def test_cannot_delete_others(self, world: World, member: Caller) -> None:
        other = world.join(workspace=0, role="member")
        for author in (world.admin, other):
            doc = new_doc(world, author)
            assert_problem(member.delete(f"{world.ws(0)}/documents/{doc['id']}"), 403)
            assert member.get(f"{world.ws(0)}/documents/{doc['id']}").status_code == 200

    def test_cannot_set_workspace_members(self, world: World, member: Caller) -> None:
        target = world.join(workspace=1, role="viewer")
        uid = world.user_ids[target.subject]
        assert_problem(member.put(f"{world.ws(0)}/members/{uid}", json={"role": "viewer"}), 403)
        assert_problem(member.put(f"{world.ws(0)}/members/{world.user_ids[member.subject]}", json={"role": "admin"}), 403)
        assert ws_role(world, 0, target.subject) is None
        assert ws_role(world, 0, member.subject) == "member"


class TestWorkspaceAdminCannotTouchOwners:
    @pytest.fixture
    def ws_admin(self, world: World) -> Caller:
        return world.join(workspace=0, role="admin")

    def test_cannot_grant_owner(self, world: World, ws_admin: Caller) -> None:
        target = world.join(workspace=0, role="member")
        uid = world.user_ids[target.subject]
        assert_problem(ws_admin.put(f"{world.ws(0)}/members/{uid}", json={"role": "owner"}), 403)
        assert_problem(ws_admin.put(f"{world.ws(0)}/members/{world.user_ids[ws_admin.subject]}", json={"role": "owner"}), 403)
        assert ws_role(world, 0, target.subject) == "member"
        assert ws_role(world, 0, ws_admin.subject) == "admin"

    def test_can_grant_up_to_admin(self, world: World, ws_admin: Caller) -> None:
        target = world.join(workspace=0, role="member")
        r = ws_admin.put(f"{world.ws(0)}/members/{world.user_ids[target.subject]}", json={"role": "admin"})
        assert r.status_code == 200, r.text
        assert r.json()["role"] == "admin"
        assert ws_role(world, 0, target.subject) == "admin"

    def test_cannot_demote_owner(self, world: World, ws_admin: Caller) -> None:
        owner = world.join(workspace=0, role="owner")
        uid = world.user_ids[owner.subject]
        assert_problem(ws_admin.put(f"{world.ws(0)}/members/{uid}", json={"role": "viewer"}), 403)
        assert ws_role(world, 0, owner.subject) == "owner"

    def test_cannot_remove_owner(self, world: World, ws_admin: Caller) -> None:
        owner = world.join(workspace=0, role="owner")
        assert_problem(ws_admin.delete(f"{world.ws(0)}/members/{world.user_ids[owner.subject]}"), 403)
        assert ws_role(world, 0, owner.subject) == "owner"
        assert owner.get(f"{world.ws(0)}/documents").status_code == 200


class TestWorkspaceAdminInvitesUpToOwnRole:
    @pytest.fixture
    def ws_admin(self, world: World) -> Caller:
        return world.join(workspace=0, role="admin")

    @pytest.mark.parametrize("role", ["admin", "multi_account_manager", "member", "viewer"])
    def test_invites_into_own_workspace(self, world: World, ws_admin: Caller, role: str) -> None:
        r = invite(world, ws_admin, workspace=0, workspace_role=role)
        assert r.status_code == 201, r.text
        newcomer, accepted = accept(world, r.json()["token"])
        assert accepted.status_code == 200, accepted.text
        assert ws_role(world, 0, newcomer.subject) == role
        assert tenant_role(world, newcomer.subject) == "member"

    def test_cannot_invite_owner(self, world: World, ws_admin: Caller) -> None:
        assert_problem(invite(world, ws_admin, workspace=0, workspace_role="owner"), 403)

    def test_cannot_invite_into_other_workspace(self, world: World, ws_admin: Caller) -> None:
        assert_problem(invite(world, ws_admin, workspace=1, workspace_role="viewer"), 404)

    @pytest.mark.parametrize("role", ["multi_account_manager", "member", "viewer"])
    def test_below_admin_cannot_invite(self, world: World, role: str) -> None:
        low = world.join(workspace=0, role=role)
        assert_problem(invite(world, low, workspace=0, workspace_role="viewer"), 403)


class TestOnlyCustomerAdminInvitesTenantWide:
    @pytest.fixture
    def owner(self, world: World) -> Caller:
        return world.join(workspace=0, role="owner")

    def test_cannot_invite_customer_admin(self, world: World, owner: Caller) -> None:
        assert_problem(invite(world, owner, tenant_role="customer_admin", workspace=0, workspace_role="viewer"), 403)
        assert_problem(invite(world, owner, tenant_role="customer_admin"), 403)

    def test_cannot_invite_without_workspace(self, world: World, owner: Caller) -> None:
        assert_problem(invite(world, owner), 403)
        assert_problem(invite(world, owner, tenant_role="member"), 403)

    def test_customer_admin_can(self, world: World) -> None:
        r = invite(world, world.admin, tenant_role="customer_admin")
        assert r.status_code == 201, r.text
        newcomer, accepted = accept(world, r.json()["token"])
        assert accepted.status_code == 200, accepted.text
        assert newcomer.get(f"{world.base}/members").status_code == 200


class TestCustomerAdminOnlyRoutes:
    """Creating workspaces and managing tenant members: customer_admin only, even for an owner."""

    @pytest.fixture
    def owner(self, world: World) -> Caller:
        return world.join(workspace=0, role="owner")

    def test_owner_cannot_create_workspace(self, world: World, owner: Caller) -> None:
        assert_problem(owner.post(f"{world.base}/workspaces", json={"name": "Mine", "slug": "mine"}), 403)
        assert len(world.admin.get(f"{world.base}/workspaces").json()) == 2

    def test_owner_cannot_list_members(self, world: World, owner: Caller) -> None:
        assert_problem(owner.get(f"{world.base}/members"), 403)

    def test_owner_cannot_patch_member(self, world: World, owner: Caller) -> None:
        assert_problem(owner.patch(f"{world.base}/members/{world.user_ids[owner.subject]}", json={"role": "customer_admin"}), 403)
        assert tenant_role(world, owner.subject) == "member"

    def test_owner_cannot_remove_member(self, world: World, owner: Caller) -> None:
        admin_id = world.user_ids[world.admin.subject]
        assert_problem(owner.delete(f"{world.base}/members/{admin_id}"), 403)
        assert tenant_role(world, world.admin.subject) == "customer_admin"

    def test_customer_admin_can_do_all(self, world: World, owner: Caller) -> None:
        created = world.admin.post(f"{world.base}/workspaces", json={"name": "Third", "slug": "third"})
        assert created.status_code == 201, created.text
        assert created.json()["id"] in [w["id"] for w in world.admin.get(f"{world.base}/workspaces").json()]
        uid = world.user_ids[owner.subject]
        r = world.admin.patch(f"{world.base}/members/{uid}", json={"role": "customer_admin"})
        assert r.status_code == 200 and r.json()["role"] == "customer_admin", r.text
        assert world.admin.delete(f"{world.base}/members/{uid}").status_code == 204
        assert tenant_role(world, owner.subject) is None


class TestLastCustomerAdminStays:
    def test_cannot_demote_self(self, world: World) -> None:
        uid = world.user_ids[world.admin.subject]
        body = assert_problem(world.admin.patch(f"{world.base}/members/{uid}", json={"role": "member"}), 409)
        assert body["title"] == "Conflict"
        assert tenant_role(world, world.admin.subject) == "customer_admin"

    def test_cannot_remove_self(self, world: World) -> None:
        uid = world.user_ids[world.admin.subject]
        assert_problem(world.admin.delete(f"{world.base}/members/{uid}"), 409)
        assert tenant_role(world, world.admin.subject) == "customer_admin"

    def test_with_a_second_admin_one_may_go(self, world: World) -> None:
        second = world.join(tenant_role="customer_admin")
        uid = world.user_ids[world.admin.subject]
        r = second.patch(f"{world.base}/members/{uid}", json={"role": "member"})
        assert r.status_code == 200 and r.json()["role"] == "member", r.text
        # Now `second` is the last one.
        assert_problem(second.delete(f"{world.base}/members/{world.user_ids[second.subject]}"), 409)
        assert_problem(second.patch(f"{world.base}/members/{world.user_ids[second.subject]}", json={"role": "member"}), 409)


class TestRemovedMemberLosesAccessAtOnce:
    def test_removed_from_tenant(self, world: World) -> None:
        member = world.join(workspace=0, role="member")
        assert member.get(f"{world.ws(0)}/documents").status_code == 200
        assert world.admin.delete(f"{world.base}/members/{world.user_ids[member.subject]}").status_code == 204
        body = assert_problem(member.get(f"{world.base}/workspaces"), 404)
        assert body == NOT_FOUND
        assert_problem(member.get(f"{world.ws(0)}/documents"), 404)
        assert_problem(member.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}), 404)
        assert ws_role(world, 0, member.subject) is None

    def test_reinvited_member_gets_no_old_workspace_role_back(self, world: World) -> None:
        member = world.join(workspace=0, role="admin")
        assert world.admin.delete(f"{world.base}/members/{world.user_ids[member.subject]}").status_code == 204
        token = invite(world, world.admin, tenant_role="member", email=member.email).json()["token"]
        r = member.post(f"{API}/invitations/accept", json={"token": token})
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == str(world.user_ids[member.subject])
        assert member.get(f"{world.base}/workspaces").json() == []
        assert_problem(member.get(f"{world.ws(0)}/documents"), 404)

    def test_removed_from_workspace(self, world: World) -> None:
        member = world.join(workspace=0, role="member")
        assert world.admin.delete(f"{world.ws(0)}/members/{world.user_ids[member.subject]}").status_code == 204
        assert_problem(member.get(f"{world.ws(0)}/documents"), 404)
        r = member.get(f"{world.base}/workspaces")
        assert r.status_code == 200 and r.json() == []


class TestRoleChangeTakesEffectNextRequest:
    def test_workspace_promotion_and_demotion(self, world: World) -> None:
        user = world.join(workspace=0, role="viewer")
        url, uid = f"{world.ws(0)}/documents", world.user_ids[user.subject]
        assert_problem(user.post(url, json={"title": "t", "body": "b"}), 403)
        assert world.admin.put(f"{world.ws(0)}/members/{uid}", json={"role": "member"}).status_code == 200
        assert user.post(url, json={"title": "t", "body": "b"}).status_code == 201
        assert world.admin.put(f"{world.ws(0)}/members/{uid}", json={"role": "viewer"}).status_code == 200
        assert_problem(user.post(url, json={"title": "t2", "body": "b"}), 403)

    def test_tenant_promotion_and_demotion(self, world: World) -> None:
        user = world.join(workspace=0, role="member")
        uid = world.user_ids[user.subject]
        assert_problem(user.get(f"{world.base}/members"), 403)
        assert world.admin.patch(f"{world.base}/members/{uid}", json={"role": "customer_admin"}).status_code == 200
        assert user.get(f"{world.base}/members").status_code == 200
        assert world.admin.patch(f"{world.base}/members/{uid}", json={"role": "member"}).status_code == 200
        assert_problem(user.get(f"{world.base}/members"), 403)


class TestInvitationTokens:
    def test_works_once(self, world: World) -> None:
        token = invite(world, world.admin, workspace=0, workspace_role="member").json()["token"]
        first, ok = accept(world, token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["tenant_id"] == str(world.tenant_id)
        again = first.post(f"{API}/invitations/accept", json={"token": token})
        assert assert_problem(again, 404) == NOT_FOUND
        _, other = accept(world, token)
        assert assert_problem(other, 404) == NOT_FOUND
        members = world.admin.get(f"{world.ws(0)}/members").json()
        assert sum(m["role"] == "member" for m in members) == 1

    @pytest.mark.parametrize("kind", ["garbage", "random_tenant", "right_tenant_wrong_secret", "foreign_tenant_secret", "no_separator"])
    def test_bad_token_is_404(self, world: World, other_world: World, kind: str) -> None:
        b_token = invite(other_world, other_world.admin, workspace=0, workspace_role="member").json()["token"]
        b_secret = b_token.partition(".")[2]
        token = {
            "garbage": "garbage-token-value",
            "random_tenant": f"{uuid.uuid4()}.{secrets.token_urlsafe(32)}",
            "right_tenant_wrong_secret": f"{world.tenant_id}.{secrets.token_urlsafe(32)}",
            # B's secret presented as A's: tenant A never had it.
            "foreign_tenant_secret": f"{world.tenant_id}.{b_secret}",
            "no_separator": b_secret,
        }[kind]
        newcomer, r = accept(world, token)
        assert assert_problem(r, 404) == NOT_FOUND
        assert_problem(newcomer.get(f"{world.base}/workspaces"), 404)
        assert_problem(newcomer.get(f"{other_world.base}/workspaces"), 404)
        # The real token was not spent by the attempt.
        _, ok = accept(other_world, b_token)
        assert ok.status_code == 200, ok.text

    def test_lapses_when_its_inviter_is_demoted(self, world: World) -> None:
        ws_admin = world.join(workspace=0, role="admin")
        token = invite(world, ws_admin, workspace=0, workspace_role="member").json()["token"]
        demoted = world.admin.put(f"{world.ws(0)}/members/{world.user_ids[ws_admin.subject]}", json={"role": "viewer"})
        assert demoted.status_code == 200, demoted.text
        newcomer, r = accept(world, token)
        assert assert_problem(r, 404) == NOT_FOUND
        assert_problem(newcomer.get(f"{world.base}/workspaces"), 404)

    def test_lapses_when_its_inviter_is_removed(self, world: World) -> None:
        second_admin = world.join(tenant_role="customer_admin")
        token = invite(world, second_admin, tenant_role="customer_admin").json()["token"]
        assert world.admin.delete(f"{world.base}/members/{world.user_ids[second_admin.subject]}").status_code == 204
        _, r = accept(world, token)
        assert assert_problem(r, 404) == NOT_FOUND


class TestCustomerAdminWithoutWorkspaceRoleSeesNoContent:
    """A customer_admin manages every workspace, but reads its content only with a workspace role."""

    def test_manages_but_cannot_read(self, world: World) -> None:
        doc = new_doc(world, world.admin, title="Client secret plan")
        second = world.join(tenant_role="customer_admin")
        assert len(second.get(f"{world.base}/workspaces").json()) == 2
        assert second.get(world.ws(0)).status_code == 200
        assert second.get(f"{world.ws(0)}/members").status_code == 200
        assert_problem(second.get(f"{world.ws(0)}/documents"), 404)
        assert_problem(second.get(f"{world.ws(0)}/documents/{doc['id']}"), 404)
        assert_problem(second.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}), 404)
