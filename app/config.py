"""Typed settings, read from PALISADE_* environment variables (or a .env file in development)."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

# One DNS name or IPv4 address, optionally with the root's trailing dot (labels of letters, digits, dashes).
_HOST_NAME = re.compile(r"(?i)(?=.{1,253}\.?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?")

# The issuer name of the development-only token signer (`palisade dev`); production refuses it.
DEV_ISSUER = "http://palisade.dev.invalid/dev-issuer"


class Mode(StrEnum):
    development = "development"
    production = "production"


class IssuerConfig(BaseModel):
    """One trusted OpenID Provider and how its claims map to Palisade's platform roles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    audience: str
    # Dotted path to a list of role names: Keycloak puts them in `realm_access.roles`,
    # many other IdPs in a flat `roles` claim.
    roles_claim: str = "realm_access.roles"
    # Explicit discovery URL for IdPs reachable at another address than their issuer name.
    discovery_url: str | None = None
    # The vendor's own IdP: the only kind of issuer whose tokens may carry `internal_admin` (vendor
    # staff). A token from any other issuer that asserts it is refused (401), never downgraded.
    vendor: bool = False
    # With `vendor`: `internal_admin` also needs this value in this claim (a dotted path to a string
    # or a list of strings, e.g. `groups` containing `palisade-staff`).
    vendor_claim: str | None = None
    vendor_claim_value: str | None = None

    @model_validator(mode="after")
    def _vendor_claim_pair(self) -> IssuerConfig:
        if (self.vendor_claim is None) != (self.vendor_claim_value is None):
            raise ValueError("vendor_claim and vendor_claim_value go together")
        if self.vendor_claim is not None and not self.vendor:
            raise ValueError("vendor_claim needs vendor: true")
        return self

    @property
    def discovery(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


class Settings(BaseSettings):
    # Errors name the setting, never echo its value (it may be a secret).
    model_config = SettingsConfigDict(env_prefix="PALISADE_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    mode: Mode = Mode.development
    # The app role's URL: the only one the running app uses.
    database_url: str = ""
    # The admin (schema owner) URL: migrations only.
    admin_database_url: str = ""
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # The HTTP server's limits (app/edge/serving.py): request line + headers, idle keep-alive,
    # connections and requests in flight per process.
    max_header_bytes: int = Field(default=16 * 1024, ge=4 * 1024, le=256 * 1024)
    keep_alive_seconds: int = Field(default=5, ge=1, le=120)
    max_concurrency: int = Field(default=1000, ge=10, le=100_000)
    # How long a request waits for a pooled connection before it is answered 503 (Retry-After).
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # `password`: the URLs carry one. `entra`: they carry none; each connection signs in with an
    # Entra ID token of this process's managed identity (Azure Database for PostgreSQL).
    database_auth: Literal["password", "entra"] = "password"
    # With `entra`, `palisade migrate` creates the app role for this Entra object id (the API's
    # managed identity's principal id).
    database_app_principal_id: str | None = None

    issuers: Annotated[list[IssuerConfig], NoDecode] = Field(default_factory=list)
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=120)
    # JWKS are cached this long, then refetched in the background of the next request.
    jwks_cache_seconds: int = Field(default=3600, ge=60)
    # An unknown `kid` refetches the JWKS at most once per this interval, per issuer, so a flood
    # of tokens with made-up kids cannot hammer the IdP.
    jwks_refetch_cooldown_seconds: float = Field(default=10.0, ge=0.0)
    http_timeout_seconds: float = Field(default=5.0, gt=0)

    # Development-only token signer (`palisade dev`): path to its private key (PEM).
    dev_issuer_key_file: Path | None = None

    # Logs: one JSON object per line (False: human-readable console lines, development only).
    log_json: bool = True
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    # Sentry: off unless a DSN is set. PII is never sent; events pass the log scrubber.
    sentry_dsn: str | None = None
    sentry_environment: str = "production"
    sentry_traces_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)

    # --- the edge (layer 3) -------------------------------------------------------------------
    # Browser origins allowed to call the API (exact scheme://host[:port] matches; never "*").
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # HSTS is sent on HTTPS requests (directly, or as told by a trusted proxy).
    hsts_max_age_seconds: int = Field(default=63_072_000, ge=0)  # two years
    hsts_preload: bool = False
    # Request bodies larger than this are refused before they are read or parsed.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (CIDRs): the on-prem nginx, the
    # Azure ingress. Cloudflare's published ranges, whose CF-Connecting-IP is believed.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cloudflare_ranges: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Requests per minute per user (per client IP when unauthenticated), and per route class.
    rate_limit_per_minute: int = Field(default=100, ge=1)
    rate_limit_classes: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    # How long an Idempotency-Key (app/idempotency.py) is kept: a retry within it replays the response.
    idempotency_key_hours: int = Field(default=24, ge=1, le=168)
    # Failed sign-ins and database-busy refusals are written to the audit trail aggregated, from a
    # buffer flushed this often (app/audit/buffered.py).
    audit_buffer_flush_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Largest upload accepted (brand assets, knowledge files).
    upload_max_bytes: int = Field(default=10_485_760, ge=1024)
    # Host names this API answers for (exact, case-insensitive; empty: any). Another Host (a
    # platform's default name, an IP) gets 421 before routing; /health/* answer any (probes use IPs).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Cloudflare Turnstile on public routes: on when a secret is set; production requires it
    # unless turned `off` explicitly (an install with no route to Cloudflare: no human check on
    # public routes, only their rate limits; README "Turnstile").
    turnstile: Literal["on", "off"] = "on"
    turnstile_secret: str | None = None
    turnstile_siteverify_url: str = "https://challenges.cloudflare.com/turnstile/v0/siteverify"
    turnstile_expected_hostname: str | None = None
    turnstile_expected_action: str | None = None

    # --- secrets and keys ---------------------------------------------------------------------
    # Where secrets come from. `env` (these PALISADE_* settings themselves) is for development
    # only; production reads every secret from Key Vault, owner-only files or systemd credentials.
    secret_provider: Literal["env", "files", "systemd", "keyvault"] = "env"
    # Optional secrets (sentry-dsn, alert-webhook-secret) to read, by their provider names. Unset:
    # each is tried and a missing one skipped. Set (even empty): only those are asked for, so an
    # identity granted exactly them never asks for another (Key Vault answers 403 for an ungranted
    # name whether or not it exists, and a refusal is fatal).
    optional_secrets: Annotated[list[str] | None, NoDecode] = None
    key_vault_url: str | None = None
    secrets_dir: Path | None = None
    azure_managed_identity_client_id: str | None = None
    # The key-encryption key wrapping each tenant's data key: in Key Vault, or local key files.
    kek_provider: Literal["local", "keyvault"] = "local"
    kek_key_url: str | None = None
    kek_dir: Path | None = None
    # Unwrapped data keys stay in memory at most this long, and at most this many.
    data_key_cache_seconds: float = Field(default=300.0, ge=0.0, le=3600.0)
    data_key_cache_size: int = Field(default=1024, ge=0, le=100_000)

    # Audit checkpoints (app/audit/anchor.py): each chain's head, signed, written outside PostgreSQL.
    # `file`: appended to one file per UTC day in `audit_checkpoint_dir`. `azure-blob`: appended to
    # one append blob per UTC day in a container (`audit_checkpoint_blob_account_url`, e.g.
    # https://<account>.blob.core.windows.net, and `audit_checkpoint_blob_container`), signed in with
    # the same Azure credential as Key Vault, never an account key. `none`: not anchored.
    audit_checkpoint_sink: Literal["none", "file", "azure-blob"] = "none"
    audit_checkpoint_dir: Path | None = None
    audit_checkpoint_blob_account_url: str | None = None
    audit_checkpoint_blob_container: str | None = None
    # The Ed25519 signing key (PEM, PKCS#8, owner-only file), or an EC P-256 key in Key Vault
    # (https://<vault>.vault.azure.net/keys/<name>, ES256, signed in the vault); the public key(s)
    # verify checks with.
    audit_checkpoint_key_file: Path | None = None
    audit_checkpoint_key_url: str | None = None
    audit_checkpoint_public_key_file: Path | None = None
    # How often the app checkpoints every chain whose head moved (0: only on demand and at shutdown).
    audit_checkpoint_seconds: float = Field(default=300.0, ge=0.0, le=86_400.0)

    # Alerts: rule notifications are POSTed here, signed with HMAC-SHA256 over the body.
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None

    @field_validator("issuers", mode="before")
    @classmethod
    def _parse_issuers(cls, value: object) -> object:
        if isinstance(value, str):
            from pydantic import TypeAdapter

            return TypeAdapter(list[IssuerConfig]).validate_json(value) if value.strip() else []
        return value

    @field_validator("cors_allow_origins", "trusted_proxies", "cloudflare_ranges", "allowed_hosts", "optional_secrets",
                     mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _bare_host_names(cls, value: list[str]) -> list[str]:
        # Compared exactly with the request's Host (port dropped): a scheme, port, path or
        # wildcard here would never match anything, so it is refused rather than silently dead.
        if any(not _HOST_NAME.fullmatch(host) for host in value):
            raise ValueError("PALISADE_ALLOWED_HOSTS lists bare host names (no scheme, port, path or wildcard)")
        return value

    @field_validator("rate_limit_classes", mode="before")
    @classmethod
    def _json_dict(cls, value: object) -> object:
        if isinstance(value, str):
            import json

            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("database_url", "admin_database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        if value and value.startswith("postgresql://"):
            return "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @model_validator(mode="after")
    def _no_wildcard_origin(self) -> Settings:
        # Credentials (bearer tokens) cross origins here, so "*" is never a safe answer.
        if "*" in self.cors_allow_origins or "null" in self.cors_allow_origins:
            raise ValueError("CORS origins must be listed exactly: '*' and 'null' are refused")
        return self

    @model_validator(mode="after")
    def _production_is_strict(self) -> Settings:
        if self.mode is not Mode.production:
            return self
        if self.dev_issuer_key_file is not None:
            raise ValueError("the development token issuer is refused in production mode")
        for issuer in self.issuers:
            if not issuer.issuer.startswith("https://"):
                raise ValueError(f"issuer {issuer.issuer!r} must use https in production mode")
        if not self.issuers:
            raise ValueError("production mode needs at least one OIDC issuer (PALISADE_ISSUERS)")
        if self.secret_provider == "env":
            raise ValueError("production mode reads secrets from keyvault, files or systemd (PALISADE_SECRET_PROVIDER), never from the environment")
        if self.secret_provider == "keyvault" and not (self.key_vault_url or "").startswith("https://"):
            raise ValueError("the keyvault secret provider needs an https PALISADE_KEY_VAULT_URL")
        return self

    def check_can_serve(self) -> None:
        """What serving the API needs beyond the settings' own checks (`create_app`, `palisade serve`).

        Production keeps Turnstile on its public routes (unless PALISADE_TURNSTILE=off says
        otherwise) and answers only its own host names: with
        no allow-list any `Host` would be served, and a client would choose the name the app
        believes it has. Commands that do not serve (migrate, doctor) need neither.
        """
        if self.mode is not Mode.production:
            return
        if self.turnstile == "on":
            self.require("turnstile_secret")
        if not self.allowed_hosts:
            raise ValueError("production mode needs PALISADE_ALLOWED_HOSTS: the host names clients use to reach "
                             "this API, comma-separated (e.g. palisade.example.com); any other Host is refused")

    @property
    def app_role(self) -> str:
        """The app role's name, taken from the user of the app database URL."""
        name = make_url(self.database_url).username if self.database_url else None
        if not name:
            raise ValueError("PALISADE_DATABASE_URL must name the app role as its user")
        return name

    def require(self, *names: str) -> None:
        """Fail with a message naming each missing setting or secret (never a value)."""
        missing = [n for n in names if not getattr(self, n)]
        if not missing:
            return
        if self.secret_provider != "env":
            raise ValueError(f"missing secrets (from the {self.secret_provider} provider): "
                             + ", ".join(SECRET_FIELDS.get(n, "PALISADE_" + n.upper()) for n in missing))
        raise ValueError("missing settings: " + ", ".join("PALISADE_" + n.upper() for n in missing))


# Settings that are secrets, and their names at the secret provider (Key Vault allows only
# letters, digits and dashes, so these names work everywhere).
SECRET_FIELDS = {
    "database_url": "database-url",
    "admin_database_url": "admin-database-url",
    "turnstile_secret": "turnstile-secret",
    "sentry_dsn": "sentry-dsn",
    "alert_webhook_secret": "alert-webhook-secret",
}

# What each kind of process reads from the provider, and nothing more: the running app never asks
# for the schema owner's URL, so its identity needs no access to it (in Azure, a role assignment
# per secret: asking for an ungranted one is a 403, which is fatal, never skipped).
APP_SECRETS = ("database_url", "turnstile_secret", "sentry_dsn", "alert_webhook_secret")
OPTIONAL_SECRETS = ("sentry_dsn", "alert_webhook_secret")
# `palisade migrate`: the schema owner's URL, and the app's URL to create the app role with its password.
MIGRATION_SECRETS = ("admin_database_url", "database_url")


def load_settings(*, secrets: tuple[str, ...] = APP_SECRETS, **overrides: object) -> Settings:
    """Settings from PALISADE_* variables; with a secret provider, the `secrets` from the provider.

    With a provider configured, a secret given as a variable or in a config file is refused: in
    production nothing secret may live in the environment. A secret the provider does not hold is
    left unset (`require()` names the ones a command needs); one it refuses is an error.
    """
    from app.crypto.secrets import MissingSecret, provider_for

    unknown = set(secrets) - SECRET_FIELDS.keys()
    if unknown:
        raise ValueError(f"not secret settings: {', '.join(sorted(unknown))}")
    base = Settings(**overrides)  # type: ignore[arg-type]
    if base.secret_provider == "env":
        return base
    given = [f for f in SECRET_FIELDS if getattr(base, f)]
    if given:
        raise ValueError("secrets must come from the secret provider, not the environment: "
                         + ", ".join("PALISADE_" + f.upper() for f in given))
    if base.optional_secrets is not None:
        known = {SECRET_FIELDS[f] for f in OPTIONAL_SECRETS}
        if set(base.optional_secrets) - known:
            raise ValueError(f"PALISADE_OPTIONAL_SECRETS may name only {', '.join(sorted(known))}")
        secrets = tuple(f for f in secrets if f not in OPTIONAL_SECRETS or SECRET_FIELDS[f] in base.optional_secrets)
    provider = provider_for(base)
    values: dict[str, str] = {}
    for field in secrets:
        try:
            values[field] = provider.get(SECRET_FIELDS[field]).reveal()
        except MissingSecret:
            continue
    return Settings(**{**base.model_dump(exclude_unset=True), **overrides, **values})  # type: ignore[arg-type]


@lru_cache
def get_settings() -> Settings:
    """The running app's settings (its secrets only; see `APP_SECRETS`)."""
    return load_settings()
