"""An invitation is bound to its invitee's e-mail: a leaked link is useless to anybody else.

Accepting needs a token whose `email` claim matches the invitation's (stripped, case-folded) with
`email_verified: true`. Any other caller gets exactly the answer an unknown invitation gets, and the
refusal lands in the inviting tenant's audit trail with the invitation id and the reason.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.support.api import Caller, World, invitee, new_email, person

API = "/api/v1"


@pytest.fixture(scope="module")
def superuser(database) -> Iterator[Engine]:
    """Reads (and, for the legacy case, edits) rows as the database superuser, bypassing RLS."""
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()


def invite(world: World, email: str, **body: Any) -> str:
    r = world.admin.post(f"{world.base}/invitations", json={"email": email, "workspace_id": str(world.workspaces[0]),
                                                              "workspace_role": "member", **body})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def accept(caller: Caller, token: str, correlation_id: str | None = None) -> httpx.Response:
    headers = {"X-Correlation-ID": correlation_id} if correlation_id else {}
    return caller.post(f"{API}/invitations/accept", json={"token": token}, headers=headers)


def with_claims(world: World, claims: dict[str, Any]) -> Caller:
    """A person whose token carries exactly these extra claims (e.g. an e-mail without `email_verified`)."""
    subject = f"user-{secrets.token_hex(6)}"
    return Caller(world.client, subject, world.idp.token(subject, claims={"realm_access": {"roles": []}, **claims}))


def unknown_invitation_answer(world: World, caller: Caller) -> httpx.Response:
    """What a made-up token in this very tenant gets: the reference a refusal must be identical to."""
    return accept(caller, f"{world.tenant_id}.{secrets.token_urlsafe(32)}")


def assert_like_unknown(world: World, caller: Caller, refused: httpx.Response) -> None:
    reference = unknown_invitation_answer(world, caller)
    assert refused.status_code == reference.status_code == 404
    assert refused.json() == reference.json()
    assert refused.headers["content-type"] == reference.headers["content-type"]


def is_member(world: World, caller: Caller) -> bool:
    return any(m["subject"] == caller.subject for m in world.admin.get(f"{world.base}/members").json())


def invitation_id(superuser: Engine, world: World, email: str) -> uuid.UUID:
    with superuser.connect() as conn:
        return conn.execute(text("select id from invitations where tenant_id = :t and email = :e"),
                            {"t": world.tenant_id, "e": email}).scalar_one()


def audit_rows(superuser: Engine, tenant_id: uuid.UUID, correlation_id: str) -> list[dict[str, Any]]:
    with superuser.connect() as conn:
        rows = conn.execute(text("select * from audit_events where tenant_id = :t and correlation_id = :c"),
                            {"t": tenant_id, "c": correlation_id}).mappings().all()
    return [dict(r) for r in rows]


class TestTheInviteeJoins:
    def test_matching_verified_email_is_accepted(self, world: World) -> None:
        newcomer = invitee(world.client, world.idp)
        r = accept(newcomer, invite(world, newcomer.email))
        assert r.status_code == 200, r.text
        assert r.json()["tenant_id"] == str(world.tenant_id)
        assert is_member(world, newcomer)
        assert newcomer.get(f"{world.ws(0)}/documents").status_code == 200

    @pytest.mark.parametrize(("invited", "claimed"), [
        ("Ann.Lee@Example.COM", "ann.lee@example.com"),
        ("ann.lee@example.com", "  ANN.LEE@EXAMPLE.COM\t"),
        ("  Ann.Lee@example.com  ", "ann.lee@EXAMPLE.com"),  # the invitation's own whitespace is dropped when it is made
        ("Jo.Strauß@Example.com", "jo.strauß@example.com"),
    ])
    def test_case_and_surrounding_whitespace_do_not_matter(self, world: World, invited: str, claimed: str) -> None:
        local = secrets.token_hex(4)
        invited, claimed = invited.replace("@", f"+{local}@"), claimed.replace("@", f"+{local}@")
        newcomer = person(world.client, world.idp, email=claimed)
        r = accept(newcomer, invite(world, invited))
        assert r.status_code == 200, r.text
        assert is_member(world, newcomer)

    def test_distinct_letters_that_case_folding_would_merge_stay_distinct(self, world: World) -> None:
        local = secrets.token_hex(4)
        other = person(world.client, world.idp, email=f"jo.strauss+{local}@example.com")
        assert accept(other, invite(world, f"jo.strauß+{local}@example.com")).status_code == 404

    def test_the_first_customer_admin_is_bound_too(self, world: World, vendor: Caller) -> None:
        slug = f"t-{secrets.token_hex(5)}"
        admin = invitee(world.client, world.idp)
        created = vendor.post(f"{API}/tenants", json={"name": "Bound", "slug": slug, "admin_email": admin.email})
        assert created.status_code == 201, created.text
        token = created.json()["admin_invitation_token"]
        stranger = invitee(world.client, world.idp)
        refused = accept(stranger, token)
        assert refused.status_code == 404
        ok = accept(admin, token)
        assert ok.status_code == 200, ok.text
        assert admin.get(f"{API}/tenants/{created.json()['id']}/members").status_code == 200


class TestAnybodyElseIsRefusedLikeAnUnknownInvitation:
    def test_another_users_token(self, world: World) -> None:
        meant_for = invitee(world.client, world.idp)
        token = invite(world, meant_for.email)
        intruder = invitee(world.client, world.idp)
        refused = accept(intruder, token)
        assert_like_unknown(world, intruder, refused)
        assert not is_member(world, intruder)
        # The attempt did not spend the invitation.
        assert accept(meant_for, token).status_code == 200

    @pytest.mark.parametrize("claims", [
        pytest.param({"email_verified": False}, id="email_verified_false"),
        pytest.param({}, id="email_verified_missing"),
        pytest.param({"email_verified": "true"}, id="email_verified_a_string"),
    ])
    def test_same_email_not_verified(self, world: World, claims: dict[str, Any]) -> None:
        email = new_email()
        token = invite(world, email)
        unverified = with_claims(world, {"email": email, **claims})
        assert_like_unknown(world, unverified, accept(unverified, token))
        assert not is_member(world, unverified)

    def test_no_email_at_all(self, world: World) -> None:
        token = invite(world, new_email())
        anonymous = with_claims(world, {})
        assert_like_unknown(world, anonymous, accept(anonymous, token))
        assert not is_member(world, anonymous)

    def test_an_invitation_made_before_invitees_were_named(self, world: World, superuser: Engine) -> None:
        email = new_email()
        token = invite(world, email)
        with superuser.begin() as conn:  # what an invitation from before this release looks like
            conn.execute(text("update invitations set email = null where tenant_id = :t and email = :e"),
                         {"t": world.tenant_id, "e": email})
        holder = person(world.client, world.idp, email=email)
        assert_like_unknown(world, holder, accept(holder, token))
        assert not is_member(world, holder)


class TestRefusalsAreAudited:
    @pytest.mark.parametrize(("claims", "reason"), [
        pytest.param("other", "email_mismatch", id="mismatch"),
        pytest.param({"email_verified": False}, "email_unverified", id="unverified"),
        pytest.param(None, "email_missing", id="missing"),
    ])
    def test_refusal_names_invitation_and_reason_never_the_token(self, world: World, superuser: Engine,
                                                                 claims: Any, reason: str) -> None:
        email = new_email()
        token = invite(world, email)
        if claims == "other":
            caller = invitee(world.client, world.idp)
        elif claims is None:
            caller = with_claims(world, {})
        else:
            caller = with_claims(world, {"email": email, **claims})
        correlation = f"invitee-{secrets.token_hex(6)}"
        assert accept(caller, token, correlation).status_code == 404
        (row,) = audit_rows(superuser, world.tenant_id, correlation)
        assert {k: row[k] for k in ("category", "action", "outcome", "target_type", "target_id", "workspace_id",
                                    "actor_issuer", "actor_subject", "actor_user_id", "details")} == {
            "category": "invitation", "action": "invitation.accept_refused", "outcome": "denied",
            "target_type": "invitation", "target_id": str(invitation_id(superuser, world, email)),
            "workspace_id": world.workspaces[0], "actor_issuer": world.idp.issuer, "actor_subject": caller.subject, "actor_user_id": None,
            "details": {"reason": reason},
        }
        recorded = json.dumps(row, default=str)
        assert token not in recorded and token.partition(".")[2] not in recorded
        assert email not in recorded

    def test_legacy_invitation_refusal_is_audited(self, world: World, superuser: Engine) -> None:
        email = new_email()
        token = invite(world, email)
        invitation = invitation_id(superuser, world, email)
        with superuser.begin() as conn:
            conn.execute(text("update invitations set email = null where id = :i"), {"i": invitation})
        correlation = f"invitee-{secrets.token_hex(6)}"
        assert accept(person(world.client, world.idp, email=email), token, correlation).status_code == 404
        (row,) = audit_rows(superuser, world.tenant_id, correlation)
        assert (row["action"], row["target_id"], row["details"]) == (
            "invitation.accept_refused", str(invitation), {"reason": "invitation_without_email"})

    def test_accepted_invitation_leaves_no_refusal(self, world: World, superuser: Engine) -> None:
        newcomer = invitee(world.client, world.idp)
        correlation = f"invitee-{secrets.token_hex(6)}"
        assert accept(newcomer, invite(world, newcomer.email), correlation).status_code == 200
        assert [r["action"] for r in audit_rows(superuser, world.tenant_id, correlation)] == ["invitation.accept"]


class TestAnInvitationNamesItsInvitee:
    @pytest.mark.parametrize("body", [
        pytest.param({"tenant_role": "customer_admin"}, id="no_email"),
        pytest.param({"email": None, "tenant_role": "customer_admin"}, id="null"),
        pytest.param({"email": "", "tenant_role": "customer_admin"}, id="empty"),
        pytest.param({"email": "not an address", "tenant_role": "customer_admin"}, id="malformed"),
    ])
    def test_invitation_without_email_is_422(self, world: World, body: dict[str, Any]) -> None:
        r = world.admin.post(f"{world.base}/invitations", json=body)
        assert r.status_code == 422, r.text
        assert any(e["loc"][-1] == "email" for e in r.json()["errors"])

    def test_tenant_without_admin_email_is_422(self, vendor: Caller) -> None:
        slug = f"t-{secrets.token_hex(5)}"
        r = vendor.post(f"{API}/tenants", json={"name": "No admin e-mail", "slug": slug})
        assert r.status_code == 422, r.text
        assert any(e["loc"][-1] == "admin_email" for e in r.json()["errors"])
