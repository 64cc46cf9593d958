"""The policy pack against deliberate weakenings: the threat model, one mutation at a time.

Each mutation starts from the example stack as the program declares it (every resource's recorded
inputs over the mocked provider's outputs, as the policy engine sees them), weakens ONE thing, and
the pack's rules (resource and stack rules, over the whole stack) must refuse it with a message
that names the resource to change and the fix. The unmodified stack passes.

A mutation returns the name the refusal must mention: the changed resource's logical name, or for
something removed, the type of what is missing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import policy_rules as rules
import pytest
from policy_rules import Resource
from pulumi_policy.proxy import unknown_checking_proxy

Stack = list[Resource]

HOST_TERM_RE = r'http.host eq "'


# --- finding and changing resources ---------------------------------------------------------------

def stack_of(run) -> Stack:
    def urn(r) -> str:
        return next((u for u in run.urns if u.endswith(f"::{r.name}") and f"{r.type}::" in u), "")

    return [Resource(r.type, r.name, copy.deepcopy({**r.state, **r.inputs}), urn(r)) for r in run.resources]


def all_of(stack: Stack, type_: str, where: Callable[[dict], bool] = lambda p: True) -> list[Resource]:
    return [r for r in stack if r.type == type_ and where(r.props)]


def one(stack: Stack, type_: str, where: Callable[[dict], bool] = lambda p: True) -> Resource:
    found = all_of(stack, type_, where)
    assert found, f"the example stack has no {type_} matching the mutation's target"
    return found[0]


def drop(stack: Stack, resource: Resource) -> None:
    stack.remove(resource)


def add(stack: Stack, type_: str, name: str, props: dict) -> str:
    stack.append(Resource(type_, name, props, f"urn:pulumi:example::palisade::{type_}::{name}"))
    return name


def phase(name: str) -> Callable[[dict], bool]:
    return lambda p: p.get("phase") == name


def api(stack: Stack) -> Resource:
    return one(stack, rules.CONTAINER_APP)


def job(stack: Stack) -> Resource:
    return one(stack, rules.CONTAINER_APP_JOB)


def container(resource: Resource, which: Callable[[dict], bool]) -> dict:
    return next(c for c in resource.props["template"]["containers"] if which(c))


def palisade_container(resource: Resource) -> dict:
    return container(resource, lambda c: (c.get("command") or [""])[0] == "palisade"
                     or any(v["name"].startswith("PALISADE_") for v in c.get("env") or []))


def cloudflared(resource: Resource) -> dict:
    return container(resource, lambda c: "cloudflared" in str(c.get("image")))


def set_env(c: dict, name: str, value: str) -> None:
    c["env"] = [v for v in c.get("env") or [] if v["name"] != name] + [{"name": name, "value": value}]


def host(stack: Stack) -> str:
    return sorted(rules.app_hosts(stack))[0]


def tunnel_config(stack: Stack) -> Resource:
    return one(stack, rules.TUNNEL_CONFIG)


def app_record(stack: Stack) -> Resource:
    return one(stack, rules.DNS_RECORD, lambda p: p.get("name") == host(stack))


def vault(stack: Stack) -> Resource:
    return one(stack, rules.KEY_VAULT)


def vault_id(stack: Stack) -> str:
    kv = vault(stack)
    return next(r.props["scope"].split("/secrets/")[0] for r in all_of(stack, rules.ROLE_ASSIGNMENT)
                if kv.props["vaultName"] in r.props["scope"])


def vault_diagnostics(stack: Stack) -> Resource:
    return one(stack, rules.DIAGNOSTIC_SETTING, lambda p: "/vaults/" in str(p.get("resourceUri")))


def server(stack: Stack) -> Resource:
    return one(stack, rules.POSTGRES_SERVER)


def parameter(stack: Stack, name: str) -> Resource:
    return one(stack, rules.POSTGRES_CONFIGURATION, lambda p: p.get("configurationName") == name)


def grant(stack: Stack, secret: str, principal_suffix: str = "") -> Resource:
    return one(stack, rules.ROLE_ASSIGNMENT, lambda p: p["scope"].endswith(f"/secrets/{secret}")
               and str(p["principalId"]).endswith(principal_suffix))


def identity_principal(stack: Stack, resource: Resource) -> str:
    ids = resource.props["identity"]["userAssignedIdentities"]
    identity_name = next(iter(ids)).rsplit("/", 1)[-1]
    return one(stack, rules.USER_ASSIGNED_IDENTITY, lambda p: p.get("resourceName") == identity_name).props["principalId"]


def role_definition(guid: str) -> str:
    return f"/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/{guid}"


# --- the mutations -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    id: str
    description: str
    apply: Callable[[Stack], str]  # weakens the stack in place, returns what the refusal must name


MUTATIONS: list[Mutation] = []


def mutation(id: str, description: str):
    def register(fn: Callable[[Stack], str]) -> Callable[[Stack], str]:
        MUTATIONS.append(Mutation(id, description, fn))
        return fn
    return register


# Origin: nothing but the tunnel reaches the API.

@mutation("ingress-external", "the API gets a public ingress restricted to Cloudflare's ranges")
def _(s):
    a = api(s)
    a.props["configuration"]["ingress"] = {"external": True, "targetPort": 8000, "allowInsecure": False,
                                          "ipSecurityRestrictions": [{"name": "cf", "action": "Allow", "ipAddressRange": "173.245.48.0/20"}]}
    return a.name


@mutation("ingress-split-internet", "a public ingress whose allow-list is 0.0.0.0/1 + 128.0.0.0/1 (the whole Internet)")
def _(s):
    a = api(s)
    a.props["configuration"]["ingress"] = {"external": True, "targetPort": 8000, "ipSecurityRestrictions": [
        {"name": "a", "action": "Allow", "ipAddressRange": "0.0.0.0/1"},
        {"name": "b", "action": "Allow", "ipAddressRange": "128.0.0.0/1"}]}
    return a.name


@mutation("ingress-plain-http", "an internal ingress that accepts plain HTTP")
def _(s):
    a = api(s)
    a.props["configuration"]["ingress"] = {"external": False, "targetPort": 8000, "allowInsecure": True}
    return a.name


@mutation("environment-public", "the Container Apps environment gets a public load balancer")
def _(s):
    env = one(s, rules.MANAGED_ENVIRONMENT)
    env.props["vnetConfiguration"]["internal"] = False
    return env.name


@mutation("environment-outside-vnet", "the Container Apps environment leaves the VNet")
def _(s):
    env = one(s, rules.MANAGED_ENVIRONMENT)
    del env.props["vnetConfiguration"]
    return env.name


@mutation("tunnel-locally-managed", "the tunnel's routes move to the connector (configSrc local), out of review")
def _(s):
    t = one(s, rules.TUNNEL)
    t.props["configSrc"] = "local"
    return t.name


@mutation("tunnel-no-catch-all", "the tunnel config loses its final catch-all 404")
def _(s):
    c = tunnel_config(s)
    c.props["config"]["ingresses"] = c.props["config"]["ingresses"][:-1]
    return c.name


@mutation("tunnel-catch-all-to-app", "the catch-all sends every host name to the API instead of 404")
def _(s):
    c = tunnel_config(s)
    c.props["config"]["ingresses"][-1]["service"] = c.props["config"]["ingresses"][0]["service"]
    return c.name


@mutation("tunnel-wildcard-host", "the tunnel routes *.<zone> to the API")
def _(s):
    c = tunnel_config(s)
    c.props["config"]["ingresses"][0]["hostname"] = "*." + host(s).split(".", 1)[1]
    return c.name


@mutation("tunnel-non-loopback", "the tunnel forwards to a VNet address instead of the replica's loopback")
def _(s):
    c = tunnel_config(s)
    c.props["config"]["ingresses"][0]["service"] = "http://10.42.0.10:8000"
    return c.name


@mutation("tunnel-second-host", "the tunnel routes a second host name to the API")
def _(s):
    c = tunnel_config(s)
    c.props["config"]["ingresses"].insert(1, {"hostname": "admin." + host(s), "service": "http://localhost:8000"})
    return c.name


@mutation("tunnel-removed", "no tunnel config: the app is not served through the tunnel")
def _(s):
    drop(s, tunnel_config(s))
    return "ZeroTrustTunnelCloudflaredConfig"


@mutation("cloudflared-removed", "the cloudflared sidecar is dropped from the API")
def _(s):
    a = api(s)
    a.props["template"]["containers"] = [c for c in a.props["template"]["containers"] if "cloudflared" not in str(c.get("image"))]
    return a.name


@mutation("dns-unproxied", "the app's record is DNS-only (the tunnel name exposed, no WAF)")
def _(s):
    r = app_record(s)
    r.props["proxied"] = False
    return r.name


@mutation("dns-to-azure", "the app's record points at an Azure name instead of the tunnel")
def _(s):
    r = app_record(s)
    r.props["content"] = "ca-palisade-api.happy-sky-0123abcd.westeurope.azurecontainerapps.io"
    return r.name


@mutation("dns-a-record", "the app's record becomes an A record to an IP address")
def _(s):
    r = app_record(s)
    r.props.update(type="A", content="20.0.0.1")
    return r.name


@mutation("dns-foreign-tunnel", "the app's record points at someone else's tunnel")
def _(s):
    r = app_record(s)
    r.props["content"] = "00000000-0000-4000-8000-000000000000.cfargotunnel.com"
    return r.name


@mutation("dns-extra-record", "a second, unproxied record for the app's host name")
def _(s):
    return add(s, rules.DNS_RECORD, "sneaky-a", {"name": host(s), "type": "A", "content": "20.0.0.1", "proxied": False,
                                                  "zoneId": app_record(s).props["zoneId"]})


@mutation("dns-removed", "the app's record is gone")
def _(s):
    drop(s, app_record(s))
    return "DnsRecord"


# Edge: WAF, rate limit, TLS for the app's host name.

def managed_rule(s: Stack, ruleset_id: str) -> tuple[Resource, dict]:
    r = one(s, rules.RULESET, phase("http_request_firewall_managed"))
    return r, next(x for x in r.props["rules"] if x.get("actionParameters", {}).get("id") == ruleset_id)


def anomaly_override(s: Stack) -> tuple[Resource, dict]:
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    return r, next(o for o in rule["actionParameters"]["overrides"]["rules"] if o["id"] == rules.OWASP_ANOMALY_SCORE_RULE)


@mutation("waf-owasp-logs", "the OWASP ruleset runs with overrides.action log (detect only)")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    rule["actionParameters"]["overrides"]["action"] = "log"
    return r.name


@mutation("waf-managed-logs", "the Cloudflare Managed Ruleset runs with overrides.action log")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["actionParameters"]["overrides"] = {"action": "log"}
    return r.name


@mutation("waf-anomaly-logs", "the OWASP anomaly-score rule logs instead of blocking")
def _(s):
    r, override = anomaly_override(s)
    override["action"] = "log"
    return r.name


@mutation("waf-anomaly-threshold-raised", "the OWASP anomaly threshold is raised to 60 (Low)")
def _(s):
    r, override = anomaly_override(s)
    override["scoreThreshold"] = 60
    return r.name


@mutation("waf-anomaly-override-removed", "the OWASP anomaly override is removed (Cloudflare's default action)")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    del rule["actionParameters"]["overrides"]
    return r.name


@mutation("waf-rule-disabled", "the Cloudflare Managed Ruleset rule is enabled: false")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["enabled"] = False
    return r.name


@mutation("waf-overrides-disabled", "the OWASP ruleset is switched off through overrides.enabled false")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    rule["actionParameters"]["overrides"]["enabled"] = False
    return r.name


@mutation("waf-category-disabled", "OWASP's paranoia-level-1 rules are disabled by tag")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    rule["actionParameters"]["overrides"]["categories"] = [{"category": "paranoia-level-1", "enabled": False}]
    return r.name


@mutation("waf-expression-false", "the managed rule's expression is false (never runs)")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["expression"] = "false"
    return r.name


@mutation("waf-host-and-false", "the managed rule is host-scoped but ANDed with false")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    rule["expression"] = f'(http.host eq "{host(s)}") and (false)'
    return r.name


@mutation("waf-expression-true", "the managed rule runs zone-wide (expression true)")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["expression"] = "true"
    return r.name


@mutation("waf-or-around-host", "the host scope is ORed away: host or true")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["expression"] = f'http.host eq "{host(s)}" or true'
    return r.name


@mutation("waf-other-host", "the WAF is scoped to a host name the tunnel does not serve")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["expression"] = '(http.host eq "nothing.example.com")'
    return r.name


@mutation("waf-managed-not-executed", "the Cloudflare Managed Ruleset rule's action becomes log")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_MANAGED_RULESET)
    rule["action"] = "log"
    return r.name


@mutation("waf-owasp-removed", "the OWASP rule is dropped from the managed phase")
def _(s):
    r, rule = managed_rule(s, rules.CLOUDFLARE_OWASP_RULESET)
    r.props["rules"].remove(rule)
    return r.name


@mutation("waf-ruleset-removed", "the managed WAF ruleset is gone")
def _(s):
    drop(s, one(s, rules.RULESET, phase("http_request_firewall_managed")))
    return "http_request_firewall_managed"


def custom_ruleset(s: Stack) -> Resource:
    return one(s, rules.RULESET, phase("http_request_firewall_custom"))


@mutation("custom-skip-rule", "a custom rule skips the managed WAF for the app")
def _(s):
    r = custom_ruleset(s)
    r.props["rules"].insert(0, {"action": "skip", "enabled": True, "expression": f'(http.host eq "{host(s)}")',
                                "actionParameters": {"phases": ["http_request_firewall_managed", "http_ratelimit"]}})
    return r.name


@mutation("custom-rule-logs", "a custom block rule is turned into log")
def _(s):
    r = custom_ruleset(s)
    r.props["rules"][0]["action"] = "log"
    return r.name


@mutation("custom-rule-unscoped", "a custom rule loses its host scope (touches the whole zone)")
def _(s):
    r = custom_ruleset(s)
    r.props["rules"][0]["expression"] = '(ip.src.country in {"KP"})'
    return r.name


@mutation("config-rule-ssl-off", "a configuration rule lowers SSL to flexible for the app's host")
def _(s):
    return add(s, rules.RULESET, "sneaky-config", {"kind": "zone", "phase": "http_config_settings", "rules": [
        {"action": "set_config", "enabled": True, "expression": f'(http.host eq "{host(s)}")',
         "actionParameters": {"ssl": "flexible"}}]})


def rate_limit(s: Stack) -> tuple[Resource, dict]:
    r = one(s, rules.RULESET, phase("http_ratelimit"))
    return r, r.props["rules"][0]


@mutation("ratelimit-disabled", "the rate limit rule is enabled: false")
def _(s):
    r, rule = rate_limit(s)
    rule["enabled"] = False
    return r.name


@mutation("ratelimit-absurd", "the rate limit admits a million requests per minute")
def _(s):
    r, rule = rate_limit(s)
    rule["ratelimit"]["requestsPerPeriod"] = 1_000_000
    return r.name


@mutation("ratelimit-never-matches", "the rate limit's expression is false")
def _(s):
    r, rule = rate_limit(s)
    rule["expression"] = "false"
    return r.name


@mutation("ratelimit-logs", "the rate limit only logs")
def _(s):
    r, rule = rate_limit(s)
    rule["action"] = "log"
    return r.name


@mutation("ratelimit-unscoped", "the rate limit counts the customer's whole zone")
def _(s):
    r, rule = rate_limit(s)
    rule["expression"] = '(starts_with(http.request.uri.path, "/api/"))'
    return r.name


@mutation("ratelimit-removed", "the rate limit ruleset is gone")
def _(s):
    drop(s, rate_limit(s)[0])
    return "http_ratelimit"


@mutation("host-tls-1-2", "the app host's minimum TLS drops to 1.2")
def _(s):
    r = one(s, rules.HOSTNAME_TLS_SETTING)
    r.props["value"] = "1.2"
    return r.name


@mutation("host-tls-removed", "no TLS minimum for the app's host name")
def _(s):
    drop(s, one(s, rules.HOSTNAME_TLS_SETTING))
    return "HostnameTlsSetting"


def zone_setting(setting: str, value) -> Callable[[Stack], str]:
    def apply(s: Stack) -> str:
        return add(s, rules.ZONE_SETTING, f"zone-{setting}", {"zoneId": app_record(s).props["zoneId"],
                                                              "settingId": setting, "value": value})
    return apply


for _id, _setting, _value, _what in (
    ("zone-ssl-flexible", "ssl", "flexible", "zone-wide SSL flexible (the edge talks to origins unvalidated)"),
    ("zone-min-tls-1-0", "min_tls_version", "1.0", "zone-wide minimum TLS 1.0"),
    ("zone-0rtt-on", "0rtt", "on", "zone-wide 0-RTT (replayable early data)"),
    ("zone-https-off", "always_use_https", "off", "zone-wide always_use_https off"),
    ("zone-hsts-short", "security_header", {"strict_transport_security": {"enabled": True, "max_age": 300}},
     "zone-wide HSTS of five minutes"),
):
    mutation(_id, _what)(zone_setting(_setting, _value))


# Key Vault.

def vault_property(key: str, value) -> Callable[[Stack], str]:
    def apply(s: Stack) -> str:
        kv = vault(s)
        kv.props["properties"][key] = value
        return kv.name
    return apply


for _id, _key, _value, _what in (
    ("kv-purge-protection-off", "enablePurgeProtection", False, "purge protection off (a deleted vault is gone)"),
    ("kv-soft-delete-off", "enableSoftDelete", False, "soft delete off"),
    ("kv-public", "publicNetworkAccess", "Enabled", "the vault reachable from the Internet"),
    ("kv-access-policies", "enableRbacAuthorization", False, "access policies instead of RBAC"),
    ("kv-acl-allow", "networkAcls", {"defaultAction": "Allow", "bypass": "AzureServices"}, "network ACLs default Allow"),
    ("kv-ip-rules", "networkAcls", {"defaultAction": "Deny", "ipRules": [{"value": "0.0.0.0/0"}]}, "an IP rule admitting anyone"),
):
    mutation(_id, _what)(vault_property(_key, _value))


@mutation("kv-audit-removed", "the vault's diagnostic setting (audit log) is removed")
def _(s):
    drop(s, vault_diagnostics(s))
    return vault(s).name


@mutation("kv-audit-disabled", "the vault's diagnostic setting keeps no logs")
def _(s):
    d = vault_diagnostics(s)
    for log in d.props["logs"]:
        log["enabled"] = False
    return d.name


@mutation("kv-audit-nowhere", "the vault's diagnostic setting sends its logs nowhere")
def _(s):
    d = vault_diagnostics(s)
    d.props.pop("workspaceId", None)
    return d.name


# Role assignments: one secret or one key, reader roles only, the admin URL for the job alone.

@mutation("grant-vault-wide-secrets-user", "Secrets User on the whole vault instead of one secret")
def _(s):
    g = grant(s, "database-url")
    g.props["scope"] = vault_id(s)
    return g.name


@mutation("grant-vault-wide-crypto", "Crypto Service Encryption User on the whole vault instead of the KEK")
def _(s):
    g = one(s, rules.ROLE_ASSIGNMENT, lambda p: "/keys/" in p["scope"])
    g.props["scope"] = vault_id(s)
    return g.name


@mutation("grant-resource-group", "a grant at resource-group scope")
def _(s):
    g = grant(s, "database-url")
    g.props["scope"] = vault_id(s).split("/providers/")[0]
    return g.name


@mutation("grant-subscription", "a grant at subscription scope")
def _(s):
    g = grant(s, "database-url")
    g.props["scope"] = "/".join(vault_id(s).split("/")[:3])
    return g.name


def kek_role(guid: str) -> Callable[[Stack], str]:
    def apply(s: Stack) -> str:
        g = one(s, rules.ROLE_ASSIGNMENT, lambda p: "/keys/" in p["scope"])
        g.props["roleDefinitionId"] = role_definition(guid)
        return g.name
    return apply


for _id, _guid, _what in (
    ("role-crypto-user", "12338af0-0e69-4776-bea7-57ae8d297424", "Key Vault Crypto User (encrypt, decrypt, sign) on the KEK"),
    ("role-crypto-officer", "14b46e9e-c2b7-41b4-b07b-48a6ebf60603", "Key Vault Crypto Officer on the KEK"),
    ("role-vault-administrator", "00482a5a-887f-4fb3-b363-3b7fe8e74483", "Key Vault Administrator"),
    ("role-owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner"),
    ("role-secrets-user-on-key", rules.SECRETS_USER, "Secrets User granted on a key"),
):
    mutation(_id, _what)(kek_role(_guid))


def checkpoint_account(s: Stack) -> Resource:
    return one(s, rules.STORAGE_ACCOUNT)


def checkpoint_grant(s: Stack) -> Resource:
    return one(s, rules.ROLE_ASSIGNMENT, lambda p: "/containers/" in p["scope"])


for _id, _prop, _value, _what in (
    ("checkpoints-shared-key", "allowSharedKeyAccess", True, "the checkpoint account takes its account key and SAS"),
    ("checkpoints-tls-1-0", "minimumTlsVersion", "TLS1_0", "the checkpoint account accepts TLS 1.0"),
    ("checkpoints-public-blobs", "allowBlobPublicAccess", True, "the checkpoint account allows public blobs"),
    ("checkpoints-public-network", "publicNetworkAccess", "Enabled", "the checkpoint account is reachable from the Internet"),
):
    def _weaken(s: Stack, prop: str = _prop, value: object = _value) -> str:
        account = checkpoint_account(s)
        account.props[prop] = value
        return account.name

    mutation(_id, _what)(_weaken)


@mutation("checkpoints-no-protected-appends", "the immutability policy stops the app appending (so it writes elsewhere)")
def _(s):
    policy = one(s, rules.IMMUTABILITY_POLICY)
    policy.props["allowProtectedAppendWrites"] = False
    return policy.name


@mutation("checkpoints-grant-on-account", "the app's blob role is granted on the whole storage account")
def _(s):
    g = checkpoint_grant(s)
    g.props["scope"] = g.props["scope"].split("/blobServices/")[0]
    return g.name


@mutation("crypto-user-on-kek", "Key Vault Crypto User, meant for the checkpoint key, is granted on the KEK")
def _(s):
    g = one(s, rules.ROLE_ASSIGNMENT, lambda p: p["scope"].endswith(f"/keys/{rules.CHECKPOINT_KEY}"))
    g.props["scope"] = g.props["scope"].replace(f"/keys/{rules.CHECKPOINT_KEY}", "/keys/palisade-kek")
    return g.name


@mutation("api-granted-admin-url", "the API's identity may read the schema owner's URL")
def _(s):
    template = grant(s, rules.ADMIN_DATABASE_URL_SECRET)
    props = copy.deepcopy(template.props)
    props["principalId"] = identity_principal(s, api(s))
    return add(s, rules.ROLE_ASSIGNMENT, "identity-app-reads-admin-database-url", props)


@mutation("job-loses-admin-url", "the migration job's identity loses the schema owner's URL")
def _(s):
    drop(s, grant(s, rules.ADMIN_DATABASE_URL_SECRET))
    return job(s).name


@mutation("api-references-admin-url", "the API references the admin URL as a Container Apps secret")
def _(s):
    a = api(s)
    kv_uri = f"https://{vault(s).props['vaultName']}.vault.azure.net/secrets/{rules.ADMIN_DATABASE_URL_SECRET}"
    ids = a.props["identity"]["userAssignedIdentities"]
    a.props["configuration"].setdefault("secrets", []).append(
        {"name": "admin-url", "keyVaultUrl": kv_uri, "identity": next(iter(ids))})
    return a.name


# Containers.

def with_secrets(s: Stack) -> Resource:
    return next(r for r in (api(s), job(s)) if r.props["configuration"].get("secrets"))


@mutation("secret-inline-value", "a Container Apps secret carries its value inline")
def _(s):
    r = with_secrets(s)
    secret = r.props["configuration"]["secrets"][0]
    r.props["configuration"]["secrets"][0] = {"name": secret["name"], "value": "eyJhIjoiMTIzNDU2Nzg5MGFiY2RlZiJ9"}
    return r.name


@mutation("secret-without-identity", "a Key Vault reference without the identity that reads it")
def _(s):
    r = with_secrets(s)
    del r.props["configuration"]["secrets"][0]["identity"]
    return r.name


@mutation("env-inline-database-url", "the database URL in an environment variable")
def _(s):
    a = api(s)
    set_env(palisade_container(a), "PALISADE_DATABASE_URL", "postgresql://palisade_app:pw@db/palisade")
    return a.name


@mutation("env-inline-tunnel-token", "the tunnel token inline in the cloudflared container")
def _(s):
    a = api(s)
    set_env(cloudflared(a), "TUNNEL_TOKEN", "eyJhIjoiMTIzNDU2Nzg5MGFiY2RlZiIsInQiOiJ4In0")
    return a.name


@mutation("api-development-mode", "the API runs with PALISADE_MODE=development")
def _(s):
    a = api(s)
    set_env(palisade_container(a), "PALISADE_MODE", "development")
    return a.name


@mutation("job-env-secret-provider", "the migration job reads secrets from the environment provider")
def _(s):
    j = job(s)
    set_env(palisade_container(j), "PALISADE_SECRET_PROVIDER", "env")
    return j.name


@mutation("api-image-tag", "the API image is a mutable tag")
def _(s):
    a = api(s)
    palisade_container(a)["image"] = "ghcr.io/example/palisade:latest"
    return a.name


@mutation("sidecar-image-tag", "the cloudflared sidecar image is a mutable tag")
def _(s):
    a = api(s)
    cloudflared(a)["image"] = "cloudflare/cloudflared:latest"
    return a.name


@mutation("sidecar-untagged", "the collector sidecar runs whatever its registry calls latest (no tag)")
def _(s):
    a = api(s)
    c = next(c for c in a.props["template"]["containers"] if c is not palisade_container(a) and c is not cloudflared(a))
    c["image"] = c["image"].split("@")[0].rsplit(":", 1)[0]
    return a.name


@mutation("job-image-tag", "the migration job's image is a mutable tag")
def _(s):
    j = job(s)
    palisade_container(j)["image"] = "ghcr.io/example/palisade:1.0"
    return j.name


# PostgreSQL.

def server_change(change: Callable[[dict], None]) -> Callable[[Stack], str]:
    def apply(s: Stack) -> str:
        srv = server(s)
        change(srv.props)
        return srv.name
    return apply


for _id, _change, _what in (
    ("pg-public", lambda p: p["network"].update(publicNetworkAccess="Enabled"), "public network access on"),
    ("pg-outside-vnet", lambda p: p["network"].pop("delegatedSubnetResourceId"), "no VNet integration"),
    ("pg-old-version", lambda p: p.update(version="14"), "PostgreSQL 14 (without the RLS fixes)"),
    ("pg-short-retention", lambda p: p["backup"].update(backupRetentionDays=3), "backups kept 3 days"),
    ("pg-local-backup", lambda p: p["backup"].update(geoRedundantBackup="Disabled"), "backups in one region"),
    ("pg-no-ha", lambda p: p["highAvailability"].update(mode="Disabled"), "no standby"),
    ("pg-password-auth", lambda p: p["authConfig"].update(passwordAuth="Enabled"), "password sign-in allowed"),
    ("pg-no-entra", lambda p: p["authConfig"].update(activeDirectoryAuth="Disabled"), "Entra ID sign-in off"),
    ("pg-admin-password", lambda p: p.update(administratorLogin="palisade_admin", administratorLoginPassword="pw"),
     "an administrator login with a password"),
):
    mutation(_id, _what)(server_change(_change))


@mutation("pg-firewall-rule", "a firewall rule opens the server to every address")
def _(s):
    return add(s, rules.POSTGRES_FIREWALL_RULE, "sneaky-firewall",
               {"serverName": server(s).props["serverName"], "startIpAddress": "0.0.0.0", "endIpAddress": "255.255.255.255"})


@mutation("pg-tls-1-2", "ssl_min_protocol_version TLSv1.2")
def _(s):
    p = parameter(s, "ssl_min_protocol_version")
    p.props["value"] = "TLSv1.2"
    return p.name


@mutation("pg-tls-optional", "require_secure_transport off")
def _(s):
    p = parameter(s, "require_secure_transport")
    p.props["value"] = "off"
    return p.name


@mutation("pg-tls-parameter-removed", "the ssl_min_protocol_version parameter is dropped (server default)")
def _(s):
    drop(s, parameter(s, "ssl_min_protocol_version"))
    return server(s).name


@mutation("pg-diagnostics-removed", "the server's diagnostic setting is removed")
def _(s):
    drop(s, one(s, rules.DIAGNOSTIC_SETTING, lambda p: "flexibleServers" in str(p.get("resourceUri"))))
    return server(s).name


# Monitoring.

@mutation("action-group-disabled", "the action group is disabled (alerts notify nobody)")
def _(s):
    g = one(s, rules.ACTION_GROUP)
    g.props["enabled"] = False
    return g.name


@mutation("action-group-removed", "the action group is gone")
def _(s):
    for g in all_of(s, rules.ACTION_GROUP):
        drop(s, g)
    return "ActionGroup"


@mutation("alert-disabled", "an alert rule is disabled")
def _(s):
    a = one(s, rules.SCHEDULED_QUERY_RULE)
    a.props["enabled"] = False
    return a.name


@mutation("alert-silent", "an alert rule notifies no action group")
def _(s):
    a = one(s, rules.SCHEDULED_QUERY_RULE)
    a.props["actions"] = {"actionGroups": []}
    return a.name


@mutation("alert-removed", "the Key Vault access-denied alert is removed")
def _(s):
    drop(s, one(s, rules.SCHEDULED_QUERY_RULE, lambda p: str(p.get("ruleName")).endswith("keyvault-access-denied")))
    return "keyvault-access-denied"


@mutation("metric-alert-disabled", "the failed-migration metric alert is disabled")
def _(s):
    a = one(s, rules.METRIC_ALERT, lambda p: str(p.get("ruleName")).endswith("migration-failed"))
    a.props["enabled"] = False
    return a.name


@mutation("alerts-removed", "every alert rule is gone")
def _(s):
    for a in all_of(s, rules.SCHEDULED_QUERY_RULE) + all_of(s, rules.METRIC_ALERT):
        drop(s, a)
    return "ScheduledQueryRule"


# --- the tests -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline(example) -> Stack:
    return stack_of(example)


def test_the_example_stack_passes(baseline):
    assert rules.evaluate(baseline) == []


def test_the_rules_read_the_engines_proxied_properties(baseline):
    """The engine wraps props (Mapping and Sequence proxies that raise on unknowns), not dicts and lists."""
    proxied = [Resource(r.type, r.name, unknown_checking_proxy(copy.deepcopy(r.props)), r.urn) for r in baseline]
    assert rules.evaluate(proxied) == []
    stack = [Resource(r.type, r.name, copy.deepcopy(r.props), r.urn) for r in baseline]
    expected = next(m for m in MUTATIONS if m.id == "waf-owasp-logs").apply(stack)
    proxied = [Resource(r.type, r.name, unknown_checking_proxy(r.props), r.urn) for r in stack]
    assert any(expected in message for _, message in rules.evaluate(proxied))


def test_the_threat_model_is_broad():
    assert len(MUTATIONS) >= 30
    assert len({m.id for m in MUTATIONS}) == len(MUTATIONS)


@pytest.mark.parametrize("m", MUTATIONS, ids=[m.id for m in MUTATIONS])
def test_the_pack_refuses(baseline, m: Mutation):
    stack = [Resource(r.type, r.name, copy.deepcopy(r.props), r.urn) for r in baseline]
    expected = m.apply(stack)
    violations = rules.evaluate(stack)
    assert violations, f"{m.id}: {m.description}: the pack accepted it"
    naming = [f"{rule}: {message}" for rule, message in violations if expected in message and "; fix: " in message]
    assert naming, f"{m.id}: no refusal names {expected!r} with a fix: {violations}"
