"""The Palisade baseline as plain functions: resource properties in, violation messages out.

`__main__.py` turns each into a mandatory pulumi-policy rule; tests call them directly with passing
and failing properties. Properties are Pulumi's (camelCase) as the policy engine sees them.

Deliberately independent of `palisade_infra`: a policy that imported the program's constants would
agree with the program by construction and check nothing. The ids below are Azure's and
Cloudflare's published ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

Props = Mapping[str, Any]

POSTGRES_SERVER = "azure-native:dbforpostgresql:Server"
POSTGRES_FIREWALL_RULE = "azure-native:dbforpostgresql:FirewallRule"
POSTGRES_CONFIGURATION = "azure-native:dbforpostgresql:Configuration"
KEY_VAULT = "azure-native:keyvault:Vault"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
CONTAINER_APP = "azure-native:app:ContainerApp"
CONTAINER_APP_JOB = "azure-native:app:Job"
ZONE_SETTING = "cloudflare:index/zoneSetting:ZoneSetting"
RULESET = "cloudflare:index/ruleset:Ruleset"

CLOUDFLARE_MANAGED_RULESET = "efb7b8c949ac4650a09736fc376e9aee"
CLOUDFLARE_OWASP_RULESET = "4814384a9e5d4991b9815dcfc25d2f1f"

# Built-in roles an identity of this stack may hold (data-plane roles of Key Vault only).
ALLOWED_ROLES = {
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "e147488a-f6f5-4113-8e2d-b22465e65bf6": "Key Vault Crypto Service Encryption User",
    "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
}

_VAULT_SCOPE = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/vaults/[^/]+(/(secrets|keys)/[^/]+)?",
    re.IGNORECASE,
)
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
)
_TLS_VERSIONS = {"1.0": 0, "1.1": 1, "1.2": 2, "1.3": 3}


def _get(props: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(props, Mapping):
            return None
        props = props.get(key)
    return props


# --- PostgreSQL --------------------------------------------------------------------------------

def postgres_private_only(resource_type: str, props: Props) -> list[str]:
    """No public PostgreSQL: VNet-integrated, public network access disabled, no firewall rules."""
    if resource_type == POSTGRES_FIREWALL_RULE:
        return ["PostgreSQL firewall rules open the server to public addresses; use private access only"]
    if resource_type != POSTGRES_SERVER:
        return []
    out = []
    if _get(props, "network", "publicNetworkAccess") != "Disabled":
        out.append("PostgreSQL server must set network.publicNetworkAccess to Disabled")
    if not _get(props, "network", "delegatedSubnetResourceId"):
        out.append("PostgreSQL server must be VNet-integrated (network.delegatedSubnetResourceId)")
    version = str(props.get("version") or "")
    if not version.isdigit() or int(version) < 16:
        out.append(f"PostgreSQL server version must be 16 or newer (got {version or 'unset'})")
    return out


def postgres_tls(resource_type: str, props: Props) -> list[str]:
    """TLS required for every connection, and nothing below TLS 1.2."""
    if resource_type != POSTGRES_CONFIGURATION:
        return []
    name, value = props.get("configurationName"), str(props.get("value") or "")
    if name == "require_secure_transport" and value.lower() != "on":
        return ["require_secure_transport must stay on"]
    if name == "ssl_min_protocol_version" and value not in ("TLSv1.2", "TLSv1.3"):
        return [f"ssl_min_protocol_version must be TLSv1.2 or TLSv1.3 (got {value or 'unset'})"]
    return []


# --- Key Vault and RBAC ------------------------------------------------------------------------

def key_vault_baseline(resource_type: str, props: Props) -> list[str]:
    """RBAC only, purge protection, soft delete, private endpoint only."""
    if resource_type != KEY_VAULT:
        return []
    p = props.get("properties") or {}
    out = []
    if p.get("enableRbacAuthorization") is not True:
        out.append("Key Vault must use RBAC authorization (enableRbacAuthorization: true)")
    if p.get("accessPolicies"):
        out.append("Key Vault must not carry access policies (RBAC only)")
    if p.get("enablePurgeProtection") is not True:
        out.append("Key Vault must enable purge protection")
    if p.get("enableSoftDelete") is False:
        out.append("Key Vault must keep soft delete on")
    if p.get("publicNetworkAccess") != "Disabled":
        out.append("Key Vault must disable public network access (reach it through its private endpoint)")
    if _get(p, "networkAcls", "defaultAction") != "Deny":
        out.append("Key Vault network ACLs must default to Deny")
    return out


def role_assignment_scope(resource_type: str, props: Props) -> list[str]:
    """No role assignment broader than the vault: its scope is a vault, or a secret or key in one."""
    if resource_type != ROLE_ASSIGNMENT:
        return []
    scope = str(props.get("scope") or "")
    if not _VAULT_SCOPE.fullmatch(scope.rstrip("/")):
        return [f"role assignment scope {scope or '(unset)'!r} is broader than a Key Vault (or is not one); "
                "assign roles on the vault, or on one of its secrets or keys"]
    return []


def role_assignment_least_privilege(resource_type: str, props: Props) -> list[str]:
    """Only Key Vault data-plane reader roles (secrets read, key wrap/unwrap) are granted."""
    if resource_type != ROLE_ASSIGNMENT:
        return []
    role = str(props.get("roleDefinitionId") or "").rstrip("/").rsplit("/", 1)[-1].lower()
    if role not in ALLOWED_ROLES:
        return [f"role {role or '(unset)'} is not one of the allowed Key Vault roles "
                f"({', '.join(sorted(ALLOWED_ROLES.values()))})"]
    return []


# --- Container Apps ------------------------------------------------------------------------------

def _containers(props: Props) -> Iterable[Mapping[str, Any]]:
    template = props.get("template") or {}
    for key in ("containers", "initContainers"):
        for container in template.get(key) or []:
            if isinstance(container, Mapping):
                yield container


def container_app_secrets(resource_type: str, props: Props) -> list[str]:
    """No plaintext secret: Container Apps secrets are Key Vault references resolved by an
    identity, and no environment variable carries a secret-looking value inline."""
    if resource_type not in (CONTAINER_APP, CONTAINER_APP_JOB):
        return []
    out = []
    for secret in _get(props, "configuration", "secrets") or []:
        name = secret.get("name", "?")
        if secret.get("value") is not None:
            out.append(f"secret {name!r} has an inline value; reference Key Vault (keyVaultUrl + identity) instead")
        if not str(secret.get("keyVaultUrl") or "").startswith("https://"):
            out.append(f"secret {name!r} must be a Key Vault reference (keyVaultUrl)")
        if not secret.get("identity"):
            out.append(f"secret {name!r} must name the managed identity that reads it")
    for container in _containers(props):
        for var in container.get("env") or []:
            name, value = str(var.get("name") or ""), var.get("value")
            if value is None:
                continue
            if _SENSITIVE_NAME.search(name):
                out.append(f"container {container.get('name')!r}: {name} looks secret and is set inline; use secretRef")
            elif any(p.search(str(value)) for p in _SENSITIVE_VALUE):
                out.append(f"container {container.get('name')!r}: {name} carries a credential inline; use secretRef")
    return out


def container_app_ingress(resource_type: str, props: Props) -> list[str]:
    """HTTPS only, and an external ingress admits only listed ranges (the CDN's)."""
    if resource_type != CONTAINER_APP:
        return []
    ingress = _get(props, "configuration", "ingress")
    if not ingress:
        return []
    out = []
    if ingress.get("allowInsecure"):
        out.append("ingress must not allow plain HTTP (allowInsecure: false)")
    if ingress.get("external"):
        rules = ingress.get("ipSecurityRestrictions") or []
        if not rules or any(r.get("action") != "Allow" for r in rules):
            out.append("an external ingress must list the ranges it admits (ipSecurityRestrictions, Allow only)")
        elif any(str(r.get("ipAddressRange")).endswith("/0") for r in rules):
            out.append("ingress restrictions must not admit the whole Internet (/0)")
    return out


# --- Cloudflare ----------------------------------------------------------------------------------

def edge_tls(resource_type: str, props: Props) -> list[str]:
    """Zone TLS minimums: TLS >= 1.2, TLS 1.3 on, strict origin validation, HTTPS only, HSTS."""
    if resource_type != ZONE_SETTING:
        return []
    setting, value = props.get("settingId"), props.get("value")
    if setting == "min_tls_version" and _TLS_VERSIONS.get(str(value), -1) < _TLS_VERSIONS["1.2"]:
        return [f"min_tls_version must be 1.2 or higher (got {value})"]
    if setting == "tls_1_3" and value not in ("on", "zrt"):
        return ["tls_1_3 must be on"]
    if setting == "ssl" and value != "strict":
        return [f"ssl must be strict (full, validating the origin certificate), got {value}"]
    if setting == "always_use_https" and value != "on":
        return ["always_use_https must be on"]
    if setting == "security_header":
        hsts = _get(value, "strict_transport_security") or {}
        if not hsts.get("enabled") or int(hsts.get("max_age") or 0) < 15_552_000:
            return ["HSTS must be enabled with a max-age of at least six months"]
    return []


def _executes(rule: Mapping[str, Any], ruleset_id: str) -> bool:
    return (rule.get("action") == "execute" and rule.get("enabled", True) is not False
            and _get(rule, "actionParameters", "id") == ruleset_id)


def waf_managed_rules_enabled(resource_type: str, props: Props) -> list[str]:
    """A managed-phase ruleset executes both managed rulesets and disables neither."""
    if resource_type != RULESET or props.get("phase") != "http_request_firewall_managed":
        return []
    rules = props.get("rules") or []
    out = []
    for ruleset_id, label in ((CLOUDFLARE_MANAGED_RULESET, "Cloudflare Managed Ruleset"),
                              (CLOUDFLARE_OWASP_RULESET, "OWASP Core Ruleset")):
        if not any(_executes(r, ruleset_id) for r in rules):
            out.append(f"the managed WAF phase must execute the {label} ({ruleset_id}), enabled")
    for rule in rules:
        if _get(rule, "actionParameters", "overrides", "enabled") is False:
            out.append("managed rulesets must not be disabled through overrides")
    return out


REQUIRED_ZONE_SETTINGS = ("ssl", "min_tls_version", "tls_1_3", "always_use_https", "security_header")


def edge_baseline_present(resources: Iterable[tuple[str, Props]]) -> list[str]:
    """Stack-wide: the WAF managed rulesets, a rate limit and the TLS zone settings are declared."""
    resources = list(resources)
    out = []
    managed = [p for t, p in resources if t == RULESET and p.get("phase") == "http_request_firewall_managed"]
    if not managed or any(waf_managed_rules_enabled(RULESET, p) for p in managed):
        out.append("the stack must deploy a WAF ruleset executing the Cloudflare Managed and OWASP Core rulesets")
    if not any(t == RULESET and p.get("phase") == "http_ratelimit" and p.get("rules") for t, p in resources):
        out.append("the stack must deploy an edge rate-limiting rule (phase http_ratelimit)")
    present = {p.get("settingId") for t, p in resources if t == ZONE_SETTING}
    missing = [s for s in REQUIRED_ZONE_SETTINGS if s not in present]
    if missing:
        out.append(f"the stack must set the zone's TLS settings: missing {', '.join(missing)}")
    return out


RESOURCE_RULES = {
    "postgres-private-only": postgres_private_only,
    "postgres-tls": postgres_tls,
    "key-vault-baseline": key_vault_baseline,
    "role-assignment-vault-scope": role_assignment_scope,
    "role-assignment-least-privilege": role_assignment_least_privilege,
    "container-app-no-plaintext-secrets": container_app_secrets,
    "container-app-ingress": container_app_ingress,
    "edge-tls-minimums": edge_tls,
    "waf-managed-rulesets-enabled": waf_managed_rules_enabled,
}
STACK_RULES = {"edge-baseline-present": edge_baseline_present}
