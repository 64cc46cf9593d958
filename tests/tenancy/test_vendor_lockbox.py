"""Vendor access works like a customer lockbox, over HTTP with real tokens from the vendor's IdP.

A named vendor person requests access (reason, scope, hours ≤ 8); a customer_admin of that tenant
approves or denies it; the grant admits that person only, for that scope only, until it expires or
is revoked; every step and every read is in the tenant's audit trail. Without a grant vendor staff
see tenant onboarding metadata and nothing else. The database checks the same grant (see
tests/db/test_rls.py); here is what a vendor and a customer notice. That a customer's own IdP
cannot mint vendor staff is tests/auth/test_vendor_issuer.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support.api import Caller, World, person

API = "/api/v1"


def request_access(vendor: Caller, world: World, scope: str = "audit", hours: int = 2, **extra: Any) -> dict[str, Any]:
    r = vendor.post(f"{world.base}/vendor-access-requests", json={"reason": "ticket 4711", "scope": scope, "hours": hours, **extra})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "requested"
    return r.json()


def decide(world: World, grant: dict[str, Any], verb: str = "approve", caller: Caller | None = None) -> Any:
    return (caller or world.admin).post(f"{world.base}/vendor-access-grants/{grant['id']}/{verb}")


def trail(world: World, **params: Any) -> list[dict[str, Any]]:
    r = world.admin.get(f"{world.base}/audit-events", params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


@pytest.fixture
def colleague(client, idp) -> Caller:
    """Another vendor staff member, from the same vendor IdP."""
    return person(client, idp, roles=["internal_admin"])


@pytest.fixture(scope="module")
def superuser(database):
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()


def vendor_urls(world: World, document_id: uuid.UUID) -> dict[str, str]:
    return {
        "metadata": f"{world.base}/members",
        "workspaces": f"{world.base}/workspaces",
        "audit": f"{world.base}/audit-events",
        "content": f"{world.ws(0)}/documents",
        "document": f"{world.ws(0)}/documents/{document_id}",
        "other_workspace": f"{world.ws(1)}/documents",
    }


@pytest.fixture
def doc(world: World) -> uuid.UUID:
    owner = world.join(workspace=0, role="owner")
    created = owner.post(f"{world.ws(0)}/documents", json={"title": "Brand plan", "body": "confidential"})
    assert created.status_code == 201, created.text
    return uuid.UUID(created.json()["id"])


def reachable(vendor: Caller, urls: dict[str, str]) -> set[str]:
    return {name for name, url in urls.items() if vendor.get(url).status_code == 200}


class TestWithoutAGrant:
    def test_onboarding_metadata_only(self, vendor: Caller, world: World, doc: uuid.UUID):
        assert vendor.get(world.base).status_code == 200
        assert set(vendor.get(world.base).json()) == {"id", "name", "slug", "created_at"}
        assert reachable(vendor, vendor_urls(world, doc)) == set()

    def test_a_pending_request_opens_nothing(self, vendor: Caller, world: World, doc: uuid.UUID):
        request_access(vendor, world, "metadata")
        assert reachable(vendor, vendor_urls(world, doc)) == set()

    def test_refusal_looks_like_a_missing_tenant(self, vendor: Caller, world: World):
        mine = vendor.get(f"{world.base}/audit-events")
        missing = vendor.get(f"{API}/tenants/{uuid.uuid4()}/audit-events")
        assert mine.status_code == missing.status_code == 404
        assert mine.content == missing.content


class TestEachScopeOpensOnlyItself:
    @pytest.mark.parametrize(("scope", "opens"), [
        ("metadata", {"metadata", "workspaces"}),
        ("audit", {"audit"}),
        ("content", {"content", "document"}),
    ])
    def test_approved_scope(self, vendor: Caller, world: World, doc: uuid.UUID, scope: str, opens: set[str]):
        extra = {"workspace_id": str(world.workspaces[0])} if scope == "content" else {}
        grant = request_access(vendor, world, scope, **extra)
        approved = decide(world, grant)
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
        assert reachable(vendor, vendor_urls(world, doc)) == opens

    def test_content_is_read_only(self, vendor: Caller, world: World, doc: uuid.UUID):
        grant = request_access(vendor, world, "content", workspace_id=str(world.workspaces[0]))
        decide(world, grant)
        assert vendor.get(f"{world.ws(0)}/documents/{doc}").json()["title"] == "Brand plan"
        assert vendor.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}).status_code == 404
        assert vendor.patch(f"{world.ws(0)}/documents/{doc}", json={"title": "changed"}).status_code == 404
        assert vendor.delete(f"{world.ws(0)}/documents/{doc}").status_code == 404
        assert vendor.get(f"{world.ws(0)}/documents/{doc}").json()["title"] == "Brand plan"

    def test_content_needs_a_workspace_and_only_content_takes_one(self, vendor: Caller, world: World):
        for body in ({"scope": "content"}, {"scope": "audit", "workspace_id": str(world.workspaces[0])}):
            r = vendor.post(f"{world.base}/vendor-access-requests", json={"reason": "x-ray", "hours": 1, **body})
            assert r.status_code == 422, r.text

    def test_a_workspace_of_another_tenant_is_refused(self, vendor: Caller, world: World, other_world: World):
        r = vendor.post(f"{world.base}/vendor-access-requests",
                        json={"reason": "x-ray", "hours": 1, "scope": "content", "workspace_id": str(other_world.workspaces[0])})
        assert r.status_code == 404


class TestTheGrantIsBoundToThePerson:
    def test_a_colleague_gets_nothing(self, vendor: Caller, colleague: Caller, world: World, doc: uuid.UUID):
        decide(world, request_access(vendor, world, "audit"))
        assert vendor.get(f"{world.base}/audit-events").status_code == 200
        assert colleague.get(f"{world.base}/audit-events").status_code == 404

    def test_vendors_see_only_their_own_requests(self, vendor: Caller, colleague: Caller, world: World):
        mine = request_access(vendor, world, "audit")
        theirs = request_access(colleague, world, "metadata")
        listed = vendor.get(f"{world.base}/vendor-access-grants")
        assert listed.status_code == 200
        assert [g["id"] for g in listed.json()] == [mine["id"]]
        assert {g["id"] for g in world.admin.get(f"{world.base}/vendor-access-grants").json()} == {mine["id"], theirs["id"]}

    def test_vendor_staff_cannot_decide(self, vendor: Caller, colleague: Caller, world: World):
        grant = request_access(vendor, world, "audit")
        for who in (vendor, colleague):
            assert decide(world, grant, caller=who).status_code == 404
        assert world.admin.get(f"{world.base}/vendor-access-grants").json()[0]["status"] == "requested"


class TestTheCustomerDecides:
    def test_request_approve_read_revoke_all_audited(self, vendor: Caller, world: World):
        grant = request_access(vendor, world, "audit", hours=3)
        approved = decide(world, grant).json()
        assert approved["decided_by"] == str(world.user_ids[world.admin.subject])
        assert vendor.get(f"{world.base}/audit-events").status_code == 200
        revoked = world.admin.delete(f"{world.base}/vendor-access-grants/{grant['id']}")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        assert vendor.get(f"{world.base}/audit-events").status_code == 404
        events = trail(world, category="vendor_access")
        steps = [e["action"] for e in events if e["target_id"] == grant["id"]]
        assert steps == ["vendor_grant.revoke", "vendor_grant.approve", "vendor_grant.request"]
        reads = [e for e in events if e["action"] == "GET /tenants/{tenant_id}/audit-events"]
        assert [e["details"]["vendor_grant_id"] for e in reads] == [grant["id"]]
        assert reads[0]["actor_subject"] == vendor.subject

    def test_denied_opens_nothing_and_cannot_be_approved_later(self, vendor: Caller, world: World):
        grant = request_access(vendor, world, "audit")
        assert decide(world, grant, "deny").json()["status"] == "denied"
        assert vendor.get(f"{world.base}/audit-events").status_code == 404
        again = decide(world, grant)
        assert again.status_code == 409
        assert again.headers["content-type"].startswith("application/problem+json")
        assert "vendor_grant.deny" in {e["action"] for e in trail(world, category="vendor_access")}

    def test_hours_are_at_most_eight(self, vendor: Caller, world: World):
        r = vendor.post(f"{world.base}/vendor-access-requests", json={"reason": "long one", "scope": "audit", "hours": 9})
        assert r.status_code == 422

    def test_approval_runs_the_requested_hours_from_approval(self, vendor: Caller, world: World):
        grant = request_access(vendor, world, "audit", hours=8)
        approved = decide(world, grant).json()
        decided, expires = (datetime.fromisoformat(approved[k]) for k in ("decided_at", "expires_at"))
        assert expires - decided == timedelta(hours=8)

    def test_a_member_is_no_approver(self, vendor: Caller, world: World):
        member = world.join(workspace=0, role="owner")
        grant = request_access(vendor, world, "audit")
        assert decide(world, grant, caller=member).status_code == 403
        assert vendor.get(f"{world.base}/audit-events").status_code == 404

    def test_another_tenants_admin_cannot_approve(self, vendor: Caller, world: World, other_world: World):
        grant = request_access(vendor, world, "audit")
        # Through the victim's path (not a member) and through their own (a grant id of another tenant).
        via_victim = other_world.admin.post(f"{world.base}/vendor-access-grants/{grant['id']}/approve")
        via_own = other_world.admin.post(f"{other_world.base}/vendor-access-grants/{grant['id']}/approve")
        random = other_world.admin.post(f"{other_world.base}/vendor-access-grants/{uuid.uuid4()}/approve")
        assert via_victim.status_code == via_own.status_code == random.status_code == 404
        assert via_own.content == random.content
        assert vendor.get(f"{world.base}/audit-events").status_code == 404

    def test_nobody_approves_their_own_request(self, vendor: Caller, client, idp, world: World):
        # A vendor engineer who is also made a customer_admin of the tenant, with the same identity.
        insider = person(client, idp, roles=["internal_admin"], email=f"insider-{uuid.uuid4().hex[:8]}@people.example")
        grant = request_access(insider, world, "audit")
        invite = world.admin.post(f"{world.base}/invitations", json={"email": insider.email, "tenant_role": "customer_admin"})
        assert invite.status_code == 201, invite.text
        assert insider.post(f"{API}/invitations/accept", json={"token": invite.json()["token"]}).status_code == 200
        refused = decide(world, grant, caller=insider)
        assert refused.status_code == 403, refused.text
        assert world.admin.get(f"{world.base}/vendor-access-grants").json()[0]["status"] == "requested"


class TestExpiry:
    def test_expired_grant_answers_like_a_missing_one_and_is_audited(self, vendor: Caller, world: World, superuser):
        grant = request_access(vendor, world, "audit", hours=1)
        decide(world, grant)
        assert vendor.get(f"{world.base}/audit-events").status_code == 200
        with superuser.begin() as conn:  # an hour passes
            conn.execute(text("update vendor_access_grants set expires_at = now() - interval '1 second' where id = :id"),
                         {"id": grant["id"]})
        expired = vendor.get(f"{world.base}/audit-events")
        missing = vendor.get(f"{API}/tenants/{uuid.uuid4()}/audit-events")
        assert expired.status_code == 404 and expired.content == missing.content
        listed = world.admin.get(f"{world.base}/vendor-access-grants").json()
        assert listed[0]["status"] == "expired"
        expiries = [e for e in trail(world, category="vendor_access") if e["action"] == "vendor_grant.expire"]
        assert [e["target_id"] for e in expiries] == [grant["id"]]
        world.admin.get(f"{world.base}/vendor-access-grants")
        assert len([e for e in trail(world, category="vendor_access") if e["action"] == "vendor_grant.expire"]) == 1
