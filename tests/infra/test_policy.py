"""The policy pack's validators, each with passing and failing resources, and the pack's wiring."""

from __future__ import annotations

import copy
import runpy
from types import SimpleNamespace

import policy_rules as rules
import pulumi_policy
import pytest
from infra_harness import POLICY

VAULT_SCOPE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-palisade-x1"
SECRETS_USER = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/4633458b-17de-408a-b874-0445c86b69e6"


def with_changes(props: dict, **changes) -> dict:
    """A deep copy of props with dotted-path changes; a value of ... deletes the key."""
    out = copy.deepcopy(props)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = out
        for key in parents:
            target = target.setdefault(key, {})
        if value is ...:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return out


class TestPostgres:
    server = {"version": "16", "network": {"publicNetworkAccess": "Disabled", "delegatedSubnetResourceId": "/sub/db"}}

    def test_private_server_passes(self):
        assert rules.postgres_private_only(rules.POSTGRES_SERVER, self.server) == []

    @pytest.mark.parametrize(("changes", "message"), [
        ({"network__publicNetworkAccess": "Enabled"}, "publicNetworkAccess to Disabled"),
        ({"network__publicNetworkAccess": ...}, "publicNetworkAccess to Disabled"),
        ({"network__delegatedSubnetResourceId": ...}, "VNet-integrated"),
        ({"version": "14"}, "16 or newer"),
    ])
    def test_public_or_old_server_fails(self, changes, message):
        violations = rules.postgres_private_only(rules.POSTGRES_SERVER, with_changes(self.server, **changes))
        assert any(message in v for v in violations), violations

    def test_any_firewall_rule_fails(self):
        rule = {"startIpAddress": "0.0.0.0", "endIpAddress": "255.255.255.255"}
        assert rules.postgres_private_only(rules.POSTGRES_FIREWALL_RULE, rule)

    @pytest.mark.parametrize(("name", "good", "bad"), [
        ("require_secure_transport", "on", "off"),
        ("ssl_min_protocol_version", "TLSv1.2", "TLSv1.1"),
        ("ssl_min_protocol_version", "TLSv1.3", "TLSv1"),
    ])
    def test_tls_parameters(self, name, good, bad):
        assert rules.postgres_tls(rules.POSTGRES_CONFIGURATION, {"configurationName": name, "value": good}) == []
        assert rules.postgres_tls(rules.POSTGRES_CONFIGURATION, {"configurationName": name, "value": bad})

    def test_other_parameters_are_not_judged(self):
        assert rules.postgres_tls(rules.POSTGRES_CONFIGURATION, {"configurationName": "log_connections", "value": "off"}) == []


class TestKeyVault:
    vault = {"properties": {"enableRbacAuthorization": True, "enablePurgeProtection": True, "enableSoftDelete": True,
                            "publicNetworkAccess": "Disabled", "networkAcls": {"defaultAction": "Deny"}, "accessPolicies": []}}

    def test_locked_down_vault_passes(self):
        assert rules.key_vault_baseline(rules.KEY_VAULT, self.vault) == []

    @pytest.mark.parametrize(("changes", "message"), [
        ({"properties__enablePurgeProtection": False}, "purge protection"),
        ({"properties__enablePurgeProtection": ...}, "purge protection"),
        ({"properties__enableRbacAuthorization": False}, "RBAC"),
        ({"properties__accessPolicies": [{"objectId": "x"}]}, "access policies"),
        ({"properties__enableSoftDelete": False}, "soft delete"),
        ({"properties__publicNetworkAccess": "Enabled"}, "public network access"),
        ({"properties__networkAcls__defaultAction": "Allow"}, "default to Deny"),
    ])
    def test_weakened_vault_fails(self, changes, message):
        violations = rules.key_vault_baseline(rules.KEY_VAULT, with_changes(self.vault, **changes))
        assert any(message in v for v in violations), violations


class TestRoleAssignments:
    @pytest.mark.parametrize("scope", [VAULT_SCOPE, VAULT_SCOPE + "/secrets/database-url", VAULT_SCOPE + "/keys/palisade-kek"])
    def test_vault_scopes_pass(self, scope):
        assert rules.role_assignment_scope(rules.ROLE_ASSIGNMENT, {"scope": scope}) == []

    @pytest.mark.parametrize("scope", [
        "/subscriptions/s",
        "/subscriptions/s/resourceGroups/rg",
        "/providers/Microsoft.Management/managementGroups/root",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st",
        "",
    ])
    def test_broader_or_other_scopes_fail(self, scope):
        assert rules.role_assignment_scope(rules.ROLE_ASSIGNMENT, {"scope": scope})

    def test_only_key_vault_reader_roles_are_granted(self):
        assert rules.role_assignment_least_privilege(rules.ROLE_ASSIGNMENT, {"roleDefinitionId": SECRETS_USER}) == []
        owner = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
        admin = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/00482a5a-887f-4fb3-b363-3b7fe8e74483"
        assert rules.role_assignment_least_privilege(rules.ROLE_ASSIGNMENT, {"roleDefinitionId": owner})
        assert rules.role_assignment_least_privilege(rules.ROLE_ASSIGNMENT, {"roleDefinitionId": admin})


class TestContainerApps:
    app = {
        "configuration": {
            "ingress": {"external": True, "allowInsecure": False,
                        "ipSecurityRestrictions": [{"name": "cf", "action": "Allow", "ipAddressRange": "173.245.48.0/20"}]},
            "secrets": [{"name": "database-url", "keyVaultUrl": "https://kv.vault.azure.net/secrets/database-url",
                         "identity": "/subscriptions/s/.../id-app"}],
        },
        "template": {"containers": [{"name": "api", "env": [
            {"name": "PALISADE_MODE", "value": "production"},
            {"name": "PALISADE_KEY_VAULT_URL", "value": "https://kv.vault.azure.net/"},
            {"name": "PALISADE_SECRET_PROVIDER", "value": "keyvault"},
            {"name": "PALISADE_DATABASE_URL", "secretRef": "database-url"},
        ]}]},
    }

    def test_key_vault_references_pass(self):
        assert rules.container_app_secrets(rules.CONTAINER_APP, self.app) == []
        assert rules.container_app_secrets(rules.CONTAINER_APP_JOB, self.app) == []

    def test_inline_secret_value_fails(self):
        app = with_changes(self.app)
        app["configuration"]["secrets"] = [{"name": "database-url", "value": "postgresql://u:p@h/db"}]
        violations = rules.container_app_secrets(rules.CONTAINER_APP, app)
        assert any("inline value" in v for v in violations) and any("keyVaultUrl" in v for v in violations)

    def test_key_vault_reference_without_identity_fails(self):
        app = with_changes(self.app)
        del app["configuration"]["secrets"][0]["identity"]
        assert any("managed identity" in v for v in rules.container_app_secrets(rules.CONTAINER_APP, app))

    @pytest.mark.parametrize(("name", "value"), [
        ("PALISADE_TURNSTILE_SECRET", "0x4AAA"),
        ("PALISADE_DATABASE_URL", "postgresql://app@h/db"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer x"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=abc"),
        ("AZURE_CLIENT_SECRET", "abc"),
        ("SOME_SETTING", "postgresql://app:hunter2@db.internal/palisade"),
        ("TLS_BUNDLE", "-----BEGIN EC PRIVATE KEY-----\nMHc..."),
        ("APPINSIGHTS", "InstrumentationKey=abc;IngestionEndpoint=https://x"),
    ])
    def test_plaintext_secret_in_env_fails(self, name, value):
        app = with_changes(self.app)
        app["template"]["containers"][0]["env"].append({"name": name, "value": value})
        assert rules.container_app_secrets(rules.CONTAINER_APP, app)

    def test_init_containers_are_checked_too(self):
        app = with_changes(self.app)
        app["template"]["initContainers"] = [{"name": "init", "env": [{"name": "DB_PASSWORD", "value": "x"}]}]
        assert rules.container_app_secrets(rules.CONTAINER_APP, app)

    def test_restricted_https_ingress_passes(self):
        assert rules.container_app_ingress(rules.CONTAINER_APP, self.app) == []

    @pytest.mark.parametrize(("changes", "message"), [
        ({"configuration__ingress__allowInsecure": True}, "plain HTTP"),
        ({"configuration__ingress__ipSecurityRestrictions": []}, "must list the ranges"),
        ({"configuration__ingress__ipSecurityRestrictions": [{"action": "Allow", "ipAddressRange": "0.0.0.0/0"}]}, "whole Internet"),
        ({"configuration__ingress__ipSecurityRestrictions": [{"action": "Deny", "ipAddressRange": "1.2.3.4/32"}]}, "Allow only"),
    ])
    def test_open_ingress_fails(self, changes, message):
        violations = rules.container_app_ingress(rules.CONTAINER_APP, with_changes(self.app, **changes))
        assert any(message in v for v in violations), violations


class TestEdge:
    @pytest.mark.parametrize(("setting", "good", "bad"), [
        ("min_tls_version", "1.2", "1.0"),
        ("min_tls_version", "1.3", "1.1"),
        ("tls_1_3", "on", "off"),
        ("ssl", "strict", "full"),
        ("ssl", "strict", "flexible"),
        ("always_use_https", "on", "off"),
        ("security_header", {"strict_transport_security": {"enabled": True, "max_age": 31536000}},
         {"strict_transport_security": {"enabled": True, "max_age": 300}}),
    ])
    def test_zone_tls_settings(self, setting, good, bad):
        assert rules.edge_tls(rules.ZONE_SETTING, {"settingId": setting, "value": good}) == []
        assert rules.edge_tls(rules.ZONE_SETTING, {"settingId": setting, "value": bad})

    managed = {"phase": "http_request_firewall_managed", "rules": [
        {"action": "execute", "expression": "true", "enabled": True, "actionParameters": {"id": rules.CLOUDFLARE_MANAGED_RULESET}},
        {"action": "execute", "expression": "true", "actionParameters": {"id": rules.CLOUDFLARE_OWASP_RULESET}},
    ]}

    def test_managed_rulesets_executed_pass(self):
        assert rules.waf_managed_rules_enabled(rules.RULESET, self.managed) == []

    def test_missing_or_disabled_managed_ruleset_fails(self):
        without_owasp = with_changes(self.managed, rules=self.managed["rules"][:1])
        assert any("OWASP" in v for v in rules.waf_managed_rules_enabled(rules.RULESET, without_owasp))
        disabled = with_changes(self.managed)
        disabled["rules"][0]["enabled"] = False
        assert any("Cloudflare Managed" in v for v in rules.waf_managed_rules_enabled(rules.RULESET, disabled))
        overridden = with_changes(self.managed)
        overridden["rules"][1]["actionParameters"]["overrides"] = {"enabled": False}
        assert any("overrides" in v for v in rules.waf_managed_rules_enabled(rules.RULESET, overridden))

    def test_stack_must_deploy_the_edge_baseline(self):
        settings = [(rules.ZONE_SETTING, {"settingId": s, "value": "x"}) for s in rules.REQUIRED_ZONE_SETTINGS]
        rate_limit = (rules.RULESET, {"phase": "http_ratelimit", "rules": [{"action": "block"}]})
        assert rules.edge_baseline_present([(rules.RULESET, self.managed), rate_limit, *settings]) == []
        violations = rules.edge_baseline_present([rate_limit, *settings[1:]])
        assert any("WAF ruleset" in v for v in violations)
        assert any("missing ssl" in v for v in violations)
        assert any("rate-limiting" in v for v in rules.edge_baseline_present([(rules.RULESET, self.managed), *settings]))


class TestPack:
    def test_the_example_stack_passes_its_own_policy_pack(self, example):
        resources = [(r.type, r.inputs) for r in example.resources]
        violations = [f"{name}: {r_type}: {message}" for name, check in rules.RESOURCE_RULES.items()
                      for r_type, props in resources for message in check(r_type, props)]
        violations += [f"{name}: {m}" for name, check in rules.STACK_RULES.items() for m in check(resources)]
        assert violations == []

    def test_every_rule_is_a_mandatory_policy_that_reports(self, monkeypatch):
        packs = []
        monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: packs.append(kwargs))
        runpy.run_path(str(POLICY / "__main__.py"))
        (pack,) = packs
        assert pack["name"] == "palisade-baseline"
        policies = {p.name: p for p in pack["policies"]}
        assert set(policies) == set(rules.RESOURCE_RULES) | set(rules.STACK_RULES)
        assert all(p.enforcement_level == pulumi_policy.EnforcementLevel.MANDATORY for p in policies.values())

        reported: list[str] = []
        args = SimpleNamespace(resource_type=rules.KEY_VAULT, props={"properties": {}})
        policies["key-vault-baseline"].validate(args, reported.append)
        assert any("purge protection" in m for m in reported)
        reported.clear()
        policies["edge-baseline-present"].validate(SimpleNamespace(resources=[]), reported.append)
        assert reported
