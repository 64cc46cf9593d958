"""EnvSecrets is development-only; the factory picks the provider from configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Mode
from app.crypto.secrets import (
    EnvSecrets,
    FileSecrets,
    KeyVaultSecrets,
    MissingSecret,
    SecretProvider,
    SecretProviderError,
    key_vault_secret_name,
    provider_from_settings,
)


def test_env_secrets_are_refused_in_production() -> None:
    with pytest.raises(SecretProviderError, match="development only"):
        EnvSecrets(mode=Mode.production, environ={"PALISADE_SECRET_DATABASE_URL": "x"})
    with pytest.raises(SecretProviderError, match="development only"):
        EnvSecrets(mode="production")
    with pytest.raises(SecretProviderError, match="development only"):
        provider_from_settings("env", mode="production")


def test_env_secrets_in_development() -> None:
    environ = {"PALISADE_SECRET_DATABASE_URL": "postgresql://dev", "PALISADE_SECRET_ALERT_WEBHOOK_SECRET": "w"}
    provider = EnvSecrets(mode=Mode.development, environ=environ)
    assert isinstance(provider, SecretProvider)
    assert provider.get("database-url").reveal() == "postgresql://dev"
    assert provider.get("alert_webhook_secret").reveal() == "w"
    with pytest.raises(MissingSecret, match="'turnstile-secret'.*PALISADE_SECRET_TURNSTILE_SECRET"):
        provider.get("turnstile-secret")


def test_env_secrets_follow_the_configured_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setenv("PALISADE_MODE", "development")
    get_settings.cache_clear()
    try:
        EnvSecrets()  # mode taken from Settings
    finally:
        get_settings.cache_clear()


def test_factory_builds_each_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    assert isinstance(provider_from_settings("files", secrets_dir=directory), FileSecrets)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    assert isinstance(provider_from_settings("systemd", mode="production"), FileSecrets)
    assert isinstance(provider_from_settings("env", mode="development"), EnvSecrets)
    keyvault = provider_from_settings("keyvault", mode="production", key_vault_url="https://palisade-kv.vault.azure.net/")
    assert isinstance(keyvault, KeyVaultSecrets)  # nothing contacted until the first get
    keyvault.close()


def test_factory_refuses_incomplete_or_unknown_configuration() -> None:
    with pytest.raises(SecretProviderError, match="PALISADE_KEY_VAULT_URL"):
        provider_from_settings("keyvault")
    with pytest.raises(SecretProviderError, match="PALISADE_SECRETS_DIR"):
        provider_from_settings("files")
    with pytest.raises(SecretProviderError, match="unknown secret provider 'vault'"):
        provider_from_settings("vault")
    with pytest.raises(TypeError):
        provider_from_settings("files", secret_dir="/x")  # type: ignore[call-arg]  # misspelt: never ignored
    with pytest.raises(SecretProviderError, match="https"):
        provider_from_settings("keyvault", key_vault_url="http://palisade-kv.vault.azure.net")


def test_key_vault_names_allow_only_alphanumerics_and_dashes() -> None:
    assert key_vault_secret_name("database-url") == "database-url"
    assert key_vault_secret_name("alert_webhook_secret") == "alert-webhook-secret"
    assert key_vault_secret_name("Paddle.API_key") == "paddle-api-key"
    assert key_vault_secret_name("database-url", "palisade-") == "palisade-database-url"
    with pytest.raises(ValueError):
        key_vault_secret_name("../x")
