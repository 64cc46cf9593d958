"""Fixtures: a real key-encryption key in owner-only files, the app with the credentials routes, and
service-level access (a workspace scope on an app-role session) for what has no route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from app.crypto import datakeys
from app.crypto.datakeys import DataKeys
from app.db.session import make_engine, make_session_factory
from app.main import create_app
from tests.credentials.helpers import Api
from tests.support.api import World, settings_for


@pytest.fixture(scope="session")
def cred_client(database, idp, data_keys: DataKeys) -> Iterator[TestClient]:
    """The real app, with these tests' data keys installed after startup."""
    app = create_app(settings_for(database, idp))
    with TestClient(app, raise_server_exceptions=False, client=("203.0.113.7", 50000)) as client:
        # After startup: whatever the lifespan installs, these tests use their own KEK directory.
        datakeys.install(data_keys)
        yield client
    datakeys.install(None)


@pytest.fixture(scope="session")
def sessions(database) -> Iterator[sessionmaker[Session]]:
    """App-role sessions (RLS applies), as the CLI and pipelines get them."""
    engine = make_engine(database.app_url, pool_size=5)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def superuser(database) -> Iterator[Engine]:
    """The database superuser: reads and rewrites rows past RLS, like an attacker with a dump or disk access."""
    engine = create_engine(database.superuser_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def api(cred_client: TestClient, world: World) -> Api:
    return Api(cred_client, world)


@pytest.fixture
def other_api(cred_client: TestClient, other_world: World) -> Api:
    return Api(cred_client, other_world)


