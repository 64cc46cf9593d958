"""The OpenAPI document's error responses are what the app really sends (app/openapi.py)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
import pytest

from app.config import Settings
from app.main import create_app
from app.problems import MAX_ERRORS, PROBLEM_JSON
from tests.support.api import World

W = "/api/v1/tenants/{tenant_id}/workspaces/{workspace_id}"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(Settings(_env_file=None, database_url="postgresql://app@localhost/none")).openapi()


def validator(document: dict[str, Any], path: str, method: str, status: int) -> jsonschema_rs.Validator:
    """A validator for the declared problem+json body of one response (components inlined for $ref)."""
    schema = document["paths"][path][method]["responses"][str(status)]["content"][PROBLEM_JSON]["schema"]
    return jsonschema_rs.validator_for({**copy.deepcopy(schema), "components": document["components"]})


def statuses(document: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(s) for s in document["paths"][path][method]["responses"]}


def test_the_422_the_app_sends_is_the_declared_one(document, world: World):
    # A real refusal: two fields of the wrong type.
    r = world.admin.post(f"{world.ws(0)}/documents", json={"title": 5, "body": ["x"]})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM_JSON
    declared = validator(document, W + "/documents", "post", 422)
    assert declared.is_valid(r.json()), list(declared.iter_errors(r.json()))
    # The schema is not a rubber stamp: FastAPI's old shape, or too many errors, do not pass.
    assert not declared.is_valid({"detail": [{"loc": ["body"], "msg": "x", "type": "x"}]})
    too_many = {**r.json(), "errors": [r.json()["errors"][0]] * (MAX_ERRORS + 1)}
    assert not declared.is_valid(too_many)


def test_the_other_refusals_are_the_declared_ones(document, world: World, other_world: World, client):
    cases = [
        # another tenant's workspace: 404
        (world.admin.get(f"{other_world.ws(0)}/documents"), W + "/documents", "get", 404),
        # a workspace slug taken: 409
        (world.admin.post(f"{world.base}/workspaces", json={"name": "again", "slug": "brand-a"}),
         "/api/v1/tenants/{tenant_id}/workspaces", "post", 409),
        # no token: 401 with its challenge
        (client.get(f"{world.ws(0)}/documents"), W + "/documents", "get", 401),
        # a repeated query parameter: 400 naming it
        (world.admin.get(f"{world.ws(0)}/documents?limit=1&limit=2"), W + "/documents", "get", 400),
    ]
    for response, path, method, status in cases:
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
        declared = validator(document, path, method, status)
        assert declared.is_valid(response.json()), (status, list(declared.iter_errors(response.json())))
    assert cases[2][0].headers["www-authenticate"] == 'Bearer realm="palisade"'


def test_fastapis_validation_error_is_gone(document):
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)


def test_statuses_follow_what_each_route_is(document):
    # Vendor-only, no tenant in the path, no parameters: 403 for others, never 404 or 422.
    assert statuses(document, "/api/v1/tenants", "get") == {200, 400, 401, 403, 429, 500, 503}
    # Conflicts only where the code raises one: a slug or label taken, an Idempotency-Key's original
    # response still being stored (every creating POST); never on editing a document.
    assert 409 in statuses(document, "/api/v1/tenants/{tenant_id}/workspaces", "post")
    assert 409 in statuses(document, W + "/credentials", "post")
    assert 409 in statuses(document, W + "/documents", "post")
    assert 409 not in statuses(document, W + "/documents/{document_id}", "patch")
    # Any workspace member may read: no 403 there; writing needs member or above: 403.
    assert 403 not in statuses(document, W + "/documents", "get")
    assert 403 in statuses(document, W + "/documents", "post")
    # Only uploads take bodies that are not JSON.
    assert 415 in statuses(document, W + "/files", "post")
    assert 415 not in statuses(document, W + "/documents", "post")
    # A body may be too large; a GET has none declared.
    assert 413 in statuses(document, W + "/documents", "post") and 413 not in statuses(document, W + "/documents", "get")
    limited = document["paths"][W + "/documents"]["get"]["responses"]
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"} <= set(limited["429"]["headers"])
    assert limited["401"]["headers"]["WWW-Authenticate"]["required"] is True


def test_a_date_time_is_text_not_a_number(world: World):
    # The document says date-time; pydantic alone took `0.5` as seconds since 1970 (found by schemathesis).
    refused = world.admin.get(f"{world.base}/audit-events?until=0.5")
    assert refused.status_code == 422
    assert [e["loc"] for e in refused.json()["errors"]] == [["query", "until"]]
    assert world.admin.get(f"{world.base}/audit-events?until=2030-01-01T00:00:00Z").status_code == 200
