"""Stack configuration: read once, validated before any resource is declared.

Every key lives in the `palisade:` namespace and is documented in `Pulumi.yaml`. `parse()` is a pure
function of the raw values (strings as Pulumi hands them over, or native values in tests) and
raises one `ConfigError` naming every problem, so `pulumi preview` stops before it plans anything.

Secure defaults, overridable only in the safe direction or by an explicit key: what must never
change (no public database, no public vault, purge protection, RBAC, TLS >= 1.2, WAF) is not a
key at all; what may be tuned is validated against a floor (at least two replicas, HSTS of at least
six months, backups kept at least seven days).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import defaults

NAMESPACE = "palisade"

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CLOUDFLARE_ID = re.compile(r"[0-9a-f]{32}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PREFIX = re.compile(r"[a-z][a-z0-9]{1,9}")
_PATH = re.compile(r"/[A-Za-z0-9/_.~-]*")
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,119}")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

POSTGRES_VERSIONS = ("16", "17", "18")
POSTGRES_TIERS = ("Burstable", "GeneralPurpose", "MemoryOptimized")
POSTGRES_HA_MODES = ("ZoneRedundant", "SameZone", "Disabled")
POSTGRES_STORAGE_GB = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32767)
POSTGRES_MIN_TLS = ("TLSv1.3",)
KEK_KEY_TYPES = ("RSA-HSM", "RSA")
KEK_KEY_SIZES = (3072, 4096, 2048)
ENTRA_PRINCIPAL_TYPES = ("Group", "User", "ServicePrincipal")
# Cloudflare's accepted HSTS max-age values of six months or more.
HSTS_MAX_AGES = (31_536_000, 15_552_000)


class ConfigError(ValueError):
    """The stack configuration is invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class Issuer:
    """An OpenID Provider the API trusts (PALISADE_ISSUERS)."""

    issuer: str
    audience: str
    roles_claim: str = "realm_access.roles"
    discovery_url: str | None = None
    # The vendor's own IdP: the only issuer whose tokens may carry `internal_admin` (vendor staff),
    # optionally only with `vendor_claim` (a dotted path) holding `vendor_claim_value`.
    vendor: bool = False
    vendor_claim: str | None = None
    vendor_claim_value: str | None = None

    def to_app(self) -> dict[str, object]:
        """The shape `app.config.IssuerConfig` reads."""
        out: dict[str, object] = {"issuer": self.issuer, "audience": self.audience, "roles_claim": self.roles_claim}
        if self.discovery_url:
            out["discovery_url"] = self.discovery_url
        if self.vendor:
            out["vendor"] = True
        if self.vendor_claim:
            out.update(vendor_claim=self.vendor_claim, vendor_claim_value=self.vendor_claim_value)
        return out


@dataclass(frozen=True)
class FederatedCredential:
    """A workload-identity federation: tokens from `issuer` for `subject` act as the app identity."""

    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...] = ("api://AzureADTokenExchange",)


@dataclass(frozen=True)
class EntraAdmin:
    """The Entra principal (a group, ideally) administering the PostgreSQL server."""

    object_id: str
    principal_name: str
    principal_type: str = "Group"


@dataclass(frozen=True)
class StackConfig:
    # --- required
    location: str
    domain: str
    cloudflare_zone_id: str
    cloudflare_account_id: str
    image: str
    issuers: tuple[Issuer, ...]
    # --- naming and network
    prefix: str = "palisade"
    address_space: str = "10.20.0.0/16"
    tags: Mapping[str, str] = field(default_factory=dict)
    # --- database
    postgres_version: str = "16"
    postgres_sku: str = "Standard_D2ds_v5"
    postgres_tier: str = "GeneralPurpose"
    postgres_storage_gb: int = 128
    postgres_high_availability: str = "ZoneRedundant"
    postgres_geo_redundant_backup: bool = True
    postgres_backup_retention_days: int = 35
    postgres_min_tls: str = "TLSv1.3"
    postgres_entra_admin: EntraAdmin | None = None
    database_name: str = "palisade"
    app_role: str = "palisade_app"
    # --- secrets and identity
    kek_key_type: str = "RSA-HSM"
    kek_key_size: int = 3072
    kek_rotation_days: int = 365
    soft_delete_retention_days: int = 90
    audit_checkpoint_retention_days: int = 365
    federated_credentials: tuple[FederatedCredential, ...] = ()
    # --- app hosting
    min_replicas: int = 2
    max_replicas: int = 10
    cpu: float = 0.5
    memory: str = "1Gi"
    port: int = 8000
    registry_server: str | None = None
    allow_mutable_image_tag: bool = False
    cors_allow_origins: tuple[str, ...] = ()
    log_retention_days: int = 90
    otlp_endpoint: str | None = None
    collector_image: str = "otel/opentelemetry-collector-contrib:0.115.0"
    alert_webhook_url: str | None = None
    cloudflared_image: str = "cloudflare/cloudflared:2025.11.1"
    # --- edge
    blocked_countries: tuple[str, ...] = ()
    blocked_asns: tuple[int, ...] = ()
    challenge_paths: tuple[str, ...] = ("/api/v1/invitations/accept",)
    api_path_prefix: str = "/api/"
    edge_rate_limit_per_minute: int = 100
    hsts_max_age_seconds: int = 31_536_000
    hsts_include_subdomains: bool = False
    hsts_preload: bool = False
    # Zone-wide settings (SSL mode, zone minimum TLS, HTTPS rewrites, 0-RTT, edge HSTS) touch every
    # host of the customer's zone: only when the stack says so.
    manage_zone_settings: bool = False
    # --- monitoring and alerts (alerting.py; keys in the block after KEYS)
    alert_emails: tuple[str, ...] = ()
    azure_monitor_webhook_url: str | None = None
    defender_plans: tuple[str, ...] = ()

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.address_space)

    @property
    def apps_subnet(self) -> str:
        """First /23: the Container Apps environment (workload profiles need at least a /27)."""
        return str(next(self.network.subnets(new_prefix=23)))

    @property
    def database_subnet(self) -> str:
        """Third /24: delegated to PostgreSQL Flexible Server."""
        return str(list(self.network.subnets(new_prefix=24))[2])

    @property
    def endpoints_subnet(self) -> str:
        """Fourth /24: private endpoints (Key Vault)."""
        return str(list(self.network.subnets(new_prefix=24))[3])

    @property
    def app_url(self) -> str:
        return f"https://{self.domain}"


# key -> (field name, converter). Converters take the raw value and return the typed one or raise
# ValueError with a message that names the expected form, never echoing a secret.
def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("must be an integer") from None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


def _structured(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("must be a YAML list or object (JSON when set with --path or on the command line)") from None
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    value = _structured(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(v.strip() for v in value)


def _int_list(value: Any) -> tuple[int, ...]:
    value = _structured(value)
    if not isinstance(value, list):
        raise ValueError("must be a list of integers")
    return tuple(_int(v) for v in value)


def _tags(value: Any) -> Mapping[str, str]:
    value = _structured(value)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("must be a map of string to string")
    return dict(value)


def _issuers(value: Any) -> tuple[Issuer, ...]:
    value = _structured(value)
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of {issuer, audience[, rolesClaim, discoveryUrl, vendor, "
                         "vendorClaim, vendorClaimValue]}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not item.get("issuer") or not item.get("audience"):
            raise ValueError(f"item {i} needs `issuer` and `audience`")
        unknown = set(item) - {"issuer", "audience", "rolesClaim", "discoveryUrl", "vendor", "vendorClaim",
                               "vendorClaimValue"}
        if unknown:
            raise ValueError(f"item {i} has unknown fields {sorted(unknown)}")
        if not isinstance(item.get("vendor", False), bool):
            raise ValueError(f"item {i}: vendor must be true or false")
        if ("vendorClaim" in item) != ("vendorClaimValue" in item) or ("vendorClaim" in item and not item.get("vendor")):
            raise ValueError(f"item {i}: vendorClaim and vendorClaimValue go together, on a vendor issuer only")
        issuer = Issuer(str(item["issuer"]), str(item["audience"]), str(item.get("rolesClaim", "realm_access.roles")),
                        item.get("discoveryUrl"), bool(item.get("vendor", False)), item.get("vendorClaim"),
                        item.get("vendorClaimValue"))
        for url in (issuer.issuer, issuer.discovery_url):
            if url is not None and not url.startswith("https://"):
                raise ValueError(f"item {i}: {url!r} must use https (production mode refuses anything else)")
        out.append(issuer)
    return tuple(out)


def _federated(value: Any) -> tuple[FederatedCredential, ...]:
    value = _structured(value)
    if not isinstance(value, list):
        raise ValueError("must be a list of {name, issuer, subject[, audiences]}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not all(item.get(k) for k in ("name", "issuer", "subject")):
            raise ValueError(f"item {i} needs `name`, `issuer` and `subject`")
        if not _CREDENTIAL_NAME.fullmatch(str(item["name"])):
            raise ValueError(f"item {i}: name must be 3-120 letters, digits, '-' or '_'")
        if not str(item["issuer"]).startswith("https://"):
            raise ValueError(f"item {i}: the issuer must be an https URL")
        audiences = tuple(item.get("audiences") or ("api://AzureADTokenExchange",))
        out.append(FederatedCredential(str(item["name"]), str(item["issuer"]), str(item["subject"]), audiences))
    return tuple(out)


def _entra_admin(value: Any) -> EntraAdmin:
    value = _structured(value)
    if not isinstance(value, dict) or not value.get("objectId") or not value.get("principalName"):
        raise ValueError("must be {objectId, principalName[, principalType]}")
    admin = EntraAdmin(str(value["objectId"]), str(value["principalName"]), str(value.get("principalType", "Group")))
    if not _GUID.fullmatch(admin.object_id):
        raise ValueError("objectId must be the principal's object id (a GUID)")
    if admin.principal_type not in ENTRA_PRINCIPAL_TYPES:
        raise ValueError(f"principalType must be one of {', '.join(ENTRA_PRINCIPAL_TYPES)}")
    return admin


KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "location": ("location", _str),
    "domain": ("domain", _str),
    "cloudflareZoneId": ("cloudflare_zone_id", _str),
    "cloudflareAccountId": ("cloudflare_account_id", _str),
    "image": ("image", _str),
    "issuers": ("issuers", _issuers),
    "prefix": ("prefix", _str),
    "addressSpace": ("address_space", _str),
    "tags": ("tags", _tags),
    "postgresVersion": ("postgres_version", _str),
    "postgresSku": ("postgres_sku", _str),
    "postgresTier": ("postgres_tier", _str),
    "postgresStorageGb": ("postgres_storage_gb", _int),
    "postgresHighAvailability": ("postgres_high_availability", _str),
    "postgresGeoRedundantBackup": ("postgres_geo_redundant_backup", _bool),
    "postgresBackupRetentionDays": ("postgres_backup_retention_days", _int),
    "postgresMinTls": ("postgres_min_tls", _str),
    "postgresEntraAdmin": ("postgres_entra_admin", _entra_admin),
    "databaseName": ("database_name", _str),
    "appRole": ("app_role", _str),
    "kekKeyType": ("kek_key_type", _str),
    "kekKeySize": ("kek_key_size", _int),
    "kekRotationDays": ("kek_rotation_days", _int),
    "softDeleteRetentionDays": ("soft_delete_retention_days", _int),
    "auditCheckpointRetentionDays": ("audit_checkpoint_retention_days", _int),
    "federatedCredentials": ("federated_credentials", _federated),
    "minReplicas": ("min_replicas", _int),
    "maxReplicas": ("max_replicas", _int),
    "cpu": ("cpu", _float),
    "memory": ("memory", _str),
    "port": ("port", _int),
    "registryServer": ("registry_server", _str),
    "allowMutableImageTag": ("allow_mutable_image_tag", _bool),
    "corsAllowOrigins": ("cors_allow_origins", _str_list),
    "logRetentionDays": ("log_retention_days", _int),
    "otlpEndpoint": ("otlp_endpoint", _str),
    "collectorImage": ("collector_image", _str),
    "cloudflaredImage": ("cloudflared_image", _str),
    "alertWebhookUrl": ("alert_webhook_url", _str),
    "blockedCountries": ("blocked_countries", _str_list),
    "blockedAsns": ("blocked_asns", _int_list),
    "challengePaths": ("challenge_paths", _str_list),
    "apiPathPrefix": ("api_path_prefix", _str),
    "edgeRateLimitPerMinute": ("edge_rate_limit_per_minute", _int),
    "hstsMaxAgeSeconds": ("hsts_max_age_seconds", _int),
    "hstsIncludeSubdomains": ("hsts_include_subdomains", _bool),
    "hstsPreload": ("hsts_preload", _bool),
    "manageZoneSettings": ("manage_zone_settings", _bool),
}
# --- monitoring and alerts (alerting.py): the action group's receivers and opt-in Defender plans.
# `azureMonitorWebhookUrl` is declared `secret: true` (its URL may carry a token): validated here,
# then read again with `get_secret` for the action group, so the state holds it encrypted.
KEYS.update({
    "alertEmails": ("alert_emails", _str_list),
    "azureMonitorWebhookUrl": ("azure_monitor_webhook_url", _str),
    "defenderPlans": ("defender_plans", _str_list),
})
# Microsoft Defender for Cloud plans (`Microsoft.Security/pricings/<name>`) covering what this
# stack deploys: the vault, the PostgreSQL server, management operations, container images.
DEFENDER_PLANS = ("KeyVaults", "OpenSourceRelationalDatabases", "Arm", "Containers")
_EMAIL = re.compile(r"[^@\s,;<>\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def _check_alerting(cfg: StackConfig) -> list[str]:
    p: list[str] = []
    ns = NAMESPACE
    for address in cfg.alert_emails:
        if not _EMAIL.fullmatch(address):
            p.append(f"{ns}:alertEmails entry {address!r} is not an e-mail address (one address per entry)")
    if len(set(a.lower() for a in cfg.alert_emails)) != len(cfg.alert_emails):
        p.append(f"{ns}:alertEmails lists an address twice")
    if len(cfg.alert_emails) > 1000:
        p.append(f"{ns}:alertEmails accepts at most 1000 addresses (an action group's limit)")
    url = cfg.azure_monitor_webhook_url
    if url is not None and (not url.startswith("https://") or any(c.isspace() for c in url)):
        # The value is never echoed: it may carry a token.
        p.append(f"{ns}:azureMonitorWebhookUrl must be an https URL")
    for plan in cfg.defender_plans:
        if plan not in DEFENDER_PLANS:
            p.append(f"{ns}:defenderPlans entry {plan!r} is not one of {', '.join(DEFENDER_PLANS)}")
    if len(set(cfg.defender_plans)) != len(cfg.defender_plans):
        p.append(f"{ns}:defenderPlans lists a plan twice")
    return p


# Read with `get_secret` and never parsed: their values only travel to Key Vault.
SECRET_KEYS = ("sentryDsn", "alertWebhookSecret")
REQUIRED = ("location", "domain", "cloudflareZoneId", "cloudflareAccountId", "image", "issuers")


def parse(raw: Mapping[str, Any]) -> StackConfig:
    """The validated configuration from raw `palisade:` values (keys without the namespace)."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in sorted(set(raw) - set(KEYS) - set(SECRET_KEYS)):
        problems.append(f"{NAMESPACE}:{key} is not a known key (see Pulumi.yaml for the documented ones)")
    for key in REQUIRED:
        if raw.get(key) in (None, "", [], ()):
            problems.append(f"{NAMESPACE}:{key} is required: {_REQUIRED_HINTS[key]}")
    for key, (name, convert) in KEYS.items():
        if raw.get(key) in (None, ""):
            continue
        try:
            values[name] = convert(raw[key])
        except ValueError as exc:
            problems.append(f"{NAMESPACE}:{key} {exc}")
    if problems:
        raise ConfigError(problems)
    cfg = StackConfig(**values)
    problems = _check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


_REQUIRED_HINTS = {
    "location": "the Azure region every resource is created in (data residency), e.g. westeurope",
    "domain": "the public hostname the app is served at, inside the Cloudflare zone, e.g. palisade.example.com",
    "cloudflareZoneId": "the id of the Cloudflare zone holding the domain (32 hex characters)",
    "cloudflareAccountId": "the Cloudflare account id (32 hex characters), for the Turnstile widget",
    "image": "the app's container image, pinned by digest (registry/palisade@sha256:...)",
    "issuers": "the OpenID Providers the API trusts: a list of {issuer, audience}",
}


def _check(cfg: StackConfig) -> list[str]:
    """Cross-field and range checks; each message names the key and what is accepted."""
    p: list[str] = []
    ns = NAMESPACE

    if cfg.location not in defaults.AZURE_REGIONS:
        p.append(f"{ns}:location {cfg.location!r} is not an Azure region name (lower case, no spaces, e.g. "
                 "westeurope, swedencentral, eastus2)")
    if not _PREFIX.fullmatch(cfg.prefix):
        p.append(f"{ns}:prefix must be 2-10 lower-case letters or digits, starting with a letter "
                 "(it goes into globally unique names such as the vault's)")

    labels = cfg.domain.split(".")
    if cfg.domain != cfg.domain.lower() or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        p.append(f"{ns}:domain {cfg.domain!r} must be a lower-case DNS name such as palisade.example.com "
                 "(no scheme, no wildcard, no trailing dot)")
    for key, value in (("cloudflareZoneId", cfg.cloudflare_zone_id), ("cloudflareAccountId", cfg.cloudflare_account_id)):
        if not _CLOUDFLARE_ID.fullmatch(value):
            p.append(f"{ns}:{key} must be 32 lower-case hex characters (Cloudflare dashboard, Overview)")

    if "@sha256:" not in cfg.image and not cfg.allow_mutable_image_tag:
        p.append(f"{ns}:image must be pinned by digest (name@sha256:...) so every replica and the migration "
                 f"job run the same build; set {ns}:allowMutableImageTag to true to accept a tag deliberately")

    try:
        net = ipaddress.ip_network(cfg.address_space, strict=True)
    except ValueError:
        p.append(f"{ns}:addressSpace {cfg.address_space!r} is not a network in CIDR notation (e.g. 10.20.0.0/16)")
    else:
        if net.version != 4 or not any(net.subnet_of(r) for r in _RFC1918):  # type: ignore[arg-type]
            p.append(f"{ns}:addressSpace {cfg.address_space} is not a private (RFC 1918) IPv4 range: use a part of "
                     "10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
        elif net.prefixlen > 22:
            p.append(f"{ns}:addressSpace {cfg.address_space} is too small: at least a /22 is needed "
                     "(a /23 for Container Apps, a /24 each for PostgreSQL and private endpoints)")

    if cfg.postgres_version not in POSTGRES_VERSIONS:
        p.append(f"{ns}:postgresVersion must be one of {', '.join(POSTGRES_VERSIONS)} (16 or newer: RLS fixes, "
                 "security_invoker views)")
    if cfg.postgres_tier not in POSTGRES_TIERS:
        p.append(f"{ns}:postgresTier must be one of {', '.join(POSTGRES_TIERS)}")
    if cfg.postgres_high_availability not in POSTGRES_HA_MODES:
        p.append(f"{ns}:postgresHighAvailability must be one of {', '.join(POSTGRES_HA_MODES)}")
    elif cfg.postgres_high_availability != "Disabled" and cfg.postgres_tier == "Burstable":
        p.append(f"{ns}:postgresHighAvailability needs the GeneralPurpose or MemoryOptimized tier "
                 f"(set it to Disabled to run Burstable deliberately)")
    if cfg.postgres_storage_gb not in POSTGRES_STORAGE_GB:
        p.append(f"{ns}:postgresStorageGb must be one of {', '.join(map(str, POSTGRES_STORAGE_GB))}")
    if not 7 <= cfg.postgres_backup_retention_days <= 35:
        p.append(f"{ns}:postgresBackupRetentionDays must be between 7 and 35")
    if cfg.postgres_min_tls not in POSTGRES_MIN_TLS:
        p.append(f"{ns}:postgresMinTls must be TLSv1.3: the product promises TLS 1.3 end to end")
    for key, role in (("databaseName", cfg.database_name), ("appRole", cfg.app_role)):
        if not _ROLE.fullmatch(role):
            p.append(f"{ns}:{key} must be a lower-case PostgreSQL identifier (letters, digits, '_')")
    if cfg.app_role in ("azure_superuser", "azure_pg_admin", "admin", "administrator", "root", "postgres", "guest"):
        p.append(f"{ns}:appRole {cfg.app_role!r} is reserved by Azure Database for PostgreSQL")

    if cfg.kek_key_type not in KEK_KEY_TYPES:
        p.append(f"{ns}:kekKeyType must be RSA-HSM (default, Premium vault) or RSA")
    if cfg.kek_key_size not in KEK_KEY_SIZES:
        p.append(f"{ns}:kekKeySize must be one of {', '.join(map(str, KEK_KEY_SIZES))}")
    if not 30 <= cfg.kek_rotation_days <= 730:
        p.append(f"{ns}:kekRotationDays must be between 30 and 730")
    if not 7 <= cfg.soft_delete_retention_days <= 90:
        p.append(f"{ns}:softDeleteRetentionDays must be between 7 and 90")
    # Azure's bounds for a time-based retention policy.
    if not 1 <= cfg.audit_checkpoint_retention_days <= 146_000:
        p.append(f"{ns}:auditCheckpointRetentionDays must be between 1 and 146000")

    if cfg.min_replicas < 2:
        p.append(f"{ns}:minReplicas must be at least 2 (one replica is a single point of failure)")
    if cfg.max_replicas < cfg.min_replicas or cfg.max_replicas > 300:
        p.append(f"{ns}:maxReplicas must be between minReplicas and 300")
    if not 1 <= cfg.port <= 65535:
        p.append(f"{ns}:port must be a TCP port")
    if not re.fullmatch(r"\d+(\.\d+)?Gi", cfg.memory):
        p.append(f"{ns}:memory must look like 1Gi or 1.5Gi")
    if not 30 <= cfg.log_retention_days <= 730:
        p.append(f"{ns}:logRetentionDays must be between 30 and 730")
    for origin in cfg.cors_allow_origins:
        if origin in ("*", "null") or not origin.startswith("https://") or origin.rstrip("/") != origin:
            p.append(f"{ns}:corsAllowOrigins entry {origin!r} must be an exact https://host[:port] origin")
    for key, url in (("otlpEndpoint", cfg.otlp_endpoint), ("alertWebhookUrl", cfg.alert_webhook_url)):
        if url is not None and not url.startswith("https://"):
            p.append(f"{ns}:{key} must be an https URL")

    for country in cfg.blocked_countries:
        if not re.fullmatch(r"[A-Z]{2}", country) or country in ("XX", "T1"):
            p.append(f"{ns}:blockedCountries entry {country!r} must be an ISO 3166-1 alpha-2 code such as KP")
    for asn in cfg.blocked_asns:
        if not 0 < asn < 2**32:
            p.append(f"{ns}:blockedAsns entry {asn} is not an AS number")
    for path in (*cfg.challenge_paths, cfg.api_path_prefix):
        if not _PATH.fullmatch(path):
            p.append(f"{ns}: path {path!r} must start with '/' and use only letters, digits and / _ . ~ -")
    if not 1 <= cfg.edge_rate_limit_per_minute <= 10_000:
        p.append(f"{ns}:edgeRateLimitPerMinute must be between 1 and 10000")
    if cfg.hsts_max_age_seconds not in HSTS_MAX_AGES:
        p.append(f"{ns}:hstsMaxAgeSeconds must be 31536000 (one year, default) or 15552000 (six months)")
    if cfg.hsts_preload and (cfg.hsts_max_age_seconds < 31_536_000 or not cfg.hsts_include_subdomains):
        p.append(f"{ns}:hstsPreload needs a one-year max-age and hstsIncludeSubdomains")
    if (cfg.hsts_include_subdomains or cfg.hsts_preload) and not cfg.manage_zone_settings:
        p.append(f"{ns}:hstsIncludeSubdomains and hstsPreload are zone-wide edge settings: set manageZoneSettings too, "
                 "or leave them off (the app sends its own HSTS for its host name)")
    p += _check_alerting(cfg)
    return p


def load_secrets(config: Any) -> dict[str, Any]:
    """The optional secret keys that are set, each as a secret Output (never a plain value).

    An empty value (the Pulumi.yaml default) means unset.
    """
    out = {}
    for key in SECRET_KEYS:
        value = config.get(key)
        if value:
            out[key] = _secret(value)
    return out


def _secret(value: str) -> Any:
    import pulumi

    return pulumi.Output.secret(value)


def load(config: Any, all_keys: Mapping[str, Any] | None = None) -> StackConfig:
    """Read and validate the stack's `palisade:` keys from a `pulumi.Config("palisade")`.

    `all_keys` is the whole configuration map (namespaced keys), used only to catch misspelt keys:
    an override that is silently ignored is not a deliberate one.
    """
    raw: dict[str, Any] = {key: config.get(key) for key in KEYS}
    for full_key in all_keys or {}:
        namespace, _, key = full_key.partition(":")
        if namespace == NAMESPACE and key not in KEYS and key not in SECRET_KEYS:
            raw[key] = all_keys[full_key]  # reported as unknown by parse()
    return parse(raw)
