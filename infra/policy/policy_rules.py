"""The Palisade baseline as plain functions: resources in, violation messages out.

`__main__.py` turns each into a mandatory pulumi-policy rule; tests call them directly, on the
example stack's recorded resources with one weakening applied at a time
(tests/infra/test_policy_mutations.py). Properties are Pulumi's (camelCase) as the policy engine
sees them: a resource rule gets the resource's inputs, a stack rule every resource's outputs
(inputs plus what the provider reports back, such as an identity's principalId).

Every message reads `<type> <logical name>: <what is wrong>; fix: <what to set>`, so the engine's
report (which adds the URN) says which resource to change and how.

Deliberately independent of `palisade_infra`: a policy that imported the program's constants would
agree with the program by construction and check nothing. The ids below are Azure's and
Cloudflare's published ones; the secret name `admin-database-url` is the product's contract
(docs: the schema owner's URL, for the migration job alone).

Every rule, the weakenings it refuses, the opt-outs and what the pack cannot see (values resolved
at deploy time among them): infra/policy/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

Props = Mapping[str, Any]
Config = Mapping[str, Any]
NO_CONFIG: Config = MappingProxyType({})

POSTGRES_SERVER = "azure-native:dbforpostgresql:Server"
POSTGRES_FIREWALL_RULE = "azure-native:dbforpostgresql:FirewallRule"
POSTGRES_CONFIGURATION = "azure-native:dbforpostgresql:Configuration"
KEY_VAULT = "azure-native:keyvault:Vault"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
IMMUTABILITY_POLICY = "azure-native:storage:BlobContainerImmutabilityPolicy"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
USER_ASSIGNED_IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
CONTAINER_APP = "azure-native:app:ContainerApp"
CONTAINER_APP_JOB = "azure-native:app:Job"
MANAGED_ENVIRONMENT = "azure-native:app:ManagedEnvironment"
DIAGNOSTIC_SETTING = "azure-native:monitor:DiagnosticSetting"
ACTION_GROUP = "azure-native:monitor:ActionGroup"
SCHEDULED_QUERY_RULE = "azure-native:monitor:ScheduledQueryRule"
METRIC_ALERT = "azure-native:monitor:MetricAlert"
ACTIVITY_LOG_ALERT = "azure-native:monitor:ActivityLogAlert"
ALERT_RULES = (SCHEDULED_QUERY_RULE, METRIC_ALERT, ACTIVITY_LOG_ALERT)
ZONE_SETTING = "cloudflare:index/zoneSetting:ZoneSetting"
HOSTNAME_TLS_SETTING = "cloudflare:index/hostnameTlsSetting:HostnameTlsSetting"
RULESET = "cloudflare:index/ruleset:Ruleset"
DNS_RECORD = "cloudflare:index/dnsRecord:DnsRecord"
TUNNEL = "cloudflare:index/zeroTrustTunnelCloudflared:ZeroTrustTunnelCloudflared"
TUNNEL_CONFIG = "cloudflare:index/zeroTrustTunnelCloudflaredConfig:ZeroTrustTunnelCloudflaredConfig"

CLOUDFLARE_MANAGED_RULESET = "efb7b8c949ac4650a09736fc376e9aee"
CLOUDFLARE_OWASP_RULESET = "4814384a9e5d4991b9815dcfc25d2f1f"
MANAGED_RULESETS = {CLOUDFLARE_MANAGED_RULESET: "Cloudflare Managed Ruleset", CLOUDFLARE_OWASP_RULESET: "OWASP Core Ruleset"}
# OWASP Core: 949110 "Inbound Anomaly Score Exceeded", the rule that acts on the score.
OWASP_ANOMALY_SCORE_RULE = "6179ae15870a4bb7b2d480d4843b323c"
# Cloudflare's default score threshold (Medium, 40); a higher one blocks fewer attacks.
OWASP_DEFAULT_THRESHOLD = 40
# Paranoia levels above PL1 are off by default; disabling them by tag is not a weakening.
_OPTIONAL_OWASP_TAGS = {"paranoia-level-2", "paranoia-level-3", "paranoia-level-4"}
# Requests per minute per client above which an edge rate limit stops being one.
RATE_LIMIT_CEILING_PER_MINUTE = 10_000
CUSTOM_RULE_ACTIONS = {"block", "managed_challenge", "challenge", "js_challenge"}

SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
CHECKPOINT_KEY = "palisade-audit-checkpoint"  # the one key Crypto User may be granted on (infra/palisade_infra/vault.py)
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
# Built-in roles an identity of this stack may hold, each on the one kind of item it uses (and, for
# a role that can do more than its purpose needs, on that one item only).
ALLOWED_ROLES = {
    SECRETS_USER: ("Key Vault Secrets User", "secrets"),
    CRYPTO_SERVICE_ENCRYPTION_USER: ("Key Vault Crypto Service Encryption User", "keys"),
    CRYPTO_USER: ("Key Vault Crypto User", "keys", CHECKPOINT_KEY),  # sign/verify are that key's only key_ops
    STORAGE_BLOB_DATA_CONTRIBUTOR: ("Storage Blob Data Contributor", "containers"),  # the immutable checkpoint container
}
# What must be watched: alert rule names end with these (`<prefix>-<what>`).
REQUIRED_ALERTS = {
    "postgres-failed-logins": "failed PostgreSQL logins",
    "keyvault-access-denied": "Key Vault requests refused",
    "api-5xx-rate": "the API's server error rate",
    "app-alerts-critical": "the app's critical alerts",
    "app-alerts-warning": "the app's warning alerts",
    "api-restarts": "API replicas restarting",
    "migration-failed": "a failed migration job",
}
# The schema owner's credential: the migration job's alone.
ADMIN_DATABASE_URL_SECRET = "admin-database-url"

_ITEM_SCOPE = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/(?:Microsoft\.KeyVault/vaults/[^/]+/(?P<kind>secrets|keys)"
    r"|Microsoft\.Storage/storageAccounts/[^/]+/blobServices/default/(?P<blob>containers))/(?P<item>[^/]+)",
    re.IGNORECASE,
)
_PROVIDER_PATH = r"/providers/{provider}/(?P<name>[^/]+)$"
_VAULT_URI = re.compile(_PROVIDER_PATH.format(provider=r"Microsoft\.KeyVault/vaults"), re.IGNORECASE)
_SERVER_URI = re.compile(_PROVIDER_PATH.format(provider=r"Microsoft\.DBforPostgreSQL/flexibleServers"), re.IGNORECASE)
_IDENTITY_ID = re.compile(_PROVIDER_PATH.format(provider=r"Microsoft\.ManagedIdentity/userAssignedIdentities"), re.IGNORECASE)
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_LOOPBACK_SERVICE = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\]):\d{1,5}/?")
# Names that hold a secret end with what it is (PALISADE_TURNSTILE_SECRET, DB_PASSWORD); names
# that merely mention one do not (PALISADE_SECRET_PROVIDER, PALISADE_SECRETS_DIR).
_SENSITIVE_NAME = re.compile(
    r"(SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE_KEY|API_KEY|APIKEY|CREDENTIALS?|DSN|CONNECTION_STRING|DATABASE_URL"
    r"|OTLP(_[A-Z]+)?_HEADERS)$",
    re.IGNORECASE,
)
_SENSITIVE_VALUE = (
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE),  # URL with a password
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(AccountKey|SharedAccessKey|InstrumentationKey|Password|Pwd)=", re.IGNORECASE),
    re.compile(r"^eyJ[A-Za-z0-9_-]{20,}"),  # a JWT or a base64 JSON token (a tunnel token)
)
_TLS_VERSIONS = {"1.0": 0, "1.1": 1, "1.2": 2, "1.3": 3}


@dataclass(frozen=True)
class Resource:
    """One resource as a rule sees it: its type token, logical name, properties and URN."""

    type: str
    name: str
    props: Props
    urn: str = ""


@dataclass(frozen=True)
class Violation:
    """A stack rule's finding; `urn` names the resource it is about (None: the stack as a whole)."""

    message: str
    urn: str | None = None


def _get(props: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(props, Mapping):
            return None
        props = props.get(key)
    return props


def _list(value: Any) -> list[Any]:
    # The engine hands lists over as a Sequence proxy, not a list.
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else []


def short_type(token: str) -> str:
    """azure-native:keyvault:Vault -> keyvault:Vault; cloudflare:index/ruleset:Ruleset -> cloudflare:Ruleset."""
    package, _, rest = token.partition(":")
    module, _, kind = rest.rpartition(":")
    return f"{package}:{kind}" if package == "cloudflare" else f"{module}:{kind}"


def label(r: Resource) -> str:
    return f"{short_type(r.type)} {r.name}"


def _say(r: Resource | None, wrong: str, fix: str) -> str:
    return f"{label(r) if r is not None else 'stack'}: {wrong}; fix: {fix}"


def _on(r: Resource | None, wrong: str, fix: str) -> Violation:
    return Violation(_say(r, wrong, fix), (r.urn or None) if r is not None else None)


def _of(resources: Iterable[Resource], *types: str) -> list[Resource]:
    return [r for r in resources if r.type in types]


def _truthy(config: Config, key: str) -> bool:
    return (config or {}).get(key) is True


# --- PostgreSQL --------------------------------------------------------------------------------

def postgres_private_only(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """No public PostgreSQL: VNet-integrated, public network access disabled, no firewall rules."""
    if r.type == POSTGRES_FIREWALL_RULE:
        return [_say(r, "a firewall rule opens the server to public addresses", "delete it; use private access only")]
    if r.type != POSTGRES_SERVER:
        return []
    p, out = r.props, []
    if _get(p, "network", "publicNetworkAccess") != "Disabled":
        out.append(_say(r, "public network access is not disabled", "set network.publicNetworkAccess to Disabled"))
    if not _get(p, "network", "delegatedSubnetResourceId"):
        out.append(_say(r, "the server is not VNet-integrated", "set network.delegatedSubnetResourceId to the delegated subnet"))
    version = str(p.get("version") or "")
    if not version.isdigit() or int(version) < 16:
        out.append(_say(r, f"PostgreSQL {version or '(unset)'} lacks the RLS fixes", "set version to 16 or newer"))
    if _get(p, "authConfig", "passwordAuth") != "Disabled":
        out.append(_say(r, "password authentication is on (a database password can be stolen and replayed)",
                        "set authConfig.passwordAuth to Disabled; the workloads sign in with Entra ID tokens"))
    if _get(p, "authConfig", "activeDirectoryAuth") != "Enabled":
        out.append(_say(r, "Microsoft Entra ID authentication is off", "set authConfig.activeDirectoryAuth to Enabled"))
    if p.get("administratorLoginPassword"):
        out.append(_say(r, "an administrator password is set", "remove administratorLogin and administratorLoginPassword"))
    return out


def postgres_tls(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """TLS required for every connection, TLS 1.3 only (end to end, as the product promises)."""
    if r.type != POSTGRES_CONFIGURATION:
        return []
    name, value = r.props.get("configurationName"), str(r.props.get("value") or "")
    if name == "require_secure_transport" and value.lower() != "on":
        return [_say(r, f"require_secure_transport is {value or '(unset)'}", "set value to on")]
    if name == "ssl_min_protocol_version" and value != "TLSv1.3":
        return [_say(r, f"ssl_min_protocol_version is {value or '(unset)'}", "set value to TLSv1.3")]
    return []


def postgres_resilience(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """Backups kept at least 7 days, geo-redundant, and a standby (HA) unless the pack's config opts out."""
    if r.type != POSTGRES_SERVER:
        return []
    p, out = r.props, []
    retention = _get(p, "backup", "backupRetentionDays")
    if not isinstance(retention, (int, float)) or retention < 7:
        out.append(_say(r, f"backups are kept {retention if retention is not None else '(default)'} days",
                        "set backup.backupRetentionDays to at least 7"))
    if _get(p, "backup", "geoRedundantBackup") != "Enabled" and not _truthy(config, "allowWithoutGeoRedundantBackup"):
        out.append(_say(r, "backups are not geo-redundant", "set backup.geoRedundantBackup to Enabled "
                        "(or opt out with the policy config allowWithoutGeoRedundantBackup)"))
    if _get(p, "highAvailability", "mode") in (None, "Disabled") and not _truthy(config, "allowWithoutHighAvailability"):
        out.append(_say(r, "high availability is disabled", "set highAvailability.mode to ZoneRedundant or SameZone "
                        "(or opt out with the policy config allowWithoutHighAvailability)"))
    return out


# --- Key Vault and RBAC ------------------------------------------------------------------------

def key_vault_baseline(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """RBAC only, purge protection, soft delete, private endpoint only, network ACLs deny."""
    if r.type != KEY_VAULT:
        return []
    p, out = r.props.get("properties") or {}, []
    if p.get("enableRbacAuthorization") is not True:
        out.append(_say(r, "access policies, not RBAC, authorize the vault", "set properties.enableRbacAuthorization to true"))
    if p.get("accessPolicies"):
        out.append(_say(r, "the vault carries access policies", "set properties.accessPolicies to [] (RBAC only)"))
    if p.get("enablePurgeProtection") is not True:
        out.append(_say(r, "purge protection is off", "set properties.enablePurgeProtection to true"))
    if p.get("enableSoftDelete") is False:
        out.append(_say(r, "soft delete is off", "set properties.enableSoftDelete to true"))
    if p.get("publicNetworkAccess") != "Disabled":
        out.append(_say(r, "public network access is not disabled",
                        "set properties.publicNetworkAccess to Disabled (reach it through its private endpoint)"))
    acls = p.get("networkAcls") or {}
    if acls.get("defaultAction") != "Deny":
        out.append(_say(r, "network ACLs do not default to Deny", "set properties.networkAcls.defaultAction to Deny"))
    if acls.get("ipRules") or acls.get("virtualNetworkRules"):
        out.append(_say(r, "network ACLs admit addresses or subnets", "set networkAcls.ipRules and virtualNetworkRules to []"))
    return out


def checkpoint_store_baseline(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """The checkpoint account takes Entra ID only (no shared key), TLS 1.2+, no public blobs or network;
    its container's immutability policy keeps blobs write-once while letting them be appended to."""
    if r.type == IMMUTABILITY_POLICY:
        out = []
        if r.props.get("allowProtectedAppendWrites") is not True:
            out.append(_say(r, "protected append writes are not allowed: the app cannot append its checkpoints",
                            "set allowProtectedAppendWrites to true"))
        days = r.props.get("immutabilityPeriodSinceCreationInDays")
        if not isinstance(days, int | float) or days < 1:
            out.append(_say(r, "no retention period", "set immutabilityPeriodSinceCreationInDays to 1 or more"))
        return out
    if r.type != STORAGE_ACCOUNT:
        return []
    p, out = r.props, []
    if p.get("allowSharedKeyAccess") is not False:
        out.append(_say(r, "shared key (account key and SAS) access is allowed", "set allowSharedKeyAccess to false"))
    if p.get("minimumTlsVersion") not in ("TLS1_2", "TLS1_3"):
        out.append(_say(r, f"minimum TLS version {p.get('minimumTlsVersion')!r}", "set minimumTlsVersion to TLS1_2"))
    if p.get("allowBlobPublicAccess") is not False:
        out.append(_say(r, "public blob access is allowed", "set allowBlobPublicAccess to false"))
    if p.get("publicNetworkAccess") != "Disabled":
        out.append(_say(r, "public network access is not disabled",
                        "set publicNetworkAccess to Disabled (reach it through its private endpoint)"))
    return out


def _role_guid(props: Props) -> str:
    return str(props.get("roleDefinitionId") or "").rstrip("/").rsplit("/", 1)[-1].lower()


def role_assignment_scope(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """Each grant names one secret, one key or one blob container: never a vault, account, resource group or subscription."""
    if r.type != ROLE_ASSIGNMENT:
        return []
    scope = str(r.props.get("scope") or "").rstrip("/")
    match = _ITEM_SCOPE.fullmatch(scope)
    if not match:
        return [_say(r, f"scope {scope or '(unset)'!r} is broader than one Key Vault secret or key or one blob container",
                     "scope the grant to …/vaults/<vault>/secrets/<name>, …/vaults/<vault>/keys/<name> or "
                     "…/storageAccounts/<account>/blobServices/default/containers/<name>")]
    role = ALLOWED_ROLES.get(_role_guid(r.props))
    kind = (match["kind"] or match["blob"]).lower()
    if role and kind != role[1]:
        return [_say(r, f"{role[0]} is granted on {kind}/{match['item']}",
                     f"grant {role[0]} on one {role[1].rstrip('s')} only")]
    if role and len(role) > 2 and match["item"].lower() != role[2]:
        return [_say(r, f"{role[0]} is granted on {kind}/{match['item']}", f"grant {role[0]} on {kind}/{role[2]} only")]
    return []


def role_assignment_least_privilege(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """Only the roles in ALLOWED_ROLES: read one secret, wrap/unwrap or sign with one key, append to one container."""
    if r.type != ROLE_ASSIGNMENT:
        return []
    role = _role_guid(r.props)
    if role not in ALLOWED_ROLES:
        allowed = " or ".join(f"{name} ({guid})" for guid, (name, *_) in ALLOWED_ROLES.items())
        return [_say(r, f"role {role or '(unset)'} is not one this stack grants", f"grant {allowed} instead")]
    return []


# --- Container Apps ------------------------------------------------------------------------------

def _containers(props: Props) -> Iterable[Mapping[str, Any]]:
    template = props.get("template") or {}
    for key in ("containers", "initContainers"):
        for container in _list(template.get(key)):
            if isinstance(container, Mapping):
                yield container


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(v.get("name")): v for v in _list(container.get("env")) if isinstance(v, Mapping)}


def _is_palisade(container: Mapping[str, Any]) -> bool:
    command = [str(c) for c in _list(container.get("command"))]
    return (bool(command) and command[0] == "palisade") or any(n.startswith("PALISADE_") for n in _env(container))


def _is_cloudflared(container: Mapping[str, Any]) -> bool:
    image = str(container.get("image") or "").rsplit("/", 1)[-1]
    return image.startswith("cloudflared") or "cloudflared" in [str(c) for c in _list(container.get("command"))]


def container_app_secrets(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """No plaintext secret: Container Apps secrets are Key Vault references resolved by an
    identity, no environment variable carries a secret-looking value inline, and the API never
    references the schema owner's URL."""
    if r.type not in (CONTAINER_APP, CONTAINER_APP_JOB):
        return []
    out = []
    for secret in _list(_get(r.props, "configuration", "secrets")):
        name = secret.get("name", "?")
        if secret.get("value") is not None:
            out.append(_say(r, f"secret {name!r} has an inline value", "reference Key Vault instead (keyVaultUrl + identity)"))
        url = str(secret.get("keyVaultUrl") or "")
        if not url.startswith("https://"):
            out.append(_say(r, f"secret {name!r} is not a Key Vault reference", "set keyVaultUrl to the secret's https URI"))
        if not secret.get("identity"):
            out.append(_say(r, f"secret {name!r} names no identity to read it", "set identity to the managed identity's id"))
        if r.type == CONTAINER_APP and url.rstrip("/").rsplit("/", 1)[-1] == ADMIN_DATABASE_URL_SECRET:
            out.append(_say(r, f"secret {name!r} is the schema owner's URL ({ADMIN_DATABASE_URL_SECRET})",
                            "remove it; only the migration job may read it"))
    for container in _containers(r.props):
        for name, var in _env(container).items():
            value = var.get("value")
            if value is None:
                continue
            if _SENSITIVE_NAME.search(name):
                out.append(_say(r, f"container {container.get('name')!r}: {name} looks secret and is set inline",
                                "use secretRef to a Key Vault reference"))
            elif any(p.search(str(value)) for p in _SENSITIVE_VALUE):
                out.append(_say(r, f"container {container.get('name')!r}: {name} carries a credential inline",
                                "use secretRef to a Key Vault reference"))
    return out


def container_app_production_settings(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """The API and the migration job run Palisade in production mode with the Key Vault secret provider."""
    if r.type not in (CONTAINER_APP, CONTAINER_APP_JOB):
        return []
    palisade = [c for c in _containers(r.props) if _is_palisade(c)]
    if not palisade:
        return [_say(r, "no container runs Palisade (no `palisade` command, no PALISADE_* setting)",
                     "run the Palisade image with PALISADE_MODE=production")]
    out = []
    for container in palisade:
        env = _env(container)
        for name, expected in (("PALISADE_MODE", "production"), ("PALISADE_SECRET_PROVIDER", "keyvault")):
            value = _get(env, name, "value")
            if value != expected:
                out.append(_say(r, f"container {container.get('name')!r}: {name} is {value or '(unset)'}",
                                f"set {name}={expected}"))
    return out


def container_images_pinned(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """Palisade's image is pinned by digest (@sha256:…), so every replica and the migration job run
    the reviewed build; a sidecar's image names at least an exact version (never latest)."""
    if r.type not in (CONTAINER_APP, CONTAINER_APP_JOB):
        return []
    out = []
    for c in _containers(r.props):
        image = str(c.get("image") or "")
        if _DIGEST.search(image):
            continue
        if _is_palisade(c):
            if not _truthy(config, "allowMutableTags"):
                out.append(_say(r, f"container {c.get('name')!r} runs {image or '(no image)'!r}, a mutable reference",
                                "pin the image by digest (name@sha256:<64 hex>)"))
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not re.fullmatch(r"v?\d+(\.\d+)+(-[\w.]+)?", tag):
            out.append(_say(r, f"sidecar {c.get('name')!r} runs {image or '(no image)'!r}, not an exact version",
                            "pin it by digest (name@sha256:<64 hex>) or at least an exact version tag"))
    return out


def container_app_no_public_ingress(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """No public origin: the API has no external ingress (Cloudflare reaches it through the tunnel)."""
    if r.type != CONTAINER_APP:
        return []
    ingress = _get(r.props, "configuration", "ingress")
    if not ingress:
        return []
    out = []
    if ingress.get("external") is not False:
        out.append(_say(r, "the ingress is external (a public origin beside the tunnel, whatever its IP rules)",
                        "remove configuration.ingress (cloudflared connects out) or set external: false"))
    if ingress.get("allowInsecure"):
        out.append(_say(r, "the ingress allows plain HTTP", "set configuration.ingress.allowInsecure to false"))
    return out


def container_environment_internal(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """The Container Apps environment is VNet-internal: no public load balancer at all."""
    if r.type != MANAGED_ENVIRONMENT:
        return []
    vnet = r.props.get("vnetConfiguration") or {}
    out = []
    if vnet.get("internal") is not True:
        out.append(_say(r, "the environment has a public endpoint", "set vnetConfiguration.internal to true"))
    if not vnet.get("infrastructureSubnetId"):
        out.append(_say(r, "the environment is not in the VNet", "set vnetConfiguration.infrastructureSubnetId"))
    return out


# --- Cloudflare: tunnel and DNS -----------------------------------------------------------------

def _ingress_rules(props: Props) -> list[Mapping[str, Any]]:
    return [i for i in _list(_get(props, "config", "ingresses")) if isinstance(i, Mapping)]


def tunnel_origin(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """The tunnel is remotely managed and routes only named hosts to loopback, everything else to 404."""
    if r.type == TUNNEL:
        if r.props.get("configSrc") != "cloudflare":
            return [_say(r, f"configSrc is {r.props.get('configSrc') or '(unset)'}: the routes live on the connector, "
                         "out of this stack's sight", "set configSrc to cloudflare and declare the routes here")]
        return []
    if r.type != TUNNEL_CONFIG:
        return []
    rules, out = _ingress_rules(r.props), []
    if not rules or rules[-1].get("hostname") or rules[-1].get("path") or rules[-1].get("service") != "http_status:404":
        out.append(_say(r, "the tunnel's routes do not end with a catch-all 404",
                        "end config.ingresses with {service: http_status:404} and no hostname"))
    for rule in rules[:-1]:
        host, service = str(rule.get("hostname") or ""), str(rule.get("service") or "")
        if not host:
            out.append(_say(r, f"a route to {service or '(unset)'} matches every host", "give each route but the last one hostname"))
        elif "*" in host:
            out.append(_say(r, f"route {host!r} is a wildcard", "route exactly the app's host name"))
        if not _LOOPBACK_SERVICE.fullmatch(service):
            out.append(_say(r, f"route {host or '*'!r} goes to {service or '(unset)'}, not the replica's loopback",
                            "set service to http://localhost:<port>"))
    return out


def dns_tunnel_record(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """A record pointing at a tunnel is proxied (served through the WAF, never the bare tunnel)."""
    if r.type != DNS_RECORD or not str(r.props.get("content") or "").lower().endswith(".cfargotunnel.com"):
        return []
    if r.props.get("proxied") is not True:
        return [_say(r, "the tunnel record is not proxied", "set proxied to true")]
    return []


# --- Cloudflare: rules ---------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_HOST_TERM = re.compile(r'http\.host\s*(?:eq|==)\s*"(?P<host>[^"]*)"')
_NEVER = {"false", "not true", "!true"}


def _unwrap(term: str) -> str:
    """`((x))` -> `x`, only when the outer parentheses enclose the whole term."""
    term = term.strip()
    while term.startswith("(") and term.endswith(")"):
        depth = 0
        for i, c in enumerate(term):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(term) - 1:
                return term
        term = term[1:-1].strip()
    return term


def conjuncts(expression: str) -> list[str] | None:
    """The terms a Cloudflare rule expression ANDs together; None when it ORs (or XORs) at the top.

    Strings are masked first so that operators inside them do not count.
    """
    strings: list[str] = []

    def keep(m: re.Match[str]) -> str:
        strings.append(m.group(0))
        return f"\x00{len(strings) - 1}\x00"

    def restore(term: str) -> str:
        return re.sub(r"\x00(\d+)\x00", lambda m: strings[int(m.group(1))], term)

    masked = _unwrap(_STRING.sub(keep, expression))
    terms, depth, start, i = [], 0, 0, 0
    while i < len(masked):
        c = masked[i]
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif depth == 0:
            op = re.compile(r"&&|\|\||\^\^|(?:and|or|xor)(?![\w.])").match(masked, i)
            if op and (op.group(0) in ("&&", "||", "^^") or i == 0 or not (masked[i - 1].isalnum() or masked[i - 1] in "._")):
                if op.group(0) not in ("and", "&&"):
                    return None
                terms.append(masked[start:i])
                i = start = op.end()
                continue
        i += 1
    terms.append(masked[start:])
    out: list[str] = []
    for term in terms:
        inner = _unwrap(term)
        nested = conjuncts(restore(inner)) if inner != term.strip() else None
        out.extend(nested if nested and len(nested) > 1 else [restore(inner)])
    return out


def expression_hosts(expression: str) -> set[str] | None:
    """The host names an expression is scoped to (`http.host eq "…"` ANDed in), None if unscoped."""
    terms = conjuncts(expression or "")
    if terms is None:
        return None
    hosts = {m["host"] for t in terms if (m := _HOST_TERM.fullmatch(t))}
    return hosts or None


def _rule_problems(r: Resource, index: int, rule: Mapping[str, Any], phase: str) -> list[str]:
    what = f"rule {index} ({rule.get('description') or rule.get('action') or '?'})"
    out = []
    expression = str(rule.get("expression") or "").strip()
    if rule.get("enabled") is False:
        out.append(_say(r, f"{what} is disabled", "set enabled to true"))
    terms = conjuncts(expression)
    hosts = expression_hosts(expression)
    if not expression or terms is None or hosts is None:
        out.append(_say(r, f"{what} expression {expression or '(empty)'!r} is not scoped to the app's host "
                        "(it reaches the customer's whole zone, or ORs around the host)",
                        'AND http.host eq "<domain>" into it, with no top-level or'))
    elif len(hosts) > 1:
        out.append(_say(r, f"{what} requires several hosts at once and never matches", 'keep one http.host eq "<domain>"'))
    if terms and any(_unwrap(t).lower() in _NEVER for t in terms):
        out.append(_say(r, f"{what} expression {expression!r} never matches", "remove the false term"))
    action = rule.get("action")
    if action in ("skip", "log"):
        out.append(_say(r, f"{what} has action {action} (lets requests through the WAF)", "remove the rule or make it block"))
    elif phase == "http_request_firewall_custom" and action not in CUSTOM_RULE_ACTIONS:
        out.append(_say(r, f"{what} has action {action or '(unset)'}", f"use one of {', '.join(sorted(CUSTOM_RULE_ACTIONS))}"))
    return out


def _override_problems(r: Resource, what: str, overrides: Mapping[str, Any]) -> list[str]:
    out = []
    if overrides.get("enabled") is False:
        out.append(_say(r, f"{what} is disabled through overrides.enabled", "remove overrides.enabled: false"))
    if overrides.get("action") == "log":
        out.append(_say(r, f"{what} only logs (overrides.action log)", "remove overrides.action or set it to block"))
    for kind in ("rules", "categories"):
        for item in _list(overrides.get(kind)):
            key = item.get("id") or item.get("category") or "?"
            if item.get("action") == "log":
                out.append(_say(r, f"{what}: {kind[:-1]} {key} only logs", "remove the override or set action block"))
            if item.get("enabled") is False and not (kind == "categories" and key in _OPTIONAL_OWASP_TAGS):
                out.append(_say(r, f"{what}: {kind[:-1]} {key} is disabled", "remove the override"))
    return out


def edge_rulesets(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """Every edge rule is enabled, scoped to the app's host, matches something, and never only logs
    or skips; the managed phase executes both managed rulesets, OWASP blocking at the default score."""
    if r.type != RULESET:
        return []
    phase = str(r.props.get("phase") or "")
    rules = [x for x in _list(r.props.get("rules")) if isinstance(x, Mapping)]
    out = []
    for i, rule in enumerate(rules):
        out += _rule_problems(r, i, rule, phase)
    if phase == "http_request_firewall_managed":
        for ruleset_id, ruleset_name in MANAGED_RULESETS.items():
            if not any(rule.get("action") == "execute" and _get(rule, "actionParameters", "id") == ruleset_id for rule in rules):
                out.append(_say(r, f"the {ruleset_name} is not executed",
                                f"add a rule with action execute, actionParameters.id {ruleset_id}, enabled"))
        for i, rule in enumerate(rules):
            what = f"rule {i} ({MANAGED_RULESETS.get(_get(rule, 'actionParameters', 'id'), 'managed ruleset')})"
            if rule.get("action") != "execute":
                out.append(_say(r, f"{what} has action {rule.get('action') or '(unset)'}", "set action to execute"))
            overrides = _get(rule, "actionParameters", "overrides") or {}
            out += _override_problems(r, what, overrides)
            if _get(rule, "actionParameters", "id") == CLOUDFLARE_OWASP_RULESET:
                anomaly = [o for o in _list(overrides.get("rules")) if o.get("id") == OWASP_ANOMALY_SCORE_RULE]
                threshold = _get(anomaly[0], "scoreThreshold") if anomaly else None
                if not anomaly or anomaly[0].get("action") != "block" or not isinstance(threshold, (int, float)) \
                        or threshold > OWASP_DEFAULT_THRESHOLD:
                    out.append(_say(r, f"{what}: the anomaly-score rule does not block at the default threshold "
                                    f"(action {anomaly[0].get('action') if anomaly else '(default)'}, threshold {threshold})",
                                    f"override rule {OWASP_ANOMALY_SCORE_RULE} with action block, "
                                    f"scoreThreshold <= {OWASP_DEFAULT_THRESHOLD}"))
    if phase == "http_ratelimit":
        ceiling = (config or {}).get("maxRequestsPerMinute") or RATE_LIMIT_CEILING_PER_MINUTE
        for i, rule in enumerate(rules):
            what = f"rate limit {i} ({rule.get('description') or '?'})"
            if rule.get("action") != "block":
                out.append(_say(r, f"{what} has action {rule.get('action') or '(unset)'}", "set action to block"))
            period, requests = _get(rule, "ratelimit", "period"), _get(rule, "ratelimit", "requestsPerPeriod")
            if not isinstance(period, (int, float)) or not isinstance(requests, (int, float)) or period <= 0 \
                    or requests * 60 / period > ceiling:
                out.append(_say(r, f"{what} admits {requests} requests per {period} s",
                                f"keep ratelimit.requestsPerPeriod at or below {ceiling} per minute"))
    if phase == "http_request_firewall_custom" or phase == "http_config_settings":
        for i, rule in enumerate(rules):
            params = rule.get("actionParameters") or {}
            if params.get("ssl") not in (None, "strict") or params.get("securityLevel") in ("off", "essentially_off"):
                out.append(_say(r, f"rule {i} lowers ssl or the security level for matching requests",
                                "remove actionParameters.ssl / securityLevel"))
    return out


def edge_tls(r: Resource, config: Config = NO_CONFIG) -> list[str]:
    """TLS 1.3 minimum on the app's host name; zone-wide settings are optional but never weaker."""
    if r.type == HOSTNAME_TLS_SETTING:
        if r.props.get("settingId") == "min_tls_version" and str(r.props.get("value")) != "1.3":
            return [_say(r, f"the host's minimum TLS is {r.props.get('value')}", "set value to 1.3")]
        return []
    if r.type != ZONE_SETTING:
        return []
    setting, value = r.props.get("settingId"), r.props.get("value")
    if setting == "min_tls_version" and _TLS_VERSIONS.get(str(value), -1) < _TLS_VERSIONS["1.2"]:
        return [_say(r, f"zone minimum TLS is {value}", "set value to 1.2 or 1.3, or leave the zone setting alone")]
    if setting == "tls_1_3" and value not in ("on", "zrt"):
        return [_say(r, "TLS 1.3 is off zone-wide", "set value to on")]
    if setting == "0rtt" and value != "off":
        return [_say(r, "0-RTT is on (replayable early data)", "set value to off")]
    if setting == "ssl" and value != "strict":
        return [_say(r, f"ssl is {value}, so the edge does not validate the origin", "set value to strict")]
    if setting == "always_use_https" and value != "on":
        return [_say(r, "always_use_https is off", "set value to on")]
    if setting == "security_header":
        hsts = _get(value, "strict_transport_security") or {}
        if not hsts.get("enabled") or float(hsts.get("max_age") or 0) < 15_552_000:
            return [_say(r, "HSTS is off or shorter than six months",
                         "set strict_transport_security.enabled true and max_age >= 15552000")]
    return []


# --- stack rules ---------------------------------------------------------------------------------

def app_hosts(resources: Sequence[Resource]) -> set[str]:
    """The app's host names: those the tunnel routes (the only way in)."""
    return {str(rule.get("hostname")).lower() for r in _of(resources, TUNNEL_CONFIG)
            for rule in _ingress_rules(r.props)[:-1] if rule.get("hostname")}


def edge_baseline_present(resources: Sequence[Resource], config: Config = NO_CONFIG) -> list[Violation]:
    """The WAF managed rulesets, a rate limit and TLS 1.3 for the app's host exist, and every edge
    rule is scoped to that host (not another, not the whole zone)."""
    out, hosts = [], app_hosts(resources)
    rulesets = _of(resources, RULESET)
    managed = [r for r in rulesets if r.props.get("phase") == "http_request_firewall_managed"]
    if not managed:
        out.append(_on(None, "no cloudflare:Ruleset in phase http_request_firewall_managed (no WAF)",
                       "deploy a Ruleset executing the Cloudflare Managed and OWASP Core rulesets"))
    if not any(r.props.get("phase") == "http_ratelimit" and any(x.get("enabled") is not False for x in _list(r.props.get("rules")))
               for r in rulesets):
        out.append(_on(None, "no cloudflare:Ruleset in phase http_ratelimit with an enabled rule (no edge rate limit)", "deploy a Ruleset with an enabled block rate limit"))
    for r in rulesets:
        for i, rule in enumerate(_list(r.props.get("rules"))):
            scoped = expression_hosts(str(rule.get("expression") or "")) or set()
            stray = {h.lower() for h in scoped} - hosts
            if stray:
                out.append(_on(r, f"rule {i} is scoped to {', '.join(sorted(stray))}, which the tunnel does not serve "
                               f"(the app is {', '.join(sorted(hosts)) or 'not routed'})",
                               'scope it with http.host eq "<the app host>"'))
    tls = {str(r.props.get("hostname")).lower() for r in _of(resources, HOSTNAME_TLS_SETTING)
           if r.props.get("settingId") == "min_tls_version" and str(r.props.get("value")) == "1.3"}
    for host in sorted(hosts - tls):
        out.append(_on(None, f"no cloudflare:HostnameTlsSetting min_tls_version 1.3 for {host}",
                       f"add a HostnameTlsSetting {{hostname: {host}, settingId: min_tls_version, value: '1.3'}}"))
    return out


def origin_through_tunnel(resources: Sequence[Resource], config: Config = NO_CONFIG) -> list[Violation]:
    """The only way to the API is the tunnel: one remotely managed tunnel, its config routing
    exactly the app's host, a proxied CNAME to it, and cloudflared running beside the API."""
    out = []
    tunnels, configs = _of(resources, TUNNEL), _of(resources, TUNNEL_CONFIG)
    if not tunnels or not configs:
        out.append(_on(None, "no cloudflare:ZeroTrustTunnelCloudflared with its cloudflare:ZeroTrustTunnelCloudflaredConfig serves the app",
                       "declare a ZeroTrustTunnelCloudflared (configSrc cloudflare) and its ZeroTrustTunnelCloudflaredConfig"))
    hosts = app_hosts(resources)
    for cfg in configs:
        routed = {str(x.get("hostname")).lower() for x in _ingress_rules(cfg.props)[:-1] if x.get("hostname")}
        if len(routed) != 1:
            out.append(_on(cfg, f"the tunnel routes {len(routed)} host names ({', '.join(sorted(routed))})",
                           "route exactly the app's host name, then the catch-all 404"))
    tunnel_ids = {str(c.props.get("tunnelId")).lower() for c in configs if c.props.get("tunnelId")}
    records = _of(resources, DNS_RECORD)
    for host in sorted(hosts):
        mine = [r for r in records if str(r.props.get("name") or "").lower().rstrip(".") == host]
        if not mine:
            out.append(_on(None, f"no cloudflare:DnsRecord for {host}", f"add a proxied CNAME {host} -> <tunnel id>.cfargotunnel.com"))
        for r in mine:
            content = str(r.props.get("content") or "").lower().rstrip(".")
            if r.props.get("type") != "CNAME" or not content.endswith(".cfargotunnel.com") \
                    or (tunnel_ids and content.removesuffix(".cfargotunnel.com") not in tunnel_ids):
                out.append(_on(r, f"{host} points at {r.props.get('type')} {content or '(empty)'}, not this stack's tunnel",
                               "make it the one CNAME to <tunnel id>.cfargotunnel.com"))
            if r.props.get("proxied") is not True:
                out.append(_on(r, f"{host} is not proxied (DNS only: no WAF, no rate limit)", "set proxied to true"))
    apps = _of(resources, CONTAINER_APP)
    if apps and not any(_is_cloudflared(c) for a in apps for c in _containers(a.props)):
        out.append(_on(apps[0], "no cloudflared container connects the API to the tunnel",
                       "add the cloudflared sidecar (tunnel run, token by secretRef)"))
    return out


def _diagnostics_for(resources: Sequence[Resource], pattern: re.Pattern[str], name: str) -> list[Resource]:
    return [d for d in _of(resources, DIAGNOSTIC_SETTING)
            if (m := pattern.search(str(d.props.get("resourceUri") or "").rstrip("/"))) and m["name"].lower() == name.lower()]


def _logs_problem(d: Resource, groups: set[str]) -> str | None:
    logs = [x for x in _list(d.props.get("logs")) if isinstance(x, Mapping) and x.get("enabled") is True]
    if not any(str(x.get("categoryGroup") or "").lower() in groups or x.get("category") for x in logs):
        return f"no log category ({' or '.join(sorted(groups))}) is enabled"
    if not (d.props.get("workspaceId") or d.props.get("storageAccountId") or d.props.get("eventHubAuthorizationRuleId")):
        return "the logs go nowhere (no workspaceId, storage account or event hub)"
    return None


def audit_logs_present(resources: Sequence[Resource], config: Config = NO_CONFIG) -> list[Violation]:
    """Every Key Vault and PostgreSQL server sends its logs (the vault: audit) to Log Analytics."""
    out = []
    for kind, types, pattern, name_key, groups in (
        ("vault", KEY_VAULT, _VAULT_URI, "vaultName", {"alllogs", "audit"}),
        ("server", POSTGRES_SERVER, _SERVER_URI, "serverName", {"alllogs", "audit"}),
    ):
        for r in _of(resources, types):
            name = str(r.props.get(name_key) or r.props.get("name") or "")
            settings = _diagnostics_for(resources, pattern, name)
            if not settings:
                out.append(_on(r, f"the {kind} has no diagnostic setting: its access is not logged",
                               f"add a DiagnosticSetting with resourceUri = the {kind}, logs [{{categoryGroup: allLogs, "
                               "enabled: true}], workspaceId = the Log Analytics workspace"))
            problems = [(d, p) for d in settings if (p := _logs_problem(d, groups))]
            if settings and len(problems) == len(settings):
                for d, problem in problems:
                    out.append(_on(d, f"diagnostic setting of {kind} {name}: {problem}",
                                   "enable categoryGroup allLogs (or audit) and send it to the workspace"))
    return out


def postgres_parameters_present(resources: Sequence[Resource], config: Config = NO_CONFIG) -> list[Violation]:
    """The TLS parameters exist for every server (without them the server defaults to TLS 1.2)."""
    out = []
    for r in _of(resources, POSTGRES_SERVER):
        name = str(r.props.get("serverName") or r.props.get("name") or "")
        present = {c.props.get("configurationName") for c in _of(resources, POSTGRES_CONFIGURATION)
                   if str(c.props.get("serverName") or "") == name}
        for parameter, value in (("require_secure_transport", "on"), ("ssl_min_protocol_version", "TLSv1.3")):
            if parameter not in present:
                out.append(_on(r, f"{parameter} is left at the server's default",
                               f"declare a Configuration {parameter} = {value}"))
    return out


def _identity_ids(props: Props) -> list[str]:
    ids = _get(props, "identity", "userAssignedIdentities")
    return [str(i) for i in (ids.keys() if isinstance(ids, Mapping) else _list(ids))]


def identity_grants(resources: Sequence[Resource], config: Config = NO_CONFIG) -> list[Violation]:
    """The API's identity may not read the schema owner's URL; the migration job's must."""
    identities = _of(resources, USER_ASSIGNED_IDENTITY)
    grants = _of(resources, ROLE_ASSIGNMENT)

    def principal(identity_id: str) -> str | None:
        m = _IDENTITY_ID.search(identity_id.rstrip("/"))
        for i in identities:
            if m and str(i.props.get("resourceName") or i.props.get("name") or "").lower() == m["name"].lower():
                return i.props.get("principalId")
        return None

    def reads_admin_url(principal_id: str) -> list[Resource]:
        return [g for g in grants if g.props.get("principalId") == principal_id
                and str(g.props.get("scope") or "").rstrip("/").lower().endswith(f"/secrets/{ADMIN_DATABASE_URL_SECRET}")]

    out = []
    for app in _of(resources, CONTAINER_APP):
        for identity_id in _identity_ids(app.props):
            pid = principal(identity_id)
            for grant in reads_admin_url(pid) if pid else []:
                out.append(_on(grant, f"grants {ADMIN_DATABASE_URL_SECRET} to the identity of {label(app)} "
                               "(the API would hold the schema owner's credential)",
                               "delete this role assignment; only the migration job's identity reads it"))
    for job in _of(resources, CONTAINER_APP_JOB):
        pids = [p for p in (principal(i) for i in _identity_ids(job.props)) if p]
        if pids and not any(reads_admin_url(p) for p in pids):
            out.append(_on(job, f"the job's identity is not granted {ADMIN_DATABASE_URL_SECRET}",
                           f"grant Key Vault Secrets User on …/secrets/{ADMIN_DATABASE_URL_SECRET} to the job's identity"))
    return out


def alerting_present(resources: Sequence[Resource], config: Config = NO_CONFIG) -> list[Violation]:
    """An enabled action group, and the alert rules that watch the baseline, enabled and notifying it."""
    out = []
    groups = _of(resources, ACTION_GROUP)
    enabled_groups = [g for g in groups if g.props.get("enabled") is True]
    for g in groups:
        if g.props.get("enabled") is not True:
            out.append(_on(g, "the action group is disabled (alerts notify nobody)", "set enabled to true"))
    if not enabled_groups:
        out.append(_on(None, "no enabled monitor:ActionGroup", "deploy an ActionGroup (enabled: true) with a receiver"))
    alerts = _of(resources, *ALERT_RULES)
    if not alerts:
        out.append(_on(None, "no alert rule (monitor:ScheduledQueryRule, MetricAlert or ActivityLogAlert)", "deploy the scheduled query rules of the alerting component"))
    names = {str(a.props.get("ruleName") or a.props.get("name") or "").lower() for a in alerts}
    for suffix, what in REQUIRED_ALERTS.items():
        if not any(n == suffix or n.endswith(f"-{suffix}") for n in names):
            out.append(_on(None, f"no alert rule *-{suffix}: {what} would go unnoticed",
                           f"declare the {suffix} alert rule (monitor:ScheduledQueryRule or MetricAlert), enabled"))
    group_names = {str(g.props.get("actionGroupName") or g.props.get("name") or "").lower() for g in enabled_groups}
    for a in alerts:
        if a.props.get("enabled") is False:
            out.append(_on(a, "the alert rule is disabled", "set enabled to true"))
        actions = a.props.get("actions")
        items = _list(_get(actions, "actionGroups")) if isinstance(actions, Mapping) else _list(actions)
        targets = [str(x.get("actionGroupId") if isinstance(x, Mapping) else x) for x in items]
        names = {t.rstrip("/").rsplit("/", 1)[-1].lower() for t in targets}
        if not names & group_names:
            out.append(_on(a, "the alert rule notifies no enabled action group of this stack",
                           "set actions.actionGroups to the action group's id"))
    return out


# --- registry ------------------------------------------------------------------------------------

ResourceRule = Callable[[Resource, Config], list[str]]
StackRule = Callable[[Sequence[Resource], Config], list[Violation]]

RESOURCE_RULES: dict[str, ResourceRule] = {
    "postgres-private-only": postgres_private_only,
    "postgres-tls-1-3": postgres_tls,
    "postgres-resilience": postgres_resilience,
    "key-vault-baseline": key_vault_baseline,
    "checkpoint-store-baseline": checkpoint_store_baseline,
    "role-assignment-one-secret-or-key": role_assignment_scope,
    "role-assignment-least-privilege": role_assignment_least_privilege,
    "container-app-no-plaintext-secrets": container_app_secrets,
    "container-app-production-settings": container_app_production_settings,
    "container-images-pinned": container_images_pinned,
    "container-app-no-public-ingress": container_app_no_public_ingress,
    "container-environment-internal": container_environment_internal,
    "tunnel-routes-loopback-only": tunnel_origin,
    "dns-tunnel-record-proxied": dns_tunnel_record,
    "edge-rules-enforce": edge_rulesets,
    "edge-tls-minimums": edge_tls,
}
STACK_RULES: dict[str, StackRule] = {
    "edge-baseline-present": edge_baseline_present,
    "origin-through-tunnel-only": origin_through_tunnel,
    "audit-logs-present": audit_logs_present,
    "postgres-tls-parameters-present": postgres_parameters_present,
    "admin-database-url-for-migrations-only": identity_grants,
    "alerting-present": alerting_present,
}
# Deliberate opt-outs, set with `pulumi up --policy-pack-config` ({"<rule>": {"<key>": true}}).
RULE_CONFIG: dict[str, dict[str, dict[str, Any]]] = {
    "postgres-resilience": {
        "allowWithoutHighAvailability": {"type": "boolean", "default": False,
                                         "description": "accept a server without a standby (e.g. Burstable)"},
        "allowWithoutGeoRedundantBackup": {"type": "boolean", "default": False,
                                           "description": "accept backups kept in one region only"},
    },
    "container-images-pinned": {
        "allowMutableTags": {"type": "boolean", "default": False, "description": "accept image tags instead of digests"},
    },
    "edge-rules-enforce": {
        "maxRequestsPerMinute": {"type": "integer", "default": RATE_LIMIT_CEILING_PER_MINUTE,
                                 "description": "the highest edge rate limit per client per minute accepted"},
    },
}


def evaluate(resources: Sequence[Resource], config: Mapping[str, Config] | None = None) -> list[tuple[str, str]]:
    """Every rule over a whole stack, as (rule name, message): what `pulumi up --policy-pack` would report."""
    config = config or {}
    out = [(name, message) for name, check in RESOURCE_RULES.items()
           for r in resources for message in check(r, config.get(name, {}))]
    out += [(name, v.message) for name, check in STACK_RULES.items() for v in check(resources, config.get(name, {}))]
    return out
