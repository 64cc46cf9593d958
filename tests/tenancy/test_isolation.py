"""Tenant and workspace isolation as a caller sees it over HTTP.

Every route that takes an id is listed once in ROUTES. For each id slot a route has, a caller in
tenant A sends tenant B's id in that slot (everything else being A's real ids) and must get a
response byte-for-byte identical to the one for a random uuid: another tenant's row does not exist,
and nothing about it leaks. To cover a new route, add one line to ROUTES.
"""

from __future__ import annotations

import string
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.api import Caller, World

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"
SLOTS = ("tenant", "ws", "user", "doc", "target")
# Where a slot's value ends up, as FastAPI names it in a 422's `errors[].loc`.
SLOT_LOC = {
    "tenant": ["path", "tenant_id"],
    "ws": ["path", "workspace_id"],
    "user": ["path", "user_id"],
    "doc": ["path", "document_id"],
    "target": ["body", "target_workspace_id"],
}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # after /api/v1, with {slot} placeholders
    body: dict[str, Any] | None = None  # string values may hold {slot} placeholders
    # Only a customer_admin may call it at all: anyone else gets 403 inside their own tenant.
    admin_only: bool = False
    # What the all-legitimate request answers for A's customer_admin and for A's workspace owner.
    ok: int = 200

    @property
    def slots(self) -> list[str]:
        texts = [self.path, *(v for v in (self.body or {}).values() if isinstance(v, str))]
        return [name for t in texts for _, name, _, _ in string.Formatter().parse(t) if name]

    def body_slot(self, slot: str) -> str | None:
        for key, value in (self.body or {}).items():
            if value == "{" + slot + "}":
                return key
        return None

    def send(self, caller: Caller, ids: dict[str, Any], **kw: Any) -> httpx.Response:
        ids = {k: str(v) for k, v in ids.items()}
        body = None
        if self.body is not None:
            body = {k: v.format(**ids) if isinstance(v, str) else v for k, v in self.body.items()}
        return caller.request(self.method, API + self.path.format(**ids), json=body, **kw)


TENANT = "/tenants/{tenant}"
WS = TENANT + "/workspaces/{ws}"
DOC = WS + "/documents/{doc}"

ROUTES = [
    Route("tenant.get", "GET", TENANT, admin_only=True),
    Route("members.list", "GET", TENANT + "/members", admin_only=True),
    Route("member.patch", "PATCH", TENANT + "/members/{user}", {"role": "member"}, admin_only=True),
    Route("member.delete", "DELETE", TENANT + "/members/{user}", admin_only=True, ok=204),
    Route("invitation.create", "POST", TENANT + "/invitations",
          {"email": "probe@people.example", "tenant_role": "member", "workspace_id": "{ws}", "workspace_role": "viewer"}, ok=201),
    Route("workspaces.list", "GET", TENANT + "/workspaces"),
    Route("workspace.create", "POST", TENANT + "/workspaces", {"name": "New", "slug": "new-brand"}, admin_only=True, ok=201),
    Route("workspace.get", "GET", WS),
    Route("workspace.patch", "PATCH", WS, {"name": "Renamed"}),
    Route("workspace.delete", "DELETE", WS, ok=204),
    Route("workspace_members.list", "GET", WS + "/members"),
    Route("workspace_member.put", "PUT", WS + "/members/{user}", {"role": "viewer"}),
    Route("workspace_member.delete", "DELETE", WS + "/members/{user}", ok=204),
    Route("documents.list", "GET", WS + "/documents"),
    Route("document.create", "POST", WS + "/documents", {"title": "New", "body": "text"}, ok=201),
    Route("document.get", "GET", DOC),
    Route("document.patch", "PATCH", DOC, {"title": "Changed"}),
    Route("document.delete", "DELETE", DOC, ok=204),
    Route("document.copy", "POST", DOC + "/copy", {"target_workspace_id": "{target}"}, ok=201),
]

ROUTE_SLOTS = [pytest.param(r, s, id=f"{r.name}[{s}]") for r in ROUTES for s in r.slots]
CALLERS = ["customer_admin", "workspace_owner"]


@dataclass
class Pair:
    """Tenant A (the caller's) and tenant B (the victim), with the ids each route needs."""

    a: World
    b: World
    callers: dict[str, Caller]
    a_ids: dict[str, uuid.UUID]
    b_ids: dict[str, uuid.UUID]

    def ids_with(self, slot: str, value: uuid.UUID | str) -> dict[str, Any]:
        return {**self.a_ids, slot: value}


def _doc(world: World, caller: Caller, ws: int, title: str) -> uuid.UUID:
    r = caller.post(f"{world.ws(ws)}/documents", json={"title": title, "body": f"{title} body"})
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


@pytest.fixture
def pair(world: World, other_world: World) -> Pair:
    a, b = world, other_world
    # A's workspace owner who is no customer_admin: owner of workspace 0, and of workspace 1 too so
    # that a copy between them is legitimate for this caller.
    owner = a.join(workspace=0, role="owner")
    r = a.admin.put(f"{a.ws(1)}/members/{a.user_ids[owner.subject]}", json={"role": "owner"})
    assert r.status_code == 200, r.text
    a_member = a.join(workspace=0, role="viewer")
    b_member = b.join(workspace=0, role="member")
    a_ids = {"tenant": a.tenant_id, "ws": a.workspaces[0], "user": a.user_ids[a_member.subject],
             "doc": _doc(a, a.admin, 0, "A secret"), "target": a.workspaces[1]}
    b_ids = {"tenant": b.tenant_id, "ws": b.workspaces[0], "user": b.user_ids[b_member.subject],
             "doc": _doc(b, b_member, 0, "B secret"), "target": b.workspaces[1]}
    _doc(b, b.admin, 1, "B other secret")
    return Pair(a, b, {"customer_admin": a.admin, "workspace_owner": owner}, a_ids, b_ids)


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    body = r.json()
    assert body["status"] == status
    return body


def expected_status(route: Route, slot: str, who: str) -> int:
    """404 whenever the caller could otherwise act; 403 only where they hold no standing at all."""
    if who == "workspace_owner" and route.admin_only and slot != "tenant":
        return 403
    return 404


def snapshot(world: World) -> dict[str, Any]:
    """Everything tenant B's own customer_admin can read about B."""
    admin = world.admin

    def get(url: str) -> Any:
        r = admin.get(url)
        assert r.status_code == 200, (url, r.text)
        return r.json()

    data: dict[str, Any] = {"tenant": get(world.base), "members": get(f"{world.base}/members"),
                            "workspaces": get(f"{world.base}/workspaces")}
    for i, _ in enumerate(world.workspaces):
        data[f"ws{i}"] = get(world.ws(i))
        data[f"ws{i}.members"] = get(f"{world.ws(i)}/members")
        data[f"ws{i}.documents"] = get(f"{world.ws(i)}/documents?limit=100")
    return data


@pytest.fixture(scope="module")
def superuser(database):
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()


def audit_count(engine, tenant_id: uuid.UUID) -> int:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from audit_events where tenant_id = :t"), {"t": tenant_id}).scalar_one()


class TestRouteTableIsLive:
    """Guards the table itself: with A's own ids each route works, so a 404 below means "no such id"."""

    @pytest.mark.parametrize("who", CALLERS)
    @pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
    def test_legitimate_request_succeeds(self, pair: Pair, route: Route, who: str) -> None:
        r = route.send(pair.callers[who], pair.a_ids)
        if who == "workspace_owner" and route.admin_only:
            assert_problem(r, 403)
        else:
            assert r.status_code == route.ok, r.text


class TestForeignIdIsIndistinguishableFromRandom:
    @pytest.mark.parametrize("who", CALLERS)
    @pytest.mark.parametrize(("route", "slot"), ROUTE_SLOTS)
    def test_same_answer_as_a_random_uuid(self, pair: Pair, route: Route, slot: str, who: str) -> None:
        caller = pair.callers[who]
        foreign = route.send(caller, pair.ids_with(slot, pair.b_ids[slot]))
        random = route.send(caller, pair.ids_with(slot, uuid.uuid4()))
        status = expected_status(route, slot, who)
        assert_problem(foreign, status)
        assert_problem(random, status)
        assert foreign.content == random.content
        assert foreign.headers["content-type"] == random.headers["content-type"]


class TestForeignIdsChangeNothing:
    @pytest.mark.parametrize("who", CALLERS)
    def test_tenant_b_reads_the_same_data_afterwards(self, pair: Pair, superuser, who: str) -> None:
        before, audit_before = snapshot(pair.b), audit_count(superuser, pair.b.tenant_id)
        caller = pair.callers[who]
        for route in ROUTES:
            for slot in route.slots:
                r = route.send(caller, pair.ids_with(slot, pair.b_ids[slot]))
                assert r.status_code in (403, 404), (route.name, slot, r.text)
            # Every id of B at once, too.
            r = route.send(caller, pair.b_ids)
            assert r.status_code == 404, (route.name, r.text)
        assert snapshot(pair.b) == before
        assert audit_count(superuser, pair.b.tenant_id) == audit_before
        # B's documents are still B's: their titles never reached A's listing.
        listing = pair.a.admin.get(f"{pair.a.ws(0)}/documents?limit=100").json()["items"]
        assert {d["title"] for d in listing} == {"A secret"}


class TestOtherWorkspaceOfSameTenant:
    """A member of workspace 0 sees workspace 1 of their own tenant as nonexistent."""

    @pytest.fixture
    def setup(self, world: World) -> dict[str, Any]:
        member = world.join(workspace=0, role="member")
        doc1 = _doc(world, world.admin, 1, "ws1 only")
        return {"member": member, "doc1": doc1}

    @pytest.mark.parametrize(
        ("method", "template", "body"),
        [
            ("GET", "{ws1}", None),
            ("PATCH", "{ws1}", {"name": "mine now"}),
            ("DELETE", "{ws1}", None),
            ("GET", "{ws1}/members", None),
            ("GET", "{ws1}/documents", None),
            ("POST", "{ws1}/documents", {"title": "t", "body": "b"}),
            ("GET", "{ws1}/documents/{doc1}", None),
            ("PATCH", "{ws1}/documents/{doc1}", {"title": "x"}),
            ("DELETE", "{ws1}/documents/{doc1}", None),
            # The document id through the workspace the caller is in: RLS hides it there as well.
            ("GET", "{ws0}/documents/{doc1}", None),
            ("PATCH", "{ws0}/documents/{doc1}", {"title": "x"}),
            ("DELETE", "{ws0}/documents/{doc1}", None),
        ],
        ids=lambda v: v if isinstance(v, str) else "",
    )
    def test_404_same_as_random(self, world: World, setup: dict[str, Any], method: str, template: str, body) -> None:
        member = setup["member"]
        real = template.format(ws0=world.ws(0), ws1=world.ws(1), doc1=setup["doc1"])
        fake = template.format(ws0=world.ws(0), ws1=f"{world.base}/workspaces/{uuid.uuid4()}", doc1=uuid.uuid4())
        r_real = member.request(method, real, json=body)
        r_fake = member.request(method, fake, json=body)
        assert_problem(r_real, 404)
        assert_problem(r_fake, 404)
        assert r_real.content == r_fake.content
        # And the document in workspace 1 is untouched.
        doc = world.admin.get(f"{world.ws(1)}/documents/{setup['doc1']}")
        assert doc.status_code == 200 and doc.json()["title"] == "ws1 only"

    def test_workspace_list_shows_only_own_workspace(self, world: World, setup: dict[str, Any]) -> None:
        r = setup["member"].get(f"{world.base}/workspaces")
        assert r.status_code == 200, r.text
        assert [w["id"] for w in r.json()] == [str(world.workspaces[0])]


class TestInternalAdmin:
    """Vendor staff: tenant metadata yes, tenant content no."""

    def test_lists_tenants(self, vendor: Caller, world: World, other_world: World) -> None:
        r = vendor.get(f"{API}/tenants")
        assert r.status_code == 200, r.text
        ids = {t["id"] for t in r.json()}
        assert {str(world.tenant_id), str(other_world.tenant_id)} <= ids
        assert set(r.json()[0]) == {"id", "name", "slug", "created_at"}

    def test_reads_tenant_metadata(self, vendor: Caller, world: World) -> None:
        r = vendor.get(world.base)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == str(world.tenant_id)
        assert r.json()["slug"].startswith("t-")
        assert set(r.json()) == {"id", "name", "slug", "created_at"}

    def test_random_tenant_metadata_is_404(self, vendor: Caller) -> None:
        assert_problem(vendor.get(f"{API}/tenants/{uuid.uuid4()}"), 404)

    @pytest.mark.parametrize("route", [r for r in ROUTES if r.name != "tenant.get"], ids=lambda r: r.name)
    def test_content_routes_are_404(self, vendor: Caller, pair: Pair, route: Route) -> None:
        r = route.send(vendor, pair.a_ids)
        random = route.send(vendor, pair.ids_with("tenant", uuid.uuid4()))
        assert_problem(r, 404)
        assert r.content == random.content

    def test_content_untouched(self, vendor: Caller, pair: Pair) -> None:
        before = snapshot(pair.a)
        for route in ROUTES:
            route.send(vendor, pair.a_ids)
        assert snapshot(pair.a) == before


class TestMalformedIds:
    @pytest.mark.parametrize(("route", "slot"), ROUTE_SLOTS)
    def test_422_problem(self, pair: Pair, route: Route, slot: str) -> None:
        bad = "not-a-uuid-SENTINEL"
        r = route.send(pair.a.admin, pair.ids_with(slot, bad))
        body = assert_problem(r, 422)
        locs = [e["loc"] for e in body["errors"]]
        key = route.body_slot(slot)
        assert (["body", key] if key else SLOT_LOC[slot]) in locs, locs
        assert bad not in r.text
        # Nothing happened: A's own document is still there under its title.
        doc = pair.a.admin.get(f"{pair.a.base}/workspaces/{pair.a_ids['ws']}/documents/{pair.a_ids['doc']}")
        assert doc.status_code == 200 and doc.json()["title"] == "A secret"
