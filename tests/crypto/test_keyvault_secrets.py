"""KeyVaultSecrets through the whole chain, with the real azure-identity and azure-keyvault-secrets clients:
Key Vault's bearer challenge -> a token from the (local) Entra ID for the workload identity's
federated token -> the secret."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.keyvault.secrets import SecretClient

from app.crypto.secrets import (
    KeyVaultSecrets,
    MissingSecret,
    SecretProvider,
    SecretProviderError,
    azure_credential,
    provider_from_settings,
)
from tests.crypto.conftest import Workload
from tests.crypto.keyvault_server import JWT_BEARER, VAULT_RESOURCE, FakeEntraID, FakeKeyVault

VALUE = "0x4AAAAAAA-turnstile-Zq9-secret"


def test_secret_through_challenge_workload_identity_and_token(
    vault: FakeKeyVault, entra: FakeEntraID, workload: Workload, client_options: dict[str, Any]
) -> None:
    vault.set_secret("turnstile-secret", VALUE)
    provider = KeyVaultSecrets(vault.url, workload.credential(), **client_options)
    assert isinstance(provider, SecretProvider)

    secret = provider.get("turnstile-secret")
    assert secret.reveal() == VALUE
    assert VALUE not in repr(secret)

    # 1. The first request carries no token and draws the challenge.
    first, second = vault.exchanges[:2]
    assert "authorization" not in first.headers
    assert first.status == 401
    assert first.path == "/secrets/turnstile-secret/"
    # 2. The credential asked the authority named by the challenge's tenant, presenting the
    #    federated token from the projected file as its client assertion.
    [request] = entra.token_requests
    assert request.tenant == entra.tenant_id and request.status == 200
    assert request.form["client_assertion"] == workload.token_file.read_text()
    assert request.form["client_assertion_type"] == JWT_BEARER
    assert request.form["client_id"] == workload.client_id
    assert request.form["grant_type"] == "client_credentials"
    assert request.form["scope"] == f"{VAULT_RESOURCE}/.default"
    assert "client_secret" not in request.form
    # 3. The retried request carries the token the authority issued, and the vault accepted it.
    assert second.headers["authorization"] == f"Bearer {entra.issued[0]}"
    assert second.status == 200

    # Later reads reuse the token: no second challenge, no second token request.
    assert provider.get("turnstile-secret").reveal() == VALUE
    assert len(entra.token_requests) == 1
    assert [e.status for e in vault.exchanges] == [401, 200, 200]
    provider.close()


def test_app_names_map_to_key_vault_names(vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]) -> None:
    vault.set_secret("alert-webhook-secret", "hook")
    vault.set_secret("palisade-database-url", "postgresql://app@db/palisade")
    provider = KeyVaultSecrets(vault.url, workload.credential(), **client_options)
    assert provider.get("alert_webhook_secret").reveal() == "hook"
    prefixed = KeyVaultSecrets(vault.url, workload.credential(), name_prefix="palisade-", **client_options)
    assert prefixed.get("database-url").reveal() == "postgresql://app@db/palisade"


def test_the_latest_version_is_read(vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]) -> None:
    vault.set_secret("database-url", "old")
    provider = KeyVaultSecrets(vault.url, workload.credential(), **client_options)
    assert provider.get("database-url").reveal() == "old"
    # Rotated through the SDK's own PUT /secrets/{name}, as an operator's tooling would.
    writer = SecretClient(vault.url, workload.credential(), **client_options)
    writer.set_secret("database-url", "new")
    assert provider.get("database-url").reveal() == "new"


def test_missing_secret_raises_missing_secret_naming_it(
    vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]
) -> None:
    provider = KeyVaultSecrets(vault.url, workload.credential(), **client_options)
    with pytest.raises(MissingSecret) as excinfo:
        provider.get("paddle-api-key")
    assert excinfo.value.secret_name == "paddle-api-key"
    assert "'paddle-api-key'" in str(excinfo.value)
    assert vault.exchanges[-1].status == 404


def test_access_denied_by_the_vault_is_a_provider_error(
    vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]
) -> None:
    vault.set_secret("database-url", VALUE)
    vault.permissions[workload.client_id] = {"keys/read"}
    provider = KeyVaultSecrets(vault.url, workload.credential(), **client_options)
    with pytest.raises(SecretProviderError, match=r"'database-url'.*HTTP 403 Forbidden") as excinfo:
        provider.get("database-url")
    assert VALUE not in str(excinfo.value)


def test_federated_token_for_another_subject_gets_no_token(
    vault: FakeKeyVault, entra: FakeEntraID, make_workload: Callable[..., Workload], client_options: dict[str, Any]
) -> None:
    vault.set_secret("database-url", VALUE)
    # The app registration trusts another service account than the one the pod runs as.
    workload = make_workload("intruder", registered_subject="system:serviceaccount:palisade:palisade-api")
    provider = KeyVaultSecrets(vault.url, workload.credential(), **client_options)
    with pytest.raises(SecretProviderError, match="could not authenticate"):
        provider.get("database-url")
    assert [r.status for r in entra.token_requests] == [401]
    assert all(e.status == 401 for e in vault.exchanges)


def test_challenge_resource_is_verified_unless_turned_off(
    vault: FakeKeyVault, entra: FakeEntraID, workload: Workload, client_options: dict[str, Any]
) -> None:
    # Production keeps the SDK's check that the challenge's resource (vault.azure.net) matches
    # the vault's host: a loopback address does not, so the SDK refuses before asking for a
    # token, and no vault token ever goes to a host that is not a vault.
    vault.set_secret("database-url", VALUE)
    strict = KeyVaultSecrets(vault.url, workload.credential(), connection_verify=client_options["connection_verify"])
    with pytest.raises(SecretProviderError, match="does not match the requested domain"):
        strict.get("database-url")
    assert entra.token_requests == []


def test_default_credential_in_production_uses_workload_identity_and_never_a_client_secret(
    vault: FakeKeyVault,
    entra: FakeEntraID,
    workload: Workload,
    client_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The environment the AKS / Container Apps workload identity webhook sets, plus a client
    # secret that must be ignored (the environment credential is excluded).
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.url)
    monkeypatch.setenv("AZURE_TENANT_ID", workload.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", workload.client_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(workload.token_file))
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "must-never-be-sent")
    monkeypatch.delenv("AZURE_TOKEN_CREDENTIALS", raising=False)
    # requests' documented CA-bundle variable, so the factory's own credential trusts the test CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(workload.ca_file))
    vault.set_secret("database-url", VALUE)

    provider = provider_from_settings(
        "keyvault",
        mode="production",
        key_vault_url=vault.url,
        client_options={"verify_challenge_resource": False},
    )
    assert provider.get("database-url").reveal() == VALUE
    [request] = entra.token_requests
    assert request.form["client_assertion"] == workload.token_file.read_text()
    assert all("client_secret" not in r.form for r in entra.token_requests)


def test_azure_credential_kinds(workload: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential, WorkloadIdentityCredential

    monkeypatch.setenv("AZURE_TENANT_ID", workload.tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", workload.client_id)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(workload.token_file))
    monkeypatch.delenv("AZURE_TOKEN_CREDENTIALS", raising=False)
    production = azure_credential("default", mode="production")
    assert isinstance(production, DefaultAzureCredential)
    names = [type(c).__name__ for c in production.credentials]
    assert names == ["WorkloadIdentityCredential", "ManagedIdentityCredential"]
    development = [type(c).__name__ for c in azure_credential("default", mode="development").credentials]
    assert "EnvironmentCredential" not in development and "InteractiveBrowserCredential" not in development
    assert "AzureCliCredential" in development
    assert isinstance(azure_credential("workload"), WorkloadIdentityCredential)
    assert isinstance(azure_credential("managed", managed_identity_client_id="abc"), ManagedIdentityCredential)
    with pytest.raises(ValueError, match="unknown Azure credential kind"):
        azure_credential("client_secret")
