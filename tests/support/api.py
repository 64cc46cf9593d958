"""API fixtures: the real app (real PostgreSQL as the app role, real IdP tokens) and a world builder."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import IssuerConfig, Settings
from app.main import create_app
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP


def settings_for(database: TestDatabase, *idps: TestIdP, vendor: bool = True, **overrides: Any) -> Settings:
    """The first IdP is the vendor's (trusted for internal_admin) unless `vendor=False`; the rest are customers'."""
    issuers = [IssuerConfig(issuer=i.issuer, audience=i.audience, vendor=vendor and n == 0) for n, i in enumerate(idps)]
    # Every test shares one client address and a few session-wide callers: limits are lifted here,
    # and tests/edge/test_ratelimit.py sets the ones it tests.
    unlimited = 1_000_000
    overrides.setdefault("rate_limit_per_minute", unlimited)
    overrides.setdefault("rate_limit_classes", {"auth-public": unlimited, "export": unlimited, "upload": unlimited,
                                                "auth-failure": unlimited, "auth-failure-subject": unlimited})
    # Failed sign-ins reach the audit trail from a buffer (app/audit/buffered.py): tests that look
    # for them flush it themselves (`app.state.audit_buffer.flush()`), never racing a timer.
    overrides.setdefault("audit_buffer_flush_seconds", 3600)
    return Settings(_env_file=None, database_url=database.app_url, issuers=issuers, **overrides)


@pytest.fixture(scope="session")
def client(database: TestDatabase, idp: TestIdP) -> Iterator[TestClient]:
    # A real-looking peer address, as uvicorn would report it: the audit trail records it.
    with TestClient(create_app(settings_for(database, idp)), raise_server_exceptions=False, client=("203.0.113.7", 50000)) as c:
        yield c


@dataclass
class Caller:
    """A person with a real token from the test IdP."""

    client: TestClient
    subject: str
    token: str
    # The e-mail the token carries (with `email_verified: true` unless the test said otherwise).
    email: str | None = None

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


def new_email() -> str:
    """A fresh invitee address, never used before."""
    return f"invitee-{secrets.token_hex(6)}@people.example"


def person(client: TestClient, idp: TestIdP, *, roles: list[str] | None = None, email: str | None = None,
           email_verified: bool = True, **claims: Any) -> Caller:
    """A new person; with `email`, their token carries it and `email_verified` (true by default)."""
    subject = f"user-{secrets.token_hex(6)}"
    token_claims = {"realm_access": {"roles": roles or []}, **claims}
    if email is not None:
        token_claims |= {"email": email, "email_verified": email_verified}
    return Caller(client, subject, idp.token(subject, claims=token_claims), email=email)


def invitee(client: TestClient, idp: TestIdP) -> Caller:
    """A new person whose token carries a fresh, verified e-mail: invite `caller.email`."""
    return person(client, idp, email=new_email())


@dataclass
class World:
    """A tenant made through the API: its customer_admin, two workspaces, and helpers to add people."""

    client: TestClient
    idp: TestIdP
    tenant_id: uuid.UUID
    admin: Caller
    workspaces: list[uuid.UUID] = field(default_factory=list)
    user_ids: dict[str, uuid.UUID] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/api/v1/tenants/{self.tenant_id}"

    def ws(self, index: int) -> str:
        return f"{self.base}/workspaces/{self.workspaces[index]}"

    def join(self, *, workspace: int | None = None, role: str | None = None, tenant_role: str = "member") -> Caller:
        """A new person who accepted an invitation from the customer_admin, made out to their verified e-mail."""
        newcomer = invitee(self.client, self.idp)
        body: dict[str, Any] = {"email": newcomer.email, "tenant_role": tenant_role}
        if workspace is not None:
            body |= {"workspace_id": str(self.workspaces[workspace]), "workspace_role": role}
        invite = self.admin.post(f"{self.base}/invitations", json=body)
        assert invite.status_code == 201, invite.text
        accepted = newcomer.post("/api/v1/invitations/accept", json={"token": invite.json()["token"]})
        assert accepted.status_code == 200, accepted.text
        self.user_ids[newcomer.subject] = uuid.UUID(accepted.json()["user_id"])
        return newcomer


def make_world(client: TestClient, idp: TestIdP, vendor: Caller) -> World:
    slug = f"t-{secrets.token_hex(5)}"
    admin = invitee(client, idp)
    created = vendor.post("/api/v1/tenants", json={"name": f"Tenant {slug}", "slug": slug, "admin_email": admin.email})
    assert created.status_code == 201, created.text
    accepted = admin.post("/api/v1/invitations/accept", json={"token": created.json()["admin_invitation_token"]})
    assert accepted.status_code == 200, accepted.text
    world = World(client, idp, uuid.UUID(created.json()["id"]), admin)
    world.user_ids[admin.subject] = uuid.UUID(accepted.json()["user_id"])
    for brand in ("brand-a", "brand-b"):
        ws = admin.post(f"{world.base}/workspaces", json={"name": brand, "slug": brand})
        assert ws.status_code == 201, ws.text
        world.workspaces.append(uuid.UUID(ws.json()["id"]))
    return world


@pytest.fixture(scope="session")
def vendor(client: TestClient, idp: TestIdP) -> Caller:
    return person(client, idp, roles=["internal_admin"])


@pytest.fixture
def world(client: TestClient, idp: TestIdP, vendor: Caller) -> World:
    return make_world(client, idp, vendor)


@pytest.fixture
def other_world(client: TestClient, idp: TestIdP, vendor: Caller) -> World:
    return make_world(client, idp, vendor)
