"""The Entra PostgreSQL stand-in lets in a managed identity's token for its own role, and nothing else."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.crypto.keyvault_server import VAULT_RESOURCE, FakeEntraID, TestPKI
from tests.support.entra_postgres import (
    OSSRDBMS_RESOURCE,
    PAM_DIR,
    EntraPostgres,
    _TcpTlsCluster,
    entra_postgres_fixture,
)

APP_ROLE = "palisade_app"
APP_CLIENT, APP_OID = str(uuid.uuid4()), str(uuid.uuid4())
JOB_ROLE = "palisade_migrate"
JOB_CLIENT, JOB_OID = str(uuid.uuid4()), str(uuid.uuid4())
ADMIN_ROLE = "palisade_entra_admin"
ADMIN_CLIENT, ADMIN_OID = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture(scope="module")
def entra_authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEntraID]:
    authority = FakeEntraID(TestPKI.create(tmp_path_factory.mktemp("entra-pki")))
    yield authority
    authority.stop()


entra_pg = entra_postgres_fixture(authority="entra_authority", scope="module")


@pytest.fixture(scope="module")
def principals(entra_pg: EntraPostgres) -> EntraPostgres:
    entra_pg.add_entra_administrator(ADMIN_ROLE, ADMIN_OID, owns=["palisade"])
    entra_pg.create_principal(APP_ROLE, APP_OID)
    entra_pg.create_principal(JOB_ROLE, JOB_OID)
    return entra_pg


def _token(authority: FakeEntraID, client: str, oid: str, resource: str = OSSRDBMS_RESOURCE) -> str:
    return authority.managed_identity_token(client, oid, resource)


def _resign(token: str, key: rsa.RSAPrivateKey, **changes: object) -> str:
    """The same token with *changes* to its claims, signed by *key* under the same key id.

    With the authority's own signing key (`FakeEntraID._key`) this is a token Entra could have
    issued with those claims (expired, another tenant, an `amr`); with any other key, a forgery.
    """
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": jwt.get_unverified_header(token)["kid"]})


def _connect(pg: EntraPostgres, role: str, password: str | None, database: str = "postgres", **options: str):
    kwargs: dict[str, str] = dict(options)
    if password is not None:
        kwargs["password"] = password
    return psycopg.connect(pg.url(role, database), connect_timeout=20, **kwargs)


def _refused(pg: EntraPostgres, role: str, password: str | None, reason: str | None, **options: str) -> str:
    """Assert the login fails; with *reason*, that the verifier refused it for that reason."""
    before = len(pg.auth_log_lines())
    with pytest.raises(psycopg.OperationalError) as caught:
        _connect(pg, role, password, **options).close()
    verdicts = pg.auth_log_lines()[before:]
    if reason is None:
        assert verdicts == [], "the verifier must not even be asked"
    else:
        assert len(verdicts) == 1 and "refused" in verdicts[0] and reason in verdicts[0], verdicts
    return str(caught.value)


def test_role_created_with_the_function_logs_in_with_its_managed_identity_token(
    principals: EntraPostgres, entra_authority: FakeEntraID
) -> None:
    with _connect(principals, APP_ROLE, _token(entra_authority, APP_CLIENT, APP_OID)) as conn:
        who = conn.execute("select current_user, r.rolsuper, r.rolbypassrls, r.rolcreaterole, s.version "
                           "from pg_roles r, pg_stat_ssl s where r.rolname = current_user "
                           "and s.pid = pg_backend_pid()").fetchone()
    assert who == (APP_ROLE, False, False, False, "TLSv1.3")
    assert principals.superuser_execute("select rolpassword is null from pg_authid where rolname = %s", APP_ROLE) == [(True,)]
    assert principals.auth_log_lines()[-1].endswith(f"user={APP_ROLE} accepted")


def test_expired_token_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    now = int(time.time())
    token = _resign(_token(entra_authority, APP_CLIENT, APP_OID), entra_authority._key,
                    iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    assert "PAM authentication failed" in _refused(principals, APP_ROLE, token, "token expired")


def test_token_for_another_audience_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    vault_token = _token(entra_authority, APP_CLIENT, APP_OID, VAULT_RESOURCE)
    _refused(principals, APP_ROLE, vault_token, "audience")


def test_token_signed_by_another_key_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _refused(principals, APP_ROLE, _resign(_token(entra_authority, APP_CLIENT, APP_OID), stranger), "bad signature")


def test_token_of_another_tenant_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    token = _resign(_token(entra_authority, APP_CLIENT, APP_OID), entra_authority._key, tid=str(uuid.uuid4()))
    _refused(principals, APP_ROLE, token, "tenant")


def test_valid_token_of_another_identity_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    job_token = _token(entra_authority, JOB_CLIENT, JOB_OID)
    _refused(principals, APP_ROLE, job_token, f"token oid {JOB_OID} is not the object id")
    with _connect(principals, JOB_ROLE, job_token) as conn:  # the same token is good for its own role
        assert conn.execute("select current_user").fetchone() == (JOB_ROLE,)


def test_role_not_created_by_the_function_cannot_log_in(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    principals.superuser_execute("create role plain_login login")
    _refused(principals, "plain_login", _token(entra_authority, APP_CLIENT, APP_OID), "not mapped")


def test_dropped_and_recreated_role_loses_its_mapping(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    oid = str(uuid.uuid4())
    principals.create_principal("short_lived", oid)
    principals.superuser_execute("drop role short_lived")
    principals.superuser_execute("create role short_lived login")
    _refused(principals, "short_lived", _token(entra_authority, str(uuid.uuid4()), oid), "not mapped")


def test_mfa_principal_needs_an_mfa_token(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    oid = str(uuid.uuid4())
    principals.create_principal("mfa_person", oid, object_type="user", is_mfa=True)
    token = _token(entra_authority, str(uuid.uuid4()), oid)
    _refused(principals, "mfa_person", token, "requires MFA")
    with _connect(principals, "mfa_person", _resign(token, entra_authority._key, amr=["pwd", "mfa"])) as conn:
        assert conn.execute("select current_user").fetchone() == ("mfa_person",)


def test_password_is_refused_even_when_the_role_has_one(principals: EntraPostgres) -> None:
    principals.superuser_execute("create role with_password login password 'correct horse'")
    _refused(principals, "with_password", "correct horse", "not a JWS")
    _refused(principals, APP_ROLE, "correct horse", "not a JWS")


def test_no_password_is_refused(principals: EntraPostgres) -> None:
    message = _refused(principals, APP_ROLE, None, None)
    assert "no password supplied" in message


def test_tls_below_1_3_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    token = _token(entra_authority, APP_CLIENT, APP_OID)
    _refused(principals, APP_ROLE, token, None, ssl_max_protocol_version="TLSv1.2")


def test_plaintext_tcp_is_refused(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    token = _token(entra_authority, APP_CLIENT, APP_OID)
    url = f"postgresql://{APP_ROLE}@{principals.host}:{principals.port}/postgres?sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection.*no encryption"):
        psycopg.connect(url, password=token, connect_timeout=20).close()


def test_entra_admin_owns_the_app_database_and_creates_principals(
    principals: EntraPostgres, entra_authority: FakeEntraID
) -> None:
    admin_token = _token(entra_authority, ADMIN_CLIENT, ADMIN_OID)
    with _connect(principals, ADMIN_ROLE, admin_token, "palisade") as conn:
        assert conn.execute("select pg_get_userbyid(datdba) from pg_database "
                            "where datname = current_database()").fetchone() == (ADMIN_ROLE,)
        assert conn.execute("select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles "
                            "where rolname = current_user").fetchone() == (False, False, True, True)
    worker_oid = str(uuid.uuid4())
    # As on Azure, the function is called in the `postgres` database.
    with _connect(principals, ADMIN_ROLE, admin_token, "postgres") as conn:
        created = conn.execute("select * from pgaadauth_create_principal_with_oid('palisade_worker', %s, 'service', "
                               "false, false)", (worker_oid,)).fetchone()
    assert created == ("Created role for palisade_worker",)
    with _connect(principals, "palisade_worker", _token(entra_authority, str(uuid.uuid4()), worker_oid)) as conn:
        assert conn.execute("select current_user").fetchone() == ("palisade_worker",)


def test_only_an_entra_admin_may_call_the_function(principals: EntraPostgres, entra_authority: FakeEntraID) -> None:
    with _connect(principals, APP_ROLE, _token(entra_authority, APP_CLIENT, APP_OID)) as conn:
        conn.autocommit = True
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Microsoft Entra administrator"):
            conn.execute("select pgaadauth_create_principal_with_oid('intruder', %s, 'service', true, false)",
                         (str(uuid.uuid4()),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from pgaadauth.principals")


def test_pam_service_is_the_only_tcp_door(principals: EntraPostgres) -> None:
    hba = [line.split() for line in (principals.cluster.data_dir / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    tcp = [line for line in hba if line[0].startswith("host") and line[-1] != "reject"]
    assert tcp == [["hostssl", "all", "all", "127.0.0.1/32", "pam", f"pamservice={principals.pam_service}"]]
    assert "pam_entra_token.so" in principals.pam_file.read_text()


def test_a_failed_start_leaves_no_pam_service_behind(entra_authority: FakeEntraID, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Path, Path]] = []

    def broken_start(cluster: _TcpTlsCluster) -> str:
        pam_file = PAM_DIR / cluster.pam_service
        assert pam_file.is_file()
        seen.append((pam_file, cluster.data_dir.parent))
        raise RuntimeError("initdb exploded")

    monkeypatch.setattr(_TcpTlsCluster, "start", broken_start)
    with pytest.raises(RuntimeError, match="initdb exploded"):
        EntraPostgres.start(entra_authority)
    [(pam_file, base)] = seen
    assert not pam_file.exists() and not base.exists()
