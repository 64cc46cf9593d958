"""Entra ID sign-in to PostgreSQL: each new connection of the process sends a managed identity's
token, from the real azure-identity client, to a PostgreSQL that admits nothing else
(tests/support/entra_postgres.py), through the platform's identity endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, pool, text

from app.config import Mode, Settings
from app.db import entra
from app.db.session import make_engine
from tests.crypto.keyvault_server import ContainerAppsIdentityEndpoint, FakeEntraID, TestPKI
from tests.support.entra_postgres import EntraPostgres

CLIENT_ID, OBJECT_ID = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestPKI, FakeEntraID]]:
    pki = TestPKI.create(tmp_path_factory.mktemp("pki"))
    authority = FakeEntraID(pki)
    yield pki, authority
    authority.stop()


@pytest.fixture(scope="module")
def server(authority) -> Iterator[EntraPostgres]:
    pki, entra_id = authority
    postgres = EntraPostgres.start(entra_id, pki=pki)
    postgres.create_principal("api_role", OBJECT_ID)
    yield postgres
    postgres.stop()


@pytest.fixture
def signed_in(authority, monkeypatch: pytest.MonkeyPatch) -> Iterator[ContainerAppsIdentityEndpoint]:
    """This process as a container with one managed identity, Entra sign-in configured."""
    endpoint = ContainerAppsIdentityEndpoint(authority[1], {CLIENT_ID: OBJECT_ID})
    for name, value in endpoint.environment.items():
        monkeypatch.setenv(name, value)
    entra.configure(Settings(_env_file=None, mode=Mode.production, database_auth="entra",
                             issuers=[{"issuer": "https://idp.example", "audience": "a"}],
                             secret_provider="files", secrets_dir="/nonexistent",
                             azure_managed_identity_client_id=CLIENT_ID))
    yield endpoint
    entra.install(None)
    endpoint.stop()


def test_every_new_connection_signs_in_with_a_token(server: EntraPostgres, signed_in):
    engine = make_engine(server.url("api_role", "postgres"), pool_size=2)
    with engine.connect() as one, engine.connect() as two:
        assert one.scalar(text("select current_user")) == two.scalar(text("select current_user")) == "api_role"
    engine.dispose()
    # A plain engine (doctor's, the migrations') signs in the same way.
    other = create_engine(server.url("api_role", "postgres"), poolclass=pool.NullPool)
    with other.connect() as conn:
        assert conn.scalar(text("select 1")) == 1
    other.dispose()
    # The token came from the platform's endpoint, for PostgreSQL's resource, as this identity.
    assert (CLIENT_ID, "https://ossrdbms-aad.database.windows.net") in signed_in.requests
    assert server.auth_log_lines()[-1].endswith("user=api_role accepted")


def test_a_url_with_a_password_is_refused(server: EntraPostgres, signed_in):
    with_password = server.url("api_role", "postgres").replace("api_role@", "api_role:secret@")
    engine = create_engine(with_password, poolclass=pool.NullPool)
    with pytest.raises(ValueError, match="must carry no password"):
        engine.connect()
    engine.dispose()


def test_without_the_setting_no_token_is_sent(server: EntraPostgres):
    entra.install(None)
    engine = create_engine(server.url("api_role", "postgres"), poolclass=pool.NullPool)
    with pytest.raises(Exception, match="no password supplied"):
        engine.connect()
    engine.dispose()
