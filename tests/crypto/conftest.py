"""Fixtures: a test PKI, a fake Entra ID and a fake Key Vault on 127.0.0.1, and a workload identity."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.identity import WorkloadIdentityCredential

from tests.crypto.keyvault_server import ClusterIssuer, FakeEntraID, FakeKeyVault, FederatedCredential, TestPKI


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def cluster() -> ClusterIssuer:
    return ClusterIssuer()


@pytest.fixture
def entra(pki: TestPKI) -> Iterator[FakeEntraID]:
    authority = FakeEntraID(pki)
    yield authority
    authority.stop()


@pytest.fixture
def vault(pki: TestPKI, entra: FakeEntraID) -> Iterator[FakeKeyVault]:
    server = FakeKeyVault(pki, entra)
    yield server
    server.stop()


@pytest.fixture
def client_options(pki: TestPKI) -> dict[str, Any]:
    """What a client needs for the local vault: trust the test CA, and accept a challenge whose
    resource (vault.azure.net) cannot match a loopback address."""
    return {"connection_verify": str(pki.ca_file), "verify_challenge_resource": False}


@dataclass
class Workload:
    """A pod's workload identity: the app registration's client id and the projected token file."""

    tenant_id: str
    client_id: str
    token_file: Path
    authority: str
    ca_file: Path

    def credential(self, **kwargs: Any) -> WorkloadIdentityCredential:
        return WorkloadIdentityCredential(
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            token_file_path=str(self.token_file),
            authority=self.authority,
            connection_verify=str(self.ca_file),
            **kwargs,
        )


@pytest.fixture
def make_workload(entra: FakeEntraID, cluster: ClusterIssuer, pki: TestPKI, tmp_path: Path) -> Callable[..., Workload]:
    def make(service_account: str = "palisade-api", *, registered_subject: str | None = None) -> Workload:
        subject = f"system:serviceaccount:palisade:{service_account}"
        client_id = str(uuid.uuid4())
        entra.register_workload(
            client_id, FederatedCredential(cluster.issuer, registered_subject or subject, cluster.public_key)
        )
        token_file = tmp_path / f"{service_account}-azure-identity-token"
        token_file.write_text(cluster.federated_token(subject))
        return Workload(entra.tenant_id, client_id, token_file, entra.url, pki.ca_file)

    return make


@pytest.fixture
def workload(make_workload: Callable[..., Workload]) -> Workload:
    return make_workload()
