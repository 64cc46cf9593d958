"""The deploy contract: the real image, started with exactly what the Pulumi program gives it.

The program is run under Pulumi's mocks (in its own environment, `tests/infra/render_contract.py`)
and what it declares for the migration job and the API container app is taken as it is: image
arguments, environment, identities, Key Vault references, role assignments and the database URLs.
Then the real image (tests/support/image.py: built, signed and verified in this suite) runs with
that environment, as Azure Container Apps would run it:

- Azure's part is played by local servers the real SDKs talk to: Entra ID and Key Vault
  (tests/crypto/keyvault_server.py) at the vault's own host name and port 443, Azure RBAC on
  the vault built from the program's role assignments (one secret or key per assignment), and
  the platform's identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER) serving only the
  identities the program assigns to that workload;
- PostgreSQL is real and, as Azure Database for PostgreSQL with Entra authentication only, takes
  no password: each role signs in with its identity's token (tests/support/entra_postgres.py);
  the migration job's identity is the server's Entra administrator, as the program declares, and
  the vault holds the program's own database URLs with only the host and port changed;
- the OpenID Provider is real, over https (production refuses anything else), and is the
  stack's configured issuer;
- the only additions to the environment are the platform's (IDENTITY_ENDPOINT,
  IDENTITY_HEADER) and the test CA's bundle (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, mounted read-only),
  standing for the public CAs that sign the real endpoints' certificates.

Any drift between the program and the app (a secret name, a setting, an identity, a grant, a
command, a URL) fails here: the job must migrate, the API must pass doctor, refuse other host
names and serve an authenticated request, and neither may read what the program does not grant it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.crypto.keyvault_server import ContainerAppsIdentityEndpoint, FakeEntraID, FakeKeyVault, TestPKI
from tests.support.database import ROOT
from tests.support.entra_postgres import EntraPostgres
from tests.support.idp import TestIdP, start_idp
from tests.support.image import Container, Image, ensure_image
from tests.support.image import run as run_image

AUDIENCE = "palisade-api"
APP_HOST = "palisade.example.com"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
# The data actions of the Key Vault built-in roles the program grants (Azure's role definitions;
# Crypto User's, as far as the vault's key operations go).
ROLE_ACTIONS = {
    SECRETS_USER: {"secrets/getSecret/action"},
    CRYPTO_SERVICE_ENCRYPTION_USER: {"keys/read", "keys/wrapKey/action", "keys/unwrapKey/action"},
    CRYPTO_USER: {"keys/read", "keys/sign/action", "keys/wrapKey/action", "keys/unwrapKey/action"},
}
INFRA_PYTHON = ROOT / ".venv-infra" / "bin" / "python"
CA_IN_CONTAINER = "/etc/palisade-test/ca-bundle.pem"


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
    """One container of a workload as the program declares it, run from the image."""

    label: str
    args: list[str]
    env: dict[str, str]
    identities: dict[str, str]  # client id -> principal id
    image: Image
    add_hosts: dict[str, str] = field(default_factory=dict)
    volumes: list[tuple[str, str, str]] = field(default_factory=list)

    def run(self, platform: dict[str, str], args: list[str] | None = None, timeout: float = 180) -> Container:
        return run_image(self.image, args or self.args, {**platform, **self.env}, add_hosts=self.add_hosts,
                         volumes=self.volumes, timeout=timeout)

    def start(self, platform: dict[str, str]) -> Container:
        return run_image(self.image, self.args, {**platform, **self.env}, add_hosts=self.add_hosts,
                         volumes=self.volumes, detach=True, name=f"palisade-contract-{self.label}-{secrets.token_hex(3)}")


def workload(contract: dict[str, Any], label: str, container: str, image: Image, **how: Any) -> Workload:
    declared = contract["workloads"][label]
    spec = declared["containers"][container]
    assert spec["command"] is None, "the image's entrypoint is `palisade`: workloads pass arguments only"
    assert spec["image"] == contract["workloads"]["api"]["containers"]["api"]["image"], "one image for the job and the API"
    identities = {contract["identities"][i]["client_id"]: contract["identities"][i]["principal_id"]
                  for i in declared["identities"]}
    return Workload(label, spec["args"], spec["env"], identities, image, **how)


def rbac_from(contract: dict[str, Any]):
    """Azure RBAC on the vault, exactly as the program's role assignments grant it."""
    grants: set[tuple[str, str, str]] = set()
    for assignment in contract["role_assignments"]:
        if assignment["in_storage"] is not None:
            continue  # the checkpoint container's: the vault has no part in it
        inside = assignment["in_vault"]
        assert inside is not None, f"a role assignment outside the vault and the storage account: {assignment['scope']}"
        for action in ROLE_ACTIONS.get(assignment["role"], set()):
            grants.add((assignment["principal_id"], action, inside))

    def authorize(principal: str, action: str, target: str) -> bool:
        # A vault-wide assignment would cover every secret and key; the program makes none.
        return (principal, action, target) in grants or (principal, action, "") in grants

    return authorize


def test_the_app_takes_the_programs_checkpoint_store_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The API's settings as the program declares them, read by the app's own Settings, select the
    azure-blob sink at the program's account and container and the program's signing key, as the
    identity the program grants on exactly those two (no root, no image: the settings seam alone)."""
    from app.audit.anchor import AzureBlobSink, KeyVaultSigner, signer_from_settings, sink_from_settings
    from app.config import Settings

    contract = render_contract({}, tmp_path)
    env = contract["workloads"]["api"]["containers"]["api"]["env"]
    for name in [n for n in os.environ if n.startswith(("PALISADE_", "AZURE_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    sink, signer = sink_from_settings(settings), signer_from_settings(settings)
    store, key = contract["checkpoint_store"], contract["checkpoint_key"]
    assert isinstance(sink, AzureBlobSink) and sink.url == f"{store['account_url'].rstrip('/')}/{store['container']}"
    assert isinstance(signer, KeyVaultSigner) and signer.key_url == key["uri"]

    identity = next(i for i in contract["identities"].values()
                    if i["client_id"] == settings.azure_managed_identity_client_id)
    assert identity["name"] == "id-palisade-app"
    assert any(contract["identities"][i] == identity for i in contract["workloads"]["api"]["identities"])
    granted = {(a["role"], a["in_vault"] or a["in_storage"]) for a in contract["role_assignments"]
               if a["principal_id"] == identity["principal_id"]}
    assert (STORAGE_BLOB_DATA_CONTRIBUTOR, f"blobServices/default/containers/{store['container']}") in granted
    assert (CRYPTO_USER, f"keys/{key['name']}") in granted


@dataclass
class Deployment:
    contract: dict[str, Any]
    vault: FakeKeyVault
    entra: FakeEntraID
    idp: TestIdP
    postgres: EntraPostgres
    migrate: Workload
    api: Workload
    migrate_platform: dict[str, str]
    api_platform: dict[str, str]
    api_container: Container
    migrate_result: Container
    api_identity: ContainerAppsIdentityEndpoint
    base_url: str


def _wait_ready(container: Container, url: str, postgres: EntraPostgres, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if container.returncode is not None:
                pytest.fail(f"the API exited with {container.returncode}:\n{container.logs()[-3000:]}\n"
                            f"PostgreSQL sign-ins:\n" + "\n".join(postgres.auth_log_lines()[-10:]))
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    pytest.fail(f"the API did not become ready:\n{container.logs()[-4000:]}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.fail("the deploy-contract test runs as root: it binds the vault to port 443 and runs containers")
    image = ensure_image()
    workdir = tmp_path_factory.mktemp("azure")

    # The stack: the example's, with this run's issuer (https).
    probe_pki = TestPKI.create(workdir / "probe")
    idp = start_idp(audience=AUDIENCE, workdir=workdir / "idp",
                    tls={"cert": str(probe_pki.cert_file), "key": str(probe_pki.key_file), "ca": str(probe_pki.ca_file)})
    contract = render_contract({
        "palisade:issuers": json.dumps([{"issuer": idp.issuer, "audience": AUDIENCE, "rolesClaim": "realm_access.roles",
                                         "vendor": True, "vendorClaim": "groups", "vendorClaimValue": "palisade-support"}]),
    }, workdir)
    vault_host = urlsplit(contract["vault"]["uri"]).hostname
    assert vault_host and vault_host.endswith(".vault.azure.net")

    # Azure: the authority, the vault at its own name (port 443), RBAC from the program.
    pki = TestPKI.create(workdir / "pki", dns_names=(vault_host,))
    bundle = workdir / "ca-bundle.pem"
    bundle.write_bytes(pki.ca_file.read_bytes() + probe_pki.ca_file.read_bytes())
    bundle.chmod(0o644)
    entra = FakeEntraID(pki)
    vault = FakeKeyVault(pki, entra, port=443, name=contract["vault"]["uri"])
    vault.authorize = rbac_from(contract)
    postgres = EntraPostgres.start(entra, pki=pki)

    principal_of = {i["name"]: i["principal_id"] for i in contract["identities"].values()}
    admin_url, app_url = contract["database_urls"]["admin-database-url"], contract["database_urls"]["database-url"]
    database = urlsplit(admin_url).path.lstrip("/")
    # What the program declares: the migration job's identity is the server's Entra administrator.
    postgres.add_entra_administrator(urlsplit(admin_url).username, principal_of["id-palisade-migrator"], owns=(database,))
    here = f"{contract['database_host']}:5432"
    values = {name: url.replace(here, f"127.0.0.1:{postgres.port}") for name, url in contract["database_urls"].items()}
    assert app_url.replace(here, "") != app_url and ":@" not in app_url + admin_url
    for name in contract["stored_secrets"]:
        vault.set_secret(name, values.get(name, f"{name}-{secrets.token_hex(16)}"))
    vault.create_key(contract["kek"]["name"], key_ops=["wrapKey", "unwrapKey"])
    vault.create_key(contract["checkpoint_key"]["name"], kty="EC")

    how = {"add_hosts": {vault_host: "127.0.0.1"}, "volumes": [(str(bundle), CA_IN_CONTAINER, "ro")]}
    migrate = workload(contract, "migrate", "migrate", image, **how)
    api = workload(contract, "api", "api", image, **how)
    ca_env = {"REQUESTS_CA_BUNDLE": CA_IN_CONTAINER, "SSL_CERT_FILE": CA_IN_CONTAINER}
    migrate_identity = ContainerAppsIdentityEndpoint(entra, migrate.identities)
    api_identity = ContainerAppsIdentityEndpoint(entra, api.identities)
    migrate_platform = {**migrate_identity.environment, **ca_env}
    api_platform = {**api_identity.environment, **ca_env}

    # Container Apps resolves each Key Vault reference with its identity before a revision starts.
    for label in ("api", "migrate"):
        for name, ref in contract["workloads"][label]["secrets"].items():
            principal = contract["identities"][ref["identity"]]["principal_id"]
            assert vault.authorize(principal, "secrets/getSecret/action", f"secrets/{name}"), (
                f"{label}: the platform could not resolve {name!r} with {contract['identities'][ref['identity']]['name']}")

    api_container = None
    try:
        # Migrations before traffic: the job first, then the API.
        migrate_result = migrate.run(migrate_platform)
        api_container = api.start(api_platform)
        port = api.args[api.args.index("--port") + 1]
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(api_container, f"{base_url}/health/ready", postgres)
        yield Deployment(contract, vault, entra, idp, postgres, migrate, api, migrate_platform, api_platform,
                         api_container, migrate_result, api_identity, base_url)
    finally:
        if api_container is not None:
            api_container.stop()
        for server in (migrate_identity, api_identity, vault, entra):
            server.stop()
        idp.stop()
        postgres.stop()


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


def create_tenant(d: Deployment, name: str, slug: str, *, admin: str) -> str:
    """`palisade tenant create` in the API's container (an operator's first step); the tenant's id."""
    created = d.api.run(d.api_platform, ["tenant", "create", "--name", name, "--slug", slug,
                                         "--admin-issuer", d.idp.issuer, "--admin-subject", admin])
    assert created.returncode == 0, created.logs()[-4000:]
    return created.logs().strip().splitlines()[-1]


def names(d: Deployment) -> dict[str, str]:
    return {i["principal_id"]: i["name"] for i in d.contract["identities"].values()}


class TestTheJobThenTheApi:
    def test_the_migration_job_migrates_with_its_own_identity(self, deployment: Deployment):
        result = deployment.migrate_result
        assert result.returncode == 0, result.logs()[-4000:]
        assert "migrations applied" in result.logs()
        reads = {(who, secret) for who, secret, status in secret_reads(deployment, names(deployment)) if status == 200}
        assert ("id-palisade-migrator", "admin-database-url") in reads

    def test_the_api_passes_doctor_with_its_identity(self, deployment: Deployment):
        result = deployment.api.run(deployment.api_platform, ["doctor"])
        assert result.returncode == 0, result.logs()[-4000:]
        assert "checks passed" in result.logs()

    def test_the_api_serves_an_authenticated_request(self, deployment: Deployment):
        d = deployment
        tenant_id = create_tenant(d, "Contoso", "contoso", admin="it-admin")
        token = d.idp.token("it-admin")
        r = httpx.get(f"{d.base_url}/api/v1/tenants/{tenant_id}", headers={"Host": APP_HOST, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["slug"] == "contoso"
        unauthenticated = httpx.get(f"{d.base_url}/api/v1/tenants/{tenant_id}", headers={"Host": APP_HOST})
        assert unauthenticated.status_code == 401

    def test_a_provider_credential_is_sealed_with_the_key_vault_kek(self, deployment: Deployment):
        # The KEK the program creates and grants the API identity (wrap/unwrap) seals tenant data keys.
        d = deployment
        tenant = create_tenant(d, "Northwind", "northwind", admin="nw-admin")
        with httpx.Client(base_url=d.base_url, headers={"Host": APP_HOST,
                                                        "Authorization": f"Bearer {d.idp.token('nw-admin')}"}) as c:
            workspace = c.post(f"/api/v1/tenants/{tenant}/workspaces", json={"name": "Brand A", "slug": "brand-a"})
            assert workspace.status_code == 201, workspace.text
            base = f"/api/v1/tenants/{tenant}/workspaces/{workspace.json()['id']}/credentials"
            stored = c.post(base, json={"provider": "anthropic", "label": "prod", "secret": "sk-ant-" + "x" * 40})
            assert stored.status_code == 201, stored.text
            assert "x" * 10 not in stored.text
            assert c.get(f"{base}/{stored.json()['id']}").status_code == 200
        # The key the program names, read with the API identity's grant (the SDK wraps with its public
        # half locally; unwrapping, which only the vault can do, uses the same grant).
        kek = d.contract["kek"]["name"]
        calls = [ex for ex in d.vault.exchanges if ex.path.startswith(f"/keys/{kek}")]
        assert calls and {ex.status for ex in calls} <= {200, 401}, sorted({ex.status for ex in calls})
        # The operator's rotation: a new KEK version in the vault (its rotation policy's job), then
        # `keys rotate` in the API's container unwraps (in the vault) and wraps under the new one.
        d.vault.create_key(kek, key_ops=["wrapKey", "unwrapKey"])
        rotated = d.api.run(d.api_platform, ["keys", "rotate", "--tenant", tenant])
        assert rotated.returncode == 0, rotated.logs()[-4000:]
        assert "1 tenant(s) re-wrapped" in rotated.logs()
        unwraps = [ex for ex in d.vault.exchanges if ex.path.startswith(f"/keys/{kek}/") and ex.path.endswith("/unwrapkey")]
        assert unwraps and unwraps[-1].status == 200

    def test_vendor_staff_come_only_from_the_issuer_the_stack_marks(self, deployment: Deployment):
        # The stack's issuer entry, as the program renders it, is what the app trusts for vendor staff.
        d = deployment
        staff = {"realm_access": {"roles": ["internal_admin"]}, "groups": ["palisade-support"]}
        with httpx.Client(base_url=d.base_url, headers={"Host": APP_HOST}) as c:
            ok = c.get("/api/v1/tenants", headers={"Authorization": f"Bearer {d.idp.token('vendor-1', claims=staff)}"})
            assert ok.status_code == 200, ok.text
            outsider = {"realm_access": {"roles": ["internal_admin"]}, "groups": ["customers"]}
            refused = c.get("/api/v1/tenants", headers={"Authorization": f"Bearer {d.idp.token('vendor-2', claims=outsider)}"})
            assert refused.status_code == 401

    def test_the_api_refuses_any_other_host_name(self, deployment: Deployment):
        d = deployment
        token = d.idp.token("it-admin")
        # The app's Azure default name (what a public ingress would have answered to), an address.
        for host in ("ca-palisade-api.happy-sky-0123abcd.westeurope.azurecontainerapps.io", "127.0.0.1"):
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
        assert "admin-database-url" in result.logs() and "403" in result.logs()

    def test_the_job_identity_is_not_offered_to_the_api(self, deployment: Deployment):
        # The platform hands a container only its workload's identities.
        d = deployment
        migrator = next(i["client_id"] for i in d.contract["identities"].values() if i["name"] == "id-palisade-migrator")
        r = httpx.get(d.api_identity.url, params={"api-version": "2019-08-01", "resource": "https://vault.azure.net",
                                                  "client_id": migrator},
                      headers={"X-IDENTITY-HEADER": d.api_identity.header})
        assert r.status_code == 400

    def test_each_role_signs_in_with_its_own_identitys_token_and_no_password(self, deployment: Deployment):
        d = deployment
        principal_of = {i["name"]: i["principal_id"] for i in d.contract["identities"].values()}
        log = "\n".join(d.postgres.auth_log_lines())
        assert "user=palisade_app accepted" in log and "user=id-palisade-migrator accepted" in log
        # The app role is mapped to the API identity's object id, not the job's.
        rows = d.postgres.superuser_execute("SELECT object_id FROM pgaadauth.principals WHERE rolname = 'palisade_app'")
        assert rows == [(principal_of["id-palisade-app"],)]
        attributes = d.postgres.superuser_execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolinherit FROM pg_roles WHERE rolname = 'palisade_app'")
        assert attributes == [(False, False, False, False, False)]

    def test_the_serving_api_is_undisturbed_while_the_job_runs_again(self, deployment: Deployment):
        # What every upgrade does: the job runs while the current revision serves. This release has
        # no pending migration, so this exercises the job's sign-in, locks and role handling against
        # live traffic (not an expand step): no request may fail and the app role must still sign in.
        d = deployment
        tenant = create_tenant(d, "Fabrikam", "fabrikam", admin="ops-admin")
        token = d.idp.token("ops-admin")
        statuses: list[int] = []
        done = threading.Event()

        def traffic() -> None:
            # Paced, and at most 80 in all, under the per-user limit of 100 a minute.
            with httpx.Client(base_url=d.base_url, headers={"Host": APP_HOST, "Authorization": f"Bearer {token}"}) as c:
                while not done.wait(0.3) and len(statuses) < 80:
                    statuses.append(c.get(f"/api/v1/tenants/{tenant}").status_code)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            again = d.migrate.run(d.migrate_platform)
        finally:
            done.set()
            worker.join(timeout=30)
        assert again.returncode == 0, again.logs()[-4000:]
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        fresh = d.api.run(d.api_platform, ["doctor"])  # a new connection as the app role, after the run
        assert fresh.returncode == 0, fresh.logs()[-4000:]

    def test_the_sidecars_references_resolve_with_their_identities(self, deployment: Deployment):
        refs = deployment.contract["workloads"]["api"]["secrets"]
        assert set(refs) >= {"cloudflared-tunnel-token"}
        env = deployment.contract["workloads"]["api"]["containers"]["cloudflared"]["secret_env"]
        assert env == {"TUNNEL_TOKEN": "cloudflared-tunnel-token"}
