"""Azure Blob Storage on 127.0.0.1 for the test-suite: Azurite (npm, tests/azurite), over https, with
Entra ID bearer tokens, the platform identity that signs the app in to it, and a Key Vault.

- `start_azurite` runs Azurite's blob service (`--oauth basic`: it accepts bearer tokens, which it
  takes only over https, so it serves with a certificate of the test CA) on a free port.
- `azure_platform` (one per session): a token authority (`FakeEntraID`) and Azure Container Apps'
  identity endpoint (`ContainerAppsIdentityEndpoint`) handing the app's managed identity its
  tokens. The app signs in with the real azure-identity credential (`IDENTITY_ENDPOINT` /
  `IDENTITY_HEADER`, as on Container Apps), never with an account key.
- `blob_storage` (one per session): Azurite trusting that authority's tokens; `key_vault`: a
  Key Vault (tests/crypto/keyvault_server.py) trusting them too.

What Azurite does not do: it checks a bearer token's issuer, audience and lifetime but not its
signature (`basic`), has no Azure RBAC (any such token may write any container), and does not
enforce immutability policies. The tests' own view of the container (creating it, reading it back,
writing what an attacker would) uses Azurite's well-known development account key, here only.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.crypto.keyvault_server import ContainerAppsIdentityEndpoint, FakeEntraID, FakeKeyVault, TestPKI
from tests.support.idp import PORT_ATTEMPTS, STARTUP_TIMEOUT, _free_port, _terminate

AZURITE_DIR = Path(__file__).resolve().parents[1] / "azurite"
AZURITE_BLOB = AZURITE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
ACCOUNT = "devstoreaccount1"
# Azurite's published development account key: the tests' own access, never the app's.
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteStartupError(RuntimeError):
    """Azurite could not be started."""


@dataclass
class Azurite:
    process: subprocess.Popen
    account_url: str  # path-style, as Azurite serves: https://127.0.0.1:<port>/devstoreaccount1
    ca_file: Path

    def admin(self, container: str):
        """The test's own client for `container` (account key: Azurite's, for the test's side only)."""
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.storage.blob import ContainerClient

        return ContainerClient(self.account_url, container, credential=AzureNamedKeyCredential(ACCOUNT, DEV_ACCOUNT_KEY),
                               connection_verify=str(self.ca_file))

    def admin_sink(self, container: str):
        """The checkpoint sink over `container` as the test's side sees it (account key: see `admin`)."""
        from azure.core.credentials import AzureNamedKeyCredential

        from app.audit.anchor import AzureBlobSink

        return AzureBlobSink(self.account_url, container, AzureNamedKeyCredential(ACCOUNT, DEV_ACCOUNT_KEY),
                             connection_verify=str(self.ca_file))

    def stop(self) -> None:
        _terminate(self.process)


def start_azurite(*, workdir: Path, pki: TestPKI) -> Azurite:
    """Azurite's blob service on a free 127.0.0.1 port, https with the test CA's certificate, OAuth on."""
    if not AZURITE_BLOB.is_file():
        raise AzuriteStartupError(f"{AZURITE_DIR / 'node_modules'} is missing: run `npm ci --prefix tests/azurite`")
    node = shutil.which("node")
    if node is None:
        raise AzuriteStartupError("`node` is not on PATH; Azurite needs Node.js")
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        location = workdir / f"azurite-{port}"
        location.mkdir(parents=True)
        log = (workdir / f"azurite-{port}.log").open("wb")
        process = subprocess.Popen(
            [node, str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
             "--oauth", "basic", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
             # The SDK may speak a newer service version than this Azurite release knows.
             "--skipApiVersionCheck", "--disableTelemetry"],
            cwd=AZURITE_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        url = f"https://127.0.0.1:{port}/{ACCOUNT}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(timeout=2.0, verify=ssl.create_default_context(cafile=pki.ca_file)) as client:
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    client.get(url, params={"comp": "list"})  # any answer (403 without a token) means it serves
                    return Azurite(process, url, pki.ca_file)
                except httpx.TransportError:
                    time.sleep(0.2)
        _terminate(process)
        output = (workdir / f"azurite-{port}.log").read_text(errors="replace")
        if "EADDRINUSE" in output and attempt < PORT_ATTEMPTS:
            continue
        raise AzuriteStartupError(f"Azurite did not start on port {port}:\n{output[-2000:]}")
    raise AssertionError("unreachable")


@dataclass
class AzurePlatform:
    """The token authority and the platform identity endpoint handing the app's managed identity its tokens."""

    pki: TestPKI
    entra: FakeEntraID
    client_id: str  # the app's managed identity
    environment: dict[str, str]  # IDENTITY_ENDPOINT, IDENTITY_HEADER, and trust for the test CA


@pytest.fixture(scope="session")
def azure_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzurePlatform]:
    pki = TestPKI.create(tmp_path_factory.mktemp("azure-pki"))
    entra = FakeEntraID(pki)
    client_id = str(uuid.uuid4())
    identity = ContainerAppsIdentityEndpoint(entra, {client_id: str(uuid.uuid4())})
    try:
        yield AzurePlatform(pki, entra, client_id, {**identity.environment, "REQUESTS_CA_BUNDLE": str(pki.ca_file)})
    finally:
        identity.stop()
        entra.stop()


@dataclass
class BlobStorage:
    """Azurite plus the identity the app signs in with (client id) and the platform's environment."""

    azurite: Azurite
    client_id: str
    platform: dict[str, str]

    def new_container(self) -> str:
        name = f"checkpoints-{uuid.uuid4().hex[:12]}"
        with self.azurite.admin(name) as admin:
            admin.create_container()  # on Azure: the Pulumi program's (infra/palisade_infra/checkpoints.py)
        return name


@pytest.fixture(scope="session")
def blob_storage(azure_platform: AzurePlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobStorage]:
    azurite = start_azurite(workdir=tmp_path_factory.mktemp("azurite"), pki=azure_platform.pki)
    try:
        yield BlobStorage(azurite, azure_platform.client_id, azure_platform.environment)
    finally:
        azurite.stop()


@pytest.fixture
def key_vault(azure_platform: AzurePlatform) -> Iterator[FakeKeyVault]:
    """A Key Vault on loopback trusting the platform's token authority."""
    vault = FakeKeyVault(azure_platform.pki, azure_platform.entra)
    yield vault
    vault.stop()
