"""The deploy contract: the real app, started with exactly what the Pulumi program gives it.

The program is run under Pulumi's mocks (in its own environment, `tests/infra/render_contract.py`)
and what it declares for the migration job and the API container app is taken as it is: image
arguments, environment, identities, Key Vault references, and every role assignment. Then the
real `palisade` runs with that environment, as Azure Container Apps would run it:

- Azure's part is played by local servers the real SDKs talk to: Entra ID and Key Vault
  (tests/crypto/keyvault_server.py) at the vault's own host name and port 443, Azure RBAC on
  the vault built from the program's role assignments (one secret or key per assignment), and
  the platform's identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER) serving only the
  identities the program assigns to that workload;
- PostgreSQL is real; the vault holds, under the names the program stores, the URLs of a
  database made here (the generated passwords and Azure host names cannot be reached);
- the OpenID Provider is real, over https (production refuses anything else), and is the
  stack's configured issuer;
- the only additions to the environment are the platform's (IDENTITY_ENDPOINT,
  IDENTITY_HEADER) and the test CA's bundle (REQUESTS_CA_BUNDLE, SSL_CERT_FILE), standing for the
  public CAs that sign the real endpoints' certificates.

Any drift between the program and the app (a secret name, a setting, an identity, a grant, a
command) fails here: the job must migrate, the API must pass doctor, refuse other host names and
serve an authenticated request, and neither may read what the program does not grant it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.crypto.keyvault_server import ContainerAppsIdentityEndpoint, FakeEntraID, FakeKeyVault, TestPKI
from tests.support.database import ROOT, superuser_execute
from tests.support.idp import TestIdP, start_idp

AUDIENCE = "palisade-api"
APP_HOST = "palisade.example.com"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
# The data actions of the two built-in roles the program grants (Azure's role definitions).
ROLE_ACTIONS = {
    SECRETS_USER: {"secrets/getSecret/action"},
    CRYPTO_SERVICE_ENCRYPTION_USER: {"keys/read", "keys/wrapKey/action", "keys/unwrapKey/action"},
}
INFRA_PYTHON = ROOT / ".venv-infra" / "bin" / "python"


def render_contract(overrides: dict[str, Any], workdir: Path) -> dict[str, Any]:
    if not INFRA_PYTHON.exists():
        pytest.fail(f"{INFRA_PYTHON} is missing: scripts/test creates it (scripts/venv .venv-infra infra/requirements.lock)")
    path = workdir / "overrides.json"
    path.write_text(json.dumps(overrides))
    result = subprocess.run([str(INFRA_PYTHON), str(ROOT / "tests" / "infra" / "render_contract.py"), str(path)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@dataclass
class Workload:
    """One container of a workload as the program declares it, and how to run it here."""

    label: str
    args: list[str]
    env: dict[str, str]
    identities: dict[str, str]  # client id -> principal id
    hosts_file: Path
    workdir: Path

    def command(self, args: list[str] | None = None) -> list[str]:
        # The image's entrypoint is `palisade`; the vault's host name resolves to this machine, as
        # Azure's private DNS zone resolves it to the private endpoint.
        palisade = str(Path(sys.executable).with_name("palisade"))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts_file), palisade, *(args or self.args)]

    def run(self, platform: dict[str, str], args: list[str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args), env=self._environment(platform), capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def start(self, platform: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        handle = log.open("wb")
        return subprocess.Popen(self.command(), env=self._environment(platform), stdout=handle, stderr=subprocess.STDOUT,
                                cwd=self.workdir, start_new_session=True)

    def _environment(self, platform: dict[str, str]) -> dict[str, str]:
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), "LANG": "C.UTF-8"}
        return {**base, **platform, **self.env}


def workload(contract: dict[str, Any], label: str, container: str, hosts_file: Path, workdir: Path) -> Workload:
    declared = contract["workloads"][label]
    spec = declared["containers"][container]
    assert spec["command"] is None, "the image's entrypoint is `palisade`: workloads pass arguments only"
    identities = {contract["identities"][i]["client_id"]: contract["identities"][i]["principal_id"]
                  for i in declared["identities"]}
    return Workload(label, spec["args"], spec["env"], identities, hosts_file, workdir)


def rbac_from(contract: dict[str, Any]):
    """Azure RBAC on the vault, exactly as the program's role assignments grant it."""
    grants: set[tuple[str, str, str]] = set()
    for assignment in contract["role_assignments"]:
        inside = assignment["in_vault"]
        assert inside is not None, f"a role assignment outside the vault: {assignment['scope']}"
        for action in ROLE_ACTIONS.get(assignment["role"], set()):
            grants.add((assignment["principal_id"], action, inside))

    def authorize(principal: str, action: str, target: str) -> bool:
        # A vault-wide assignment would cover every secret and key; the program makes none.
        return (principal, action, target) in grants or (principal, action, "") in grants

    return authorize


@dataclass
class Deployment:
    contract: dict[str, Any]
    vault: FakeKeyVault
    entra: FakeEntraID
    idp: TestIdP
    pki: TestPKI
    migrate: Workload
    api: Workload
    migrate_platform: dict[str, str]
    api_platform: dict[str, str]
    api_process: subprocess.Popen[bytes]
    api_log: Path
    migrate_result: subprocess.CompletedProcess[str]
    api_identity: ContainerAppsIdentityEndpoint
    base_url: str


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the API exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    pytest.fail(f"the API did not become ready:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def deployment(pg_superuser_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("the deploy-contract test runs as root with unshare (util-linux): it binds the vault to port 443 "
                    "and resolves its host name in a private mount namespace")
    workdir = tmp_path_factory.mktemp("azure")
    tag = secrets.token_hex(4)
    admin_role, app_role = f"palisade_c{tag}_admin", f"palisade_c{tag}_app"

    # The stack: the example's, with this run's issuer (https) and role names.
    probe_pki = TestPKI.create(workdir / "probe")
    idp = start_idp(audience=AUDIENCE, workdir=workdir / "idp",
                    tls={"cert": str(probe_pki.cert_file), "key": str(probe_pki.key_file), "ca": str(probe_pki.ca_file)})
    overrides = {
        "palisade:issuers": json.dumps([{"issuer": idp.issuer, "audience": AUDIENCE, "rolesClaim": "realm_access.roles"}]),
        "palisade:adminRole": admin_role,
        "palisade:appRole": app_role,
    }
    contract = render_contract(overrides, workdir)
    vault_host = urlsplit(contract["vault"]["uri"]).hostname
    assert vault_host and vault_host.endswith(".vault.azure.net")

    # Azure: the authority, the vault at its own name (port 443), RBAC from the program.
    pki = TestPKI.create(workdir / "pki", dns_names=(vault_host,))
    bundle = workdir / "ca-bundle.pem"
    bundle.write_bytes(pki.ca_file.read_bytes() + probe_pki.ca_file.read_bytes())
    entra = FakeEntraID(pki)
    vault = FakeKeyVault(pki, entra, port=443)
    vault.authorize = rbac_from(contract)
    hosts_file = workdir / "hosts"
    hosts_file.write_text(f"127.0.0.1 localhost {vault_host}\n::1 localhost\n")

    # PostgreSQL: what the managed service gives (an admin that owns the database and may create
    # roles, no superuser), and the two URLs the program stores, pointing here.
    database = f"palisade_c{tag}"
    admin_password, app_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    superuser_execute(pg_superuser_url,
                      f"CREATE ROLE {admin_role} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD '{admin_password}'",
                      f"CREATE DATABASE {database} OWNER {admin_role}")

    def url(role: str, password: str) -> str:
        return make_url(pg_superuser_url).set(drivername="postgresql", username=role, password=password,
                                             database=database).render_as_string(hide_password=False)

    values = {"admin-database-url": url(admin_role, admin_password), "database-url": url(app_role, app_password)}
    for name in contract["stored_secrets"]:
        vault.set_secret(name, values.get(name, f"{name}-{secrets.token_hex(16)}"))
    vault.create_key(contract["kek"]["name"], key_ops=["wrapKey", "unwrapKey"])

    migrate = workload(contract, "migrate", "migrate", hosts_file, workdir)
    api = workload(contract, "api", "api", hosts_file, workdir)
    ca_env = {"REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle)}
    migrate_identity = ContainerAppsIdentityEndpoint(entra, migrate.identities)
    api_identity = ContainerAppsIdentityEndpoint(entra, api.identities)
    migrate_platform = {**migrate_identity.environment, **ca_env}
    api_platform = {**api_identity.environment, **ca_env}

    # Container Apps resolves each Key Vault reference with its identity before a revision starts.
    for label in ("api", "migrate"):
        declared = contract["workloads"][label]
        for name, ref in declared["secrets"].items():
            principal = contract["identities"][ref["identity"]]["principal_id"]
            assert vault.authorize(principal, "secrets/getSecret/action", f"secrets/{name}"), (
                f"{label}: the platform could not resolve {name!r} with {contract['identities'][ref['identity']]['name']}")

    api_process = None
    try:
        # Migrations before traffic: the job first, then the API.
        migrate_result = migrate.run(migrate_platform)
        log = workdir / "api.log"
        api_process = api.start(api_platform, log)
        port = api.args[api.args.index("--port") + 1]
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(api_process, f"{base_url}/health/ready", log)
        yield Deployment(contract, vault, entra, idp, pki, migrate, api, migrate_platform, api_platform, api_process, log,
                         migrate_result, api_identity, base_url)
    finally:
        if api_process is not None and api_process.poll() is None:
            os.killpg(api_process.pid, signal.SIGTERM)
            try:
                api_process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(api_process.pid, signal.SIGKILL)
        for server in (migrate_identity, api_identity, vault, entra):
            server.stop()
        idp.stop()
        superuser_execute(pg_superuser_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
                          f"DROP ROLE IF EXISTS {app_role}", f"DROP ROLE IF EXISTS {admin_role}")


def secret_reads(d: Deployment, principal_of: dict[str, str]) -> list[tuple[str, str, int]]:
    """(identity name, secret, status) of every secret read the vault saw."""
    import jwt

    out = []
    for ex in d.vault.exchanges:
        if not ex.path.startswith("/secrets/") or "authorization" not in ex.headers:
            continue
        claims = jwt.decode(ex.headers["authorization"].split(" ", 1)[1], options={"verify_signature": False})
        out.append((principal_of.get(claims.get("oid"), "?"), ex.path.split("/")[2], ex.status))
    return out


def names(d: Deployment) -> dict[str, str]:
    return {i["principal_id"]: i["name"] for i in d.contract["identities"].values()}


class TestTheJobThenTheApi:
    def test_the_migration_job_migrates_with_its_own_identity(self, deployment: Deployment):
        result = deployment.migrate_result
        assert result.returncode == 0, result.stderr[-4000:]
        assert "migrations applied" in result.stdout
        reads = {(who, secret) for who, secret, status in secret_reads(deployment, names(deployment)) if status == 200}
        assert ("id-palisade-migrator", "admin-database-url") in reads

    def test_the_api_passes_doctor_with_its_identity(self, deployment: Deployment):
        result = deployment.api.run(deployment.api_platform, ["doctor"])
        assert result.returncode == 0, result.stderr[-4000:]
        assert "checks passed" in result.stdout

    def test_the_api_serves_an_authenticated_request(self, deployment: Deployment):
        d = deployment
        created = d.api.run(d.api_platform, ["tenant", "create", "--name", "Contoso", "--slug", "contoso",
                                             "--admin-issuer", d.idp.issuer, "--admin-subject", "it-admin"])
        assert created.returncode == 0, created.stderr[-4000:]
        tenant_id = created.stdout.strip()
        token = d.idp.token("it-admin")
        r = httpx.get(f"{d.base_url}/api/v1/tenants/{tenant_id}", headers={"Host": APP_HOST, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["slug"] == "contoso"
        unauthenticated = httpx.get(f"{d.base_url}/api/v1/tenants/{tenant_id}", headers={"Host": APP_HOST})
        assert unauthenticated.status_code == 401

    def test_the_api_refuses_any_other_host_name(self, deployment: Deployment):
        d = deployment
        token = d.idp.token("it-admin")
        default_name = f"ca-palisade-api.{d.contract['outputs'].get('appUrl', '')}"
        for host in ("ca-palisade-api.happy-sky-0123abcd.westeurope.azurecontainerapps.io", "127.0.0.1", default_name):
            r = httpx.get(f"{d.base_url}/api/v1/tenants", headers={"Host": host, "Authorization": f"Bearer {token}"})
            assert r.status_code == 421, (host, r.status_code)

    def test_the_api_never_asks_for_the_schema_owners_url(self, deployment: Deployment):
        reads = secret_reads(deployment, names(deployment))
        assert not [r for r in reads if r[0] == "id-palisade-app" and r[1] == "admin-database-url"]
        assert {(who, s) for who, s, status in reads if status == 200} >= {("id-palisade-app", "database-url"),
                                                                        ("id-palisade-app", "turnstile-secret")}

    def test_the_api_identity_cannot_migrate(self, deployment: Deployment):
        # Even run by hand in the API's container, `migrate` is refused the schema owner's URL.
        d = deployment
        result = d.api.run(d.api_platform, ["migrate"])
        assert result.returncode == 1
        assert "admin-database-url" in result.stderr and "403" in result.stderr
        assert "postgresql://" not in result.stderr + result.stdout

    def test_the_job_identity_is_not_offered_to_the_api(self, deployment: Deployment):
        # The platform hands a container only its workload's identities.
        d = deployment
        migrator = next(i["client_id"] for i in d.contract["identities"].values() if i["name"] == "id-palisade-migrator")
        r = httpx.get(d.api_identity.url, params={"api-version": "2019-08-01", "resource": "https://vault.azure.net",
                                                  "client_id": migrator},
                      headers={"X-IDENTITY-HEADER": d.api_identity.header})
        assert r.status_code == 400

    def test_the_sidecars_references_resolve_with_their_identities(self, deployment: Deployment):
        refs = deployment.contract["workloads"]["api"]["secrets"]
        assert set(refs) >= {"cloudflared-tunnel-token"}
        env = deployment.contract["workloads"]["api"]["containers"]["cloudflared"]["secret_env"]
        assert env == {"TUNNEL_TOKEN": "cloudflared-tunnel-token"}
