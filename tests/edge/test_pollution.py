"""HTTP parameter pollution: a query parameter given twice is refused before routing, auth or
validation, so no two readers (WAF, logs, app) can disagree about which copy counts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.edge.http import REPEATABLE_QUERY_PARAMS, ParameterPollutionMiddleware, repeated_query_params
from app.main import create_app
from tests.support.api import World, settings_for

PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def edge(database, idp) -> Iterator[TestClient]:
    settings = settings_for(database, idp)
    app: FastAPI = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def documents(edge: TestClient, world: World, query: str) -> httpx.Response:
    return edge.get(f"{world.ws(0)}/documents?{query}", headers={"Authorization": f"Bearer {world.admin.token}"})


def refused(r: httpx.Response, *names: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    body = r.json()
    assert body["status"] == 400
    assert [e["loc"] for e in body["errors"]] == [["query", n] for n in names]
    assert all(e["msg"] == "repeated" for e in body["errors"])
    return body


class TestRepeatedParameters:
    def test_single_parameter_is_fine(self, edge, world: World):
        r = documents(edge, world, "limit=1")
        assert r.status_code == 200, r.text

    def test_repeated_parameter_is_refused(self, edge, world: World):
        refused(documents(edge, world, "limit=1&limit=2"), "limit")

    def test_same_value_twice_is_still_refused(self, edge, world: World):
        refused(documents(edge, world, "limit=5&limit=5"), "limit")

    def test_every_repeated_name_is_named(self, edge, world: World):
        refused(documents(edge, world, "limit=1&cursor=a&limit=2&cursor=b"), "limit", "cursor")

    @pytest.mark.parametrize("query", [
        "limit=1&limit[]=2",  # PHP/Rails-style array next to the scalar
        "limit[]=1&limit[]=2",
        "limit[0]=1&limit[1]=2",
        "limit=1&%6Cimit=2",  # percent-encoded name
        "limit=1&limit",  # blank value
        "limit&limit=",
        "limit=1;x=y&limit=2",
    ])
    def test_disguised_repeats(self, edge, world: World, query):
        refused(documents(edge, world, query), "limit")

    def test_refused_before_auth(self, edge, world: World):
        r = edge.get(f"{world.ws(0)}/documents?limit=1&limit=2")  # no token: would be 401
        refused(r, "limit")

    def test_refused_before_routing(self, edge):
        refused(edge.get("/no/such/route?a=1&a=2"), "a")  # would be 404

    def test_other_parameters_are_untouched(self, edge, world: World):
        r = documents(edge, world, "limit=2&unrelated=1&LIMIT=3")  # different names (case matters to the app too)
        assert r.status_code == 200, r.text

    def test_name_is_not_reflected_at_length(self, edge):
        name = "x" * 500
        body = refused(edge.get(f"/health/live?{name}=1&{name}=2"), "x" * 64)
        assert "x" * 65 not in str(body)

    def test_refusal_carries_edge_headers(self, edge):
        r = edge.get("/health/live?a=1&a=2", headers={"X-Correlation-ID": "pollution-1"})
        assert r.status_code == 400
        assert r.headers["x-correlation-id"] == "pollution-1"
        assert r.headers["content-security-policy"].startswith("default-src 'none'")


class TestParsing:
    @pytest.mark.parametrize("query, expected", [
        (b"", []),
        (b"a=1&b=2", []),
        (b"a=1&a=2", ["a"]),
        (b"a=1&a[]=2&b=1&b=1", ["a", "b"]),
        (b"a=1&A=2", []),
        (b"a%5B%5D=1&a=2", ["a"]),
        (b"a=1%26a%3D2", []),  # an encoded "&" is data, not a separator
    ])
    def test_repeated_query_params(self, query, expected):
        assert repeated_query_params(query) == expected


class TestAllowList:
    def test_no_palisade_route_takes_a_repeated_parameter_today(self):
        assert REPEATABLE_QUERY_PARAMS == ()

    def test_a_declared_list_parameter_may_repeat_on_its_route_only(self):
        async def echo(request: Request) -> JSONResponse:
            return JSONResponse({"tag": request.query_params.getlist("tag")})

        app = Starlette(routes=[Route("/things/{thing_id}", echo), Route("/other", echo)])
        app.add_middleware(ParameterPollutionMiddleware, repeatable=[("/things/{thing_id}", "tag")])
        with TestClient(app) as c:
            assert c.get("/things/7?tag=a&tag=b").json() == {"tag": ["a", "b"]}
            assert c.get("/things/7?page=1&page=2").status_code == 400  # only the listed name
            assert c.get("/other?tag=a&tag=b").status_code == 400  # only on the listed route
            assert c.get("/things/7/sub?tag=a&tag=b").status_code == 400  # the exact route, no subtree
