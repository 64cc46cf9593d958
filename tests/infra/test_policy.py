"""The policy pack's validators on hand-written resources, and the pack's wiring.

The weakenings of the real (example) stack live in test_policy_mutations.py; these cases pin the
rules' edges: what passes, the expression parser, the opt-outs and what the engine gets reported.
"""

from __future__ import annotations

import copy
import runpy
from types import SimpleNamespace

import policy_rules as rules
import pulumi_policy
import pytest
from infra_harness import POLICY
from policy_rules import Resource

VAULT = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-palisade-x1"
HOST = "palisade.example.com"


def role(guid: str) -> str:
    return f"/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def res(type_: str, props: dict, name: str = "thing") -> Resource:
    return Resource(type_, name, props, f"urn:pulumi:example::palisade::{type_}::{name}")


def check(rule, type_: str, props: dict, config: dict | None = None) -> list[str]:
    return rule(res(type_, props), config or {})


class TestMessages:
    def test_a_message_names_type_and_resource_and_the_fix(self):
        (message,) = check(rules.postgres_tls, rules.POSTGRES_CONFIGURATION,
                           {"configurationName": "ssl_min_protocol_version", "value": "TLSv1.2"})
        assert message.startswith("dbforpostgresql:Configuration thing: ")
        assert "; fix: set value to TLSv1.3" in message

    @pytest.mark.parametrize(("token", "short"), [
        (rules.KEY_VAULT, "keyvault:Vault"), (rules.RULESET, "cloudflare:Ruleset"), (rules.TUNNEL_CONFIG,
                                                                                     "cloudflare:ZeroTrustTunnelCloudflaredConfig"),
    ])
    def test_short_types(self, token, short):
        assert rules.short_type(token) == short


class TestPostgres:
    server = {"version": "16", "network": {"publicNetworkAccess": "Disabled", "delegatedSubnetResourceId": "/sub/db"},
              "backup": {"backupRetentionDays": 7, "geoRedundantBackup": "Enabled"}, "highAvailability": {"mode": "ZoneRedundant"},
              "authConfig": {"activeDirectoryAuth": "Enabled", "passwordAuth": "Disabled"}}

    def test_private_resilient_server_passes(self):
        assert check(rules.postgres_private_only, rules.POSTGRES_SERVER, self.server) == []
        assert check(rules.postgres_resilience, rules.POSTGRES_SERVER, self.server) == []

    @pytest.mark.parametrize(("name", "good", "bad"), [
        ("require_secure_transport", "on", "off"),
        ("ssl_min_protocol_version", "TLSv1.3", "TLSv1.2"),
        ("ssl_min_protocol_version", "TLSv1.3", "TLSv1"),
    ])
    def test_tls_parameters(self, name, good, bad):
        assert check(rules.postgres_tls, rules.POSTGRES_CONFIGURATION, {"configurationName": name, "value": good}) == []
        assert check(rules.postgres_tls, rules.POSTGRES_CONFIGURATION, {"configurationName": name, "value": bad})

    def test_other_parameters_are_not_judged(self):
        assert check(rules.postgres_tls, rules.POSTGRES_CONFIGURATION, {"configurationName": "log_connections", "value": "off"}) == []

    def test_no_standby_and_local_backups_pass_only_when_the_pack_config_opts_out(self):
        server = copy.deepcopy(self.server)
        server["highAvailability"]["mode"] = "Disabled"
        server["backup"]["geoRedundantBackup"] = "Disabled"
        assert len(check(rules.postgres_resilience, rules.POSTGRES_SERVER, server)) == 2
        opt_out = {"allowWithoutHighAvailability": True, "allowWithoutGeoRedundantBackup": True}
        assert check(rules.postgres_resilience, rules.POSTGRES_SERVER, server, opt_out) == []

    def test_the_tls_parameters_must_exist_for_each_server(self):
        server = res(rules.POSTGRES_SERVER, {"serverName": "psql-a"}, "db")
        ssl = res(rules.POSTGRES_CONFIGURATION, {"serverName": "psql-a", "configurationName": "ssl_min_protocol_version"})
        violations = rules.postgres_parameters_present([server, ssl], {})
        assert [v.urn for v in violations] == [server.urn]
        assert "require_secure_transport" in violations[0].message


class TestRoleAssignments:
    @pytest.mark.parametrize(("guid", "scope"), [
        (rules.SECRETS_USER, VAULT + "/secrets/database-url"),
        (rules.CRYPTO_SERVICE_ENCRYPTION_USER, VAULT + "/keys/palisade-kek"),
    ])
    def test_one_item_grants_pass(self, guid, scope):
        props = {"scope": scope, "roleDefinitionId": role(guid)}
        assert check(rules.role_assignment_scope, rules.ROLE_ASSIGNMENT, props) == []
        assert check(rules.role_assignment_least_privilege, rules.ROLE_ASSIGNMENT, props) == []

    @pytest.mark.parametrize("scope", [
        VAULT, VAULT + "/", VAULT + "/secrets", "/subscriptions/s", "/subscriptions/s/resourceGroups/rg",
        "/providers/Microsoft.Management/managementGroups/root",
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st", "",
    ])
    def test_broader_scopes_fail(self, scope):
        assert check(rules.role_assignment_scope, rules.ROLE_ASSIGNMENT, {"scope": scope, "roleDefinitionId": role(rules.SECRETS_USER)})


class TestExpressions:
    @pytest.mark.parametrize(("expression", "terms"), [
        (f'(http.host eq "{HOST}")', [f'http.host eq "{HOST}"']),
        (f'(http.host eq "{HOST}") and (ip.src.country in {{"KP"}})', [f'http.host eq "{HOST}"', 'ip.src.country in {"KP"}']),
        (f'http.host eq "{HOST}" && not ssl', [f'http.host eq "{HOST}"', "not ssl"]),
        (f'((http.host eq "{HOST}" and false))', [f'http.host eq "{HOST}"', "false"]),
        (f'(http.host eq "{HOST}") and (a or b)', [f'http.host eq "{HOST}"', "a or b"]),
        ('http.request.uri.path eq "/x or y"', ['http.request.uri.path eq "/x or y"']),
        ("android_version and orange", ["android_version", "orange"]),
    ])
    def test_conjuncts(self, expression, terms):
        assert rules.conjuncts(expression) == terms

    @pytest.mark.parametrize("expression", [f'http.host eq "{HOST}" or true', f'(http.host eq "{HOST}") || (true)',
                                            f'http.host eq "{HOST}" xor true'])
    def test_a_top_level_or_is_not_scoped(self, expression):
        assert rules.conjuncts(expression) is None
        assert rules.expression_hosts(expression) is None

    @pytest.mark.parametrize(("expression", "hosts"), [
        (f'(http.host eq "{HOST}") and (starts_with(http.request.uri.path, "/api/"))', {HOST}),
        (f'http.host == "{HOST}"', {HOST}),
        ("true", None), ("", None), (f'not http.host eq "{HOST}"', None), (f'http.host ne "{HOST}"', None),
    ])
    def test_hosts(self, expression, hosts):
        assert rules.expression_hosts(expression) == hosts


class TestEdgeRulesets:
    scope = f'(http.host eq "{HOST}")'
    owasp = {"action": "execute", "expression": scope, "enabled": True, "actionParameters": {
        "id": rules.CLOUDFLARE_OWASP_RULESET,
        "overrides": {"rules": [{"id": rules.OWASP_ANOMALY_SCORE_RULE, "action": "block", "scoreThreshold": 25}],
                      "categories": [{"category": "paranoia-level-3", "enabled": False}]}}}
    managed = {"phase": "http_request_firewall_managed", "rules": [
        {"action": "execute", "expression": scope, "enabled": True, "actionParameters": {"id": rules.CLOUDFLARE_MANAGED_RULESET}},
        owasp,
    ]}

    def test_a_stricter_threshold_and_higher_paranoia_levels_off_pass(self):
        assert check(rules.edge_rulesets, rules.RULESET, self.managed) == []

    def test_a_redirect_rule_is_not_a_waf_rule(self):
        redirect = {"phase": "http_request_dynamic_redirect", "rules": [
            {"action": "redirect", "expression": f"{self.scope} and not ssl", "enabled": True}]}
        assert check(rules.edge_rulesets, rules.RULESET, redirect) == []

    def test_the_rate_limit_ceiling_is_per_minute_and_configurable(self):
        limit = {"phase": "http_ratelimit", "rules": [{"action": "block", "expression": self.scope, "enabled": True,
                                                       "ratelimit": {"period": 10, "requestsPerPeriod": 2000}}]}
        assert check(rules.edge_rulesets, rules.RULESET, limit)  # 12,000 a minute
        assert check(rules.edge_rulesets, rules.RULESET, limit, {"maxRequestsPerMinute": 12_000}) == []

    def test_zone_settings_are_optional_but_never_weaker(self):
        for setting, value in (("ssl", "strict"), ("min_tls_version", "1.2"), ("0rtt", "off"), ("always_use_https", "on")):
            assert check(rules.edge_tls, rules.ZONE_SETTING, {"settingId": setting, "value": value}) == []
        assert rules.edge_baseline_present([], {})  # the WAF is required, zone settings are not
        assert not any("ZoneSetting" in v.message for v in rules.edge_baseline_present([], {}))


class TestGrantsByIdentity:
    def stack(self, *extra: Resource) -> list[Resource]:
        def identity(name):
            return res(rules.USER_ASSIGNED_IDENTITY, {"resourceName": f"id-{name}", "principalId": f"p-{name}"}, name)

        def uses(name):
            return {"identity": {"userAssignedIdentities": {
                f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{name}": {}}}}

        job_grant = res(rules.ROLE_ASSIGNMENT, {"principalId": "p-migrator", "scope": VAULT + "/secrets/admin-database-url"}, "g")
        return [identity("app"), identity("migrator"), res(rules.CONTAINER_APP, uses("app"), "api"),
                res(rules.CONTAINER_APP_JOB, uses("migrator"), "migrate"), job_grant, *extra]

    def test_resolves_identities_by_id_and_principal_from_properties(self):
        assert rules.identity_grants(self.stack(), {}) == []
        leak = res(rules.ROLE_ASSIGNMENT, {"principalId": "p-app", "scope": VAULT + "/secrets/admin-database-url"}, "leak")
        (violation,) = rules.identity_grants(self.stack(leak), {})
        assert violation.urn == leak.urn and "ContainerApp api" in violation.message

    def test_an_unknown_principal_is_not_guessed(self):
        stack = self.stack()
        stack[0] = res(rules.USER_ASSIGNED_IDENTITY, {"resourceName": "id-app"}, "app")  # principalId not yet known
        assert rules.identity_grants(stack, {}) == []


class TestPack:
    def load(self, monkeypatch) -> dict:
        packs = []
        monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: packs.append(kwargs))
        runpy.run_path(str(POLICY / "__main__.py"))
        (pack,) = packs
        assert pack["name"] == "palisade-baseline"
        return {p.name: p for p in pack["policies"]}

    def test_every_rule_is_a_mandatory_policy(self, monkeypatch):
        policies = self.load(monkeypatch)
        assert set(policies) == set(rules.RESOURCE_RULES) | set(rules.STACK_RULES)
        assert all(p.enforcement_level == pulumi_policy.EnforcementLevel.MANDATORY for p in policies.values())
        assert set(rules.RULE_CONFIG) <= set(policies)

    def test_reports_name_the_resource_and_carry_its_urn(self, monkeypatch):
        policies = self.load(monkeypatch)
        reported: list[tuple[str, str | None]] = []
        urn = "urn:pulumi:example::palisade::palisade:infra:Secrets$azure-native:keyvault:Vault::secrets-vault"
        args = SimpleNamespace(resource_type=rules.KEY_VAULT, props={"properties": {}}, name="secrets-vault", urn=urn,
                               get_config=lambda: {})
        policies["key-vault-baseline"].validate(args, lambda message, urn=None: reported.append((message, urn)))
        assert any(m.startswith("keyvault:Vault secrets-vault: purge protection is off; fix: ") and u == urn
                   for m, u in reported)

        reported.clear()
        vault = SimpleNamespace(resource_type=rules.KEY_VAULT, props={"vaultName": "kv-1"}, name="secrets-vault", urn=urn)
        policies["audit-logs-present"].validate(SimpleNamespace(resources=[vault], get_config=lambda: {}),
                                                lambda message, urn=None: reported.append((message, urn)))
        assert reported and all(u == urn and "secrets-vault" in m for m, u in reported)

    def test_opt_outs_reach_the_rule(self, monkeypatch):
        policies = self.load(monkeypatch)
        server = {"version": "16", "network": {"publicNetworkAccess": "Disabled", "delegatedSubnetResourceId": "/s"},
                  "backup": {"backupRetentionDays": 7, "geoRedundantBackup": "Enabled"}, "highAvailability": {"mode": "Disabled"}}
        reported: list[str] = []
        for config in ({}, {"allowWithoutHighAvailability": True}):
            args = SimpleNamespace(resource_type=rules.POSTGRES_SERVER, props=server, name="db", urn="u",
                                   get_config=lambda config=config: config)
            policies["postgres-resilience"].validate(args, lambda message, urn=None: reported.append(message))
        assert len(reported) == 1
