"""Tenant and workspace isolation as a caller sees it over HTTP.

ROUTES has one line per route that takes an id, keyed by its method and its path exactly as the app
declares it. Each `{..._id}` in the path is a slot, and so is a JSON body field written as "{slot}".
For each slot a route has, a caller in tenant A sends tenant B's id in that slot (everything else
being A's real ids) and must get a response byte-for-byte identical to the one for a random uuid:
another tenant's row does not exist, and nothing about it leaks. An owner of one workspace sees
another workspace of the same tenant, and its content, the same way.

TestRouteTable walks the app's routes: a route that takes an id (in its path, or as a uuid field of
its JSON body) and has no line fails the suite, and so does a line whose route is gone. To cover a
new route, add its line; a new kind of id also needs a value in `build_tenant`.
"""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.crypto import datakeys
from app.crypto.datakeys import DataKeys
from tests.credentials.helpers import new_secret
from tests.support.api import Caller, World, make_world
from tests.support.idp import TestIdP
from tests.uploads import corpus

API = "/api/v1"
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # after /api/v1, exactly as the app declares it: each `{..._id}` is a slot
    body: dict[str, Any] | None = None  # JSON; a value "{slot}" makes that field a slot too
    query: dict[str, str] | None = None
    files: dict[str, Any] | None = None  # a multipart body, as httpx takes it
    # Only a customer_admin may call it at all: anyone else gets 403 inside their own tenant.
    admin_only: bool = False
    # Only vendor staff may call it: the tenant's own people get 403.
    vendor_only: bool = False
    # What the all-legitimate request answers, for each of A's people and vendor staff who may call it.
    ok: int = 200
    # What lets vendor staff (members of no tenant) in: nothing (None: 404, as for a missing tenant),
    # being vendor staff ("staff"), or an active grant of that kind from the tenant (A holds one).
    vendor: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.method, API + self.path

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
        return caller.request(self.method, API + self.path.format(**ids), json=body, params=self.query, files=self.files, **kw)


T = "/tenants/{tenant_id}"
WS = T + "/workspaces/{workspace_id}"
DOC = WS + "/documents/{document_id}"
FILE = WS + "/files/{file_id}"
CRED = WS + "/credentials/{credential_id}"
GRANT = T + "/vendor-access-grants/{grant_id}"
UPLOAD = {"file": ("notes.txt", corpus.TEXT, "text/plain")}
KNOWLEDGE = {"purpose": "knowledge"}

ROUTES = [
    Route("tenant.get", "GET", T, admin_only=True, vendor="staff"),
    Route("members.list", "GET", T + "/members", admin_only=True, vendor="metadata"),
    Route("member.patch", "PATCH", T + "/members/{user_id}", {"role": "member"}, admin_only=True),
    Route("member.delete", "DELETE", T + "/members/{user_id}", admin_only=True, ok=204),
    Route("invitation.create", "POST", T + "/invitations",
          {"email": "probe@people.example", "tenant_role": "member", "workspace_id": "{workspace_id}", "workspace_role": "viewer"},
          ok=201),
    Route("workspaces.list", "GET", T + "/workspaces", vendor="metadata"),
    Route("workspace.create", "POST", T + "/workspaces", {"name": "New", "slug": "new-brand"}, admin_only=True, ok=201),
    Route("workspace.get", "GET", WS),
    Route("workspace.patch", "PATCH", WS, {"name": "Renamed"}),
    Route("workspace.delete", "DELETE", WS, ok=204),
    Route("workspace_members.list", "GET", WS + "/members"),
    Route("workspace_member.put", "PUT", WS + "/members/{user_id}", {"role": "viewer"}),
    Route("workspace_member.delete", "DELETE", WS + "/members/{user_id}", ok=204),
    Route("documents.list", "GET", WS + "/documents", vendor="content"),
    Route("document.create", "POST", WS + "/documents", {"title": "New", "body": "text"}, ok=201),
    Route("document.get", "GET", DOC, vendor="content"),
    Route("document.patch", "PATCH", DOC, {"title": "Changed"}),
    Route("document.delete", "DELETE", DOC, ok=204),
    Route("document.copy", "POST", DOC + "/copy", {"target_workspace_id": "{target_workspace_id}"}, ok=201),
    Route("files.list", "GET", WS + "/files", vendor="content"),
    Route("file.upload", "POST", WS + "/files", query=KNOWLEDGE, files=UPLOAD, ok=201),
    Route("file.get", "GET", FILE, vendor="content"),
    Route("file.content", "GET", FILE + "/content", vendor="content"),
    Route("file.delete", "DELETE", FILE, ok=204),
    Route("credentials.list", "GET", WS + "/credentials"),
    Route("credential.create", "POST", WS + "/credentials", {"provider": "openai", "label": "probe", "secret": new_secret()}, ok=201),
    Route("credential.get", "GET", CRED),
    Route("credential.put", "PUT", CRED, {"secret": new_secret()}),
    Route("credential.delete", "DELETE", CRED, ok=204),
    Route("audit_events.list", "GET", T + "/audit-events", admin_only=True, vendor="audit"),
    Route("audit_events.export", "GET", T + "/audit-events/export", admin_only=True, vendor="audit"),
    # Vendor access: how a tenant comes to hold a grant is `grant_vendor_access` below.
    Route("vendor_grants.list", "GET", T + "/vendor-access-grants", admin_only=True, vendor="staff"),
    Route("vendor_access.request", "POST", T + "/vendor-access-requests",
          {"reason": "probe", "scope": "content", "workspace_id": "{workspace_id}", "hours": 1}, vendor_only=True, vendor="staff", ok=201),
    Route("vendor_grant.approve", "POST", GRANT + "/approve", admin_only=True),
    Route("vendor_grant.deny", "POST", GRANT + "/deny", admin_only=True),
    Route("vendor_grant.revoke", "DELETE", GRANT, admin_only=True),
]

ROUTE_SLOTS = [pytest.param(r, s, id=f"{r.name}[{s}]") for r in ROUTES for s in r.slots]
# The people of tenant A the table is sent as: a customer_admin, and an owner of both workspaces who
# is no customer_admin.
CALLERS = ["customer_admin", "workspace_owner"]
# Slots whose ids belong to one workspace: the same-tenant test sends workspace 1's there.
WORKSPACE_SLOTS = ("workspace_id", "target_workspace_id", "document_id", "file_id", "credential_id")
SAME_TENANT_SLOTS = [pytest.param(r, s, id=f"{r.name}[{s}]") for r in ROUTES for s in r.slots if s in WORKSPACE_SLOTS]


@dataclass
class Tenant:
    """A tenant made through the API: an id for every slot (workspace 0's content), and the people the
    tests act as; with `add_workspace_1`, workspace 1's content and an owner of workspace 0 only."""

    world: World
    callers: dict[str, Caller]
    ids: dict[str, uuid.UUID]
    ws1: dict[str, uuid.UUID] = field(default_factory=dict)

    def ids_with(self, slot: str, value: uuid.UUID | str) -> dict[str, Any]:
        return {**self.ids, slot: value}


def _created(r: httpx.Response) -> uuid.UUID:
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


def _doc(world: World, ws: int, title: str) -> uuid.UUID:
    return _created(world.admin.post(f"{world.ws(ws)}/documents", json={"title": title, "body": f"{title} body"}))


def _file(world: World, ws: int) -> uuid.UUID:
    return _created(world.admin.post(f"{world.ws(ws)}/files", params=KNOWLEDGE, files=UPLOAD))


def _credential(world: World, ws: int) -> uuid.UUID:
    body = {"provider": "openai", "label": f"key-{ws}", "secret": new_secret()}
    return _created(world.admin.post(f"{world.ws(ws)}/credentials", json=body))


def grant_vendor_access(world: World, vendor: Caller, scope: str = "audit", approve: bool = True) -> uuid.UUID:
    body = {"reason": "support ticket", "scope": scope, "hours": 2}
    if scope == "content":
        body["workspace_id"] = str(world.workspaces[0])
    gid = _created(vendor.post(f"{world.base}/vendor-access-requests", json=body))
    if approve:
        r = world.admin.post(f"{world.base}/vendor-access-grants/{gid}/approve")
        assert r.status_code == 200, r.text
    return gid


def build_tenant(client: TestClient, idp: TestIdP, vendor: Caller, label: str) -> Tenant:
    world = make_world(client, idp, vendor)
    # Owner of workspace 0, and of workspace 1 too so that a copy between them is legitimate.
    owner = world.join(workspace=0, role="owner")
    r = world.admin.put(f"{world.ws(1)}/members/{world.user_ids[owner.subject]}", json={"role": "owner"})
    assert r.status_code == 200, r.text
    viewer = world.join(workspace=0, role="viewer")
    ids = {"tenant_id": world.tenant_id, "workspace_id": world.workspaces[0], "user_id": world.user_ids[viewer.subject],
           "document_id": _doc(world, 0, f"{label} secret"), "target_workspace_id": world.workspaces[1],
           "file_id": _file(world, 0), "credential_id": _credential(world, 0), "grant_id": grant_vendor_access(world, vendor, "audit", approve=False)}
    for kind in ("audit", "metadata", "content"):
        grant_vendor_access(world, vendor, kind)
    return Tenant(world, {"customer_admin": world.admin, "workspace_owner": owner}, ids)


def add_workspace_1(tenant: Tenant, label: str) -> Tenant:
    world = tenant.world
    tenant.callers["ws0_owner"] = world.join(workspace=0, role="owner")
    tenant.ws1 = {"workspace_id": world.workspaces[1], "target_workspace_id": world.workspaces[1],
                  "document_id": _doc(world, 1, f"{label} other secret"), "file_id": _file(world, 1),
                  "credential_id": _credential(world, 1)}
    return tenant


@pytest.fixture(scope="module")
def kek(data_keys: DataKeys) -> Iterator[None]:
    """Credentials need a key-encryption key and the session's app has none configured: the
    session's data keys (tests/support/keys.py), installed the way tests/credentials does it, and
    whatever was installed put back."""
    before = datakeys.current()
    datakeys.install(data_keys)
    yield
    datakeys.install(before)


@dataclass
class Pair:
    """Tenant A (the caller's), tenant B (the victim), and C, a tenant that granted vendor staff nothing."""

    a: Tenant
    b: Tenant
    c: World


@pytest.fixture(scope="module")
def pair(client: TestClient, idp: TestIdP, vendor: Caller, kek: None) -> Pair:
    """Shared by every test that changes nothing when the app is right; what does change gets `fresh_a`."""
    a, b = (add_workspace_1(build_tenant(client, idp, vendor, label), label) for label in "AB")
    return Pair(a, b, make_world(client, idp, vendor))


@pytest.fixture
def fresh_a(client: TestClient, idp: TestIdP, vendor: Caller, kek: None) -> Tenant:
    return build_tenant(client, idp, vendor, "A")


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    body = r.json()
    assert body["status"] == status
    return body


def has_standing(route: Route, who: str) -> bool:
    """Whether `who` may call the route at all inside their own tenant."""
    return not route.vendor_only and (who == "customer_admin" or not route.admin_only)


def expected_status(route: Route, slot: str, who: str) -> int:
    """404 whenever the caller could otherwise act; 403 only where they hold no standing at all."""
    return 404 if slot == "tenant_id" or has_standing(route, who) else 403


def snapshot(world: World) -> dict[str, Any]:
    """Everything the tenant's own customer_admin can read about it, but its audit trail."""
    admin = world.admin

    def get(url: str) -> Any:
        r = admin.get(url)
        assert r.status_code == 200, (url, r.text)
        return r.json()

    data: dict[str, Any] = {"tenant": get(world.base), "members": get(f"{world.base}/members"),
                            "workspaces": get(f"{world.base}/workspaces"), "grants": get(f"{world.base}/vendor-access-grants")}
    for i, _ in enumerate(world.workspaces):
        data[f"ws{i}"] = get(world.ws(i))
        data[f"ws{i}.members"] = get(f"{world.ws(i)}/members")
        data[f"ws{i}.documents"] = get(f"{world.ws(i)}/documents?limit=100")
        data[f"ws{i}.files"] = get(f"{world.ws(i)}/files?limit=100")
        data[f"ws{i}.credentials"] = get(f"{world.ws(i)}/credentials")
    return data


@pytest.fixture(scope="module")
def superuser(database):
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()


def audit_count(engine, tenant_id: uuid.UUID) -> int:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from audit_events where tenant_id = :t"), {"t": tenant_id}).scalar_one()


def _path_params(path: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(path) if name]


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, included routers flattened."""
    return {(m, ctx.path) for ctx in iter_route_contexts(app.routes) if ctx.path for m in ctx.methods or () if m != "HEAD"}


def body_ids(app: FastAPI) -> dict[tuple[str, str], set[str]]:
    """The uuid fields (top level) of each route's JSON body, from the app's OpenAPI document."""
    schema = app.openapi()
    components = schema.get("components", {}).get("schemas", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return components[ref.rsplit("/", 1)[1]] if ref else node

    def is_uuid(node: dict[str, Any]) -> bool:
        node = resolve(node)
        inner = [*node.get("anyOf", []), *node.get("oneOf", []), *([node["items"]] if "items" in node else [])]
        return node.get("format") == "uuid" or any(is_uuid(n) for n in inner)

    found: dict[tuple[str, str], set[str]] = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            json_body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if json_body is None:
                continue
            fields = {name for name, node in resolve(json_body["schema"]).get("properties", {}).items() if is_uuid(node)}
            if fields:
                found[(method.upper(), path)] = fields
    return found


def routes_taking_ids(app: FastAPI) -> set[tuple[str, str]]:
    in_path = {(m, p) for m, p in served_routes(app) if any(name.endswith("_id") for name in _path_params(p))}
    return in_path | set(body_ids(app))


class TestRouteTable:
    """The table is the app's: every route that takes an id has its line, and every line a route."""

    def test_every_route_taking_an_id_has_a_line(self, client: TestClient) -> None:
        missing = sorted(routes_taking_ids(client.app) - {r.key for r in ROUTES}, key=lambda k: (k[1], k[0]))
        lines = "\n".join(f'    Route("<name>", "{m}", "{p.removeprefix(API)}", ...),' for m, p in missing)
        assert not missing, f"routes that take an id and have no line in ROUTES; add:\n{lines}"

    def test_every_line_is_a_served_route(self, client: TestClient) -> None:
        gone = [f"{r.name}: {r.method} {r.path}" for r in ROUTES if r.key not in served_routes(client.app)]
        assert not gone, f"lines in ROUTES whose route the app no longer serves: {gone}"

    def test_every_id_in_a_body_is_a_slot(self, client: TestClient) -> None:
        lines = {r.key: r for r in ROUTES}
        unslotted = {}
        for key, fields in body_ids(client.app).items():
            if (line := lines.get(key)) is not None and (left := fields - {line.body_slot(s) for s in line.slots}):
                unslotted[line.name] = sorted(left)
        assert not unslotted, f'body fields that hold ids and are no "{{slot}}" in their line: {unslotted}'

    def test_one_line_per_route_and_an_id_for_every_slot(self, pair: Pair) -> None:
        assert len({r.key for r in ROUTES}) == len({r.name for r in ROUTES}) == len(ROUTES)
        assert {s for r in ROUTES for s in r.slots} <= set(pair.a.ids) == set(pair.b.ids)


class TestRouteTableIsLive:
    """Guards the table itself: with A's own ids each route works, so a 404 below means "no such id"."""

    @pytest.mark.parametrize("who", CALLERS)
    @pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
    def test_legitimate_request_succeeds(self, request: pytest.FixtureRequest, pair: Pair, route: Route, who: str) -> None:
        # Reads and refusals go to the shared tenant A; what may change it gets an A of its own.
        changes = route.method != "GET" and has_standing(route, who)
        a = request.getfixturevalue("fresh_a") if changes else pair.a
        r = route.send(a.callers[who], a.ids)
        if has_standing(route, who):
            assert r.status_code == route.ok, r.text
        else:
            assert_problem(r, 403)


class TestForeignIdIsIndistinguishableFromRandom:
    @pytest.mark.parametrize("who", CALLERS)
    @pytest.mark.parametrize(("route", "slot"), ROUTE_SLOTS)
    def test_same_answer_as_a_random_uuid(self, pair: Pair, route: Route, slot: str, who: str) -> None:
        caller = pair.a.callers[who]
        foreign = route.send(caller, pair.a.ids_with(slot, pair.b.ids[slot]))
        random = route.send(caller, pair.a.ids_with(slot, uuid.uuid4()))
        status = expected_status(route, slot, who)
        assert_problem(foreign, status)
        assert_problem(random, status)
        assert foreign.content == random.content
        assert foreign.headers["content-type"] == random.headers["content-type"]


class TestForeignIdsChangeNothing:
    @pytest.mark.parametrize("who", CALLERS)
    def test_tenant_b_reads_the_same_data_afterwards(self, pair: Pair, superuser, who: str) -> None:
        b = pair.b.world
        before, audit_before = snapshot(b), audit_count(superuser, b.tenant_id)
        caller = pair.a.callers[who]
        for route in ROUTES:
            for slot in route.slots:
                r = route.send(caller, pair.a.ids_with(slot, pair.b.ids[slot]))
                assert r.status_code in (403, 404), (route.name, slot, r.text)
            # Every id of B at once, too.
            r = route.send(caller, pair.b.ids)
            assert r.status_code == 404, (route.name, r.text)
        assert snapshot(b) == before
        assert audit_count(superuser, b.tenant_id) == audit_before
        # B's documents are still B's: their titles never reached A's listing.
        a = pair.a.world
        listing = a.admin.get(f"{a.ws(0)}/documents?limit=100").json()["items"]
        assert {d["title"] for d in listing} == {"A secret"}


class TestOtherWorkspaceOfSameTenant:
    """An owner of workspace 0 (no customer_admin) sees workspace 1 of their own tenant as nonexistent,
    and workspace 1's content too, also through workspace 0 where RLS hides it."""

    @pytest.mark.parametrize(("route", "slot"), SAME_TENANT_SLOTS)
    def test_same_answer_as_a_random_uuid(self, pair: Pair, route: Route, slot: str) -> None:
        a = pair.a
        caller = a.callers["ws0_owner"]
        other = route.send(caller, a.ids_with(slot, a.ws1[slot]))
        random = route.send(caller, a.ids_with(slot, uuid.uuid4()))
        status = expected_status(route, slot, "ws0_owner")
        assert_problem(other, status)
        assert_problem(random, status)
        assert other.content == random.content

    def test_workspace_1_is_untouched(self, pair: Pair) -> None:
        a = pair.a
        before = snapshot(a.world)
        for route in ROUTES:
            for slot in (s for s in route.slots if s in WORKSPACE_SLOTS):
                r = route.send(a.callers["ws0_owner"], a.ids_with(slot, a.ws1[slot]))
                assert r.status_code in (403, 404), (route.name, slot, r.text)
        assert snapshot(a.world) == before
        doc = a.world.admin.get(f"{a.world.ws(1)}/documents/{a.ws1['document_id']}")
        assert doc.status_code == 200 and doc.json()["title"] == "A other secret"

    def test_workspace_list_shows_only_own_workspace(self, pair: Pair) -> None:
        r = pair.a.callers["ws0_owner"].get(f"{pair.a.world.base}/workspaces")
        assert r.status_code == 200, r.text
        assert [w["id"] for w in r.json()] == [str(pair.a.world.workspaces[0])]


class TestInternalAdmin:
    """Vendor staff: tenant metadata yes, what a tenant granted them yes, tenant content no."""

    def test_lists_tenants(self, vendor: Caller, pair: Pair) -> None:
        r = vendor.get(f"{API}/tenants")
        assert r.status_code == 200, r.text
        ids = {t["id"] for t in r.json()}
        assert {str(pair.a.world.tenant_id), str(pair.b.world.tenant_id)} <= ids
        assert set(r.json()[0]) == {"id", "name", "slug", "created_at"}

    def test_reads_tenant_metadata(self, vendor: Caller, pair: Pair) -> None:
        r = vendor.get(pair.a.world.base)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == str(pair.a.world.tenant_id)
        assert r.json()["slug"].startswith("t-")
        assert set(r.json()) == {"id", "name", "slug", "created_at"}

    def test_random_tenant_metadata_is_404(self, vendor: Caller) -> None:
        assert_problem(vendor.get(f"{API}/tenants/{uuid.uuid4()}"), 404)

    @pytest.mark.parametrize("route", [r for r in ROUTES if r.vendor is None], ids=lambda r: r.name)
    def test_content_routes_are_404(self, vendor: Caller, pair: Pair, route: Route) -> None:
        r = route.send(vendor, pair.a.ids)
        random = route.send(vendor, pair.a.ids_with("tenant_id", uuid.uuid4()))
        assert_problem(r, 404)
        assert r.content == random.content

    @pytest.mark.parametrize("route", [r for r in ROUTES if r.vendor is not None], ids=lambda r: r.name)
    def test_what_they_may_do(self, vendor: Caller, pair: Pair, route: Route) -> None:
        r = route.send(vendor, pair.a.ids)
        assert r.status_code == route.ok, r.text
        # In tenant A, with A's ids only: B's id in any other slot is no different from a random one.
        for slot in (s for s in route.slots if s != "tenant_id"):
            foreign = route.send(vendor, pair.a.ids_with(slot, pair.b.ids[slot]))
            random = route.send(vendor, pair.a.ids_with(slot, uuid.uuid4()))
            assert_problem(foreign, 404)
            assert foreign.content == random.content, slot

    @pytest.mark.parametrize("route", [r for r in ROUTES if r.vendor not in (None, "staff")], ids=lambda r: r.name)
    def test_a_grant_opens_its_own_tenant_only(self, vendor: Caller, pair: Pair, route: Route) -> None:
        other = route.send(vendor, pair.a.ids_with("tenant_id", pair.c.tenant_id))
        random = route.send(vendor, pair.a.ids_with("tenant_id", uuid.uuid4()))
        assert_problem(other, 404)
        assert other.content == random.content

    def test_content_untouched(self, vendor: Caller, pair: Pair) -> None:
        before = snapshot(pair.a.world)
        for route in ROUTES:
            if route.vendor is None:
                assert route.send(vendor, pair.a.ids).status_code == 404, route.name
        assert snapshot(pair.a.world) == before


class TestMalformedIds:
    @pytest.mark.parametrize(("route", "slot"), ROUTE_SLOTS)
    def test_422_problem(self, pair: Pair, route: Route, slot: str) -> None:
        a = pair.a
        bad = "not-a-uuid-SENTINEL"
        r = route.send(a.world.admin, a.ids_with(slot, bad))
        body = assert_problem(r, 422)
        locs = [e["loc"] for e in body["errors"]]
        key = route.body_slot(slot)
        assert (["body", key] if key else ["path", slot]) in locs, locs
        assert bad not in r.text
        # Nothing happened: A's own document is still there under its title.
        doc = a.world.admin.get(f"{a.world.ws(0)}/documents/{a.ids['document_id']}")
        assert doc.status_code == 200 and doc.json()["title"] == "A secret"
