"""The real app with a lower knowledge-file cap, and a world on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from app.main import create_app
from tests.support.api import World, make_world, person, settings_for

MiB = 1024 * 1024
# The knowledge cap in these tests; brand assets stay at their own 2 MiB. The 413 tests check the
# problem's detail and the audit row: those refusals are this domain's, not the edge's body cap.
UPLOAD_MAX_BYTES = 3 * MiB


@pytest.fixture(scope="session")
def files_client(database, idp) -> Iterator[TestClient]:
    app = create_app(settings_for(database, idp, upload_max_bytes=UPLOAD_MAX_BYTES))
    with TestClient(app, raise_server_exceptions=False, client=("203.0.113.7", 50000)) as client:
        yield client


@pytest.fixture
def world(files_client, idp) -> World:
    return make_world(files_client, idp, person(files_client, idp, roles=["internal_admin"]))


@pytest.fixture
def other_world(files_client, idp) -> World:
    return make_world(files_client, idp, person(files_client, idp, roles=["internal_admin"]))


@pytest.fixture(scope="session")
def superuser(database):
    """Reads rows as the database superuser: the audit trail and stored bytes, bypassing RLS."""
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()
