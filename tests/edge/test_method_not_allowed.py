"""A 405 names every method the path accepts, not just the first route's.

Before: `Allow` listed one method (the first route matching the path), so a client was told
`GET` where `GET, PATCH, DELETE` were all served.
"""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

T = f"/api/v1/tenants/{uuid.uuid4()}"
W = f"{T}/workspaces/{uuid.uuid4()}"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", f"{T}/workspaces", {"GET", "POST"}),
    ("PUT", f"{W}/documents/{uuid.uuid4()}", {"GET", "PATCH", "DELETE"}),
    ("POST", f"{W}/credentials/{uuid.uuid4()}", {"GET", "PUT", "DELETE"}),
])
def test_allow_lists_every_method(client: TestClient, method: str, path: str, allowed: set[str]) -> None:
    r = client.request(method, path)
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/problem+json")
    assert {m.strip() for m in r.headers["allow"].split(",")} - {"HEAD"} == allowed
