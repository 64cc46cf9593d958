"""The whole program, run under Pulumi's mocks: each security property of the baseline, asserted on
what would be sent to Azure and Cloudflare."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from infra_harness import SECRET_MARK, TENANT, ProgramRun, example_stack_config, is_secret, run_program
from palisade_infra import defaults

SERVER = "azure-native:dbforpostgresql:Server"
CONFIGURATION = "azure-native:dbforpostgresql:Configuration"
VAULT = "azure-native:keyvault:Vault"
KEY = "azure-native:keyvault:Key"
SECRET = "azure-native:keyvault:Secret"
ROLE = "azure-native:authorization:RoleAssignment"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
CONTAINER_APP = "azure-native:app:ContainerApp"
JOB = "azure-native:app:Job"
ENVIRONMENT = "azure-native:app:ManagedEnvironment"
RULESET = "cloudflare:index/ruleset:Ruleset"
ZONE_SETTING = "cloudflare:index/zoneSetting:ZoneSetting"
DNS = "cloudflare:index/dnsRecord:DnsRecord"

SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


def secret_occurrences(value: Any, path: str = "", wrapped: bool = False):
    """(path, is inside a secret wrapper) for every string carrying a generated secret."""
    if is_secret(value):
        yield from secret_occurrences(value["value"], path, True)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from secret_occurrences(v, f"{path}.{k}", wrapped)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from secret_occurrences(v, f"{path}[{i}]", wrapped)
    elif isinstance(value, str) and SECRET_MARK in value:
        yield path, wrapped


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def vault_secret(run: ProgramRun, name: str) -> dict:
    return next(r for r in run.of_type(SECRET) if r.inputs["secretName"] == name).inputs


def grants(run: ProgramRun) -> dict[str, set[tuple[str, str]]]:
    """identity name -> {(role guid, scope tail)} from the recorded role assignments."""
    principal_to_identity = {r.state["principalId"]: r.inputs["resourceName"] for r in run.of_type(IDENTITY)}
    out: dict[str, set[tuple[str, str]]] = {}
    for r in run.of_type(ROLE):
        who = principal_to_identity[r.inputs["principalId"]]
        tail = r.inputs["scope"].split("/providers/Microsoft.KeyVault/vaults/", 1)[1].split("/", 1)[1]
        out.setdefault(who, set()).add((r.inputs["roleDefinitionId"].rsplit("/", 1)[1], tail))
    return out


@pytest.fixture(scope="module")
def variant() -> ProgramRun:
    """The program with the optional paths taken: external OTLP collector, federation, Sentry,
    ASN blocks, a private registry, no HA/geo backups on a Burstable server, RSA (software) KEK."""
    config = {
        **example_stack_config(),
        "palisade:otlpEndpoint": "https://otel.example.com",
        "palisade:federatedCredentials": json.dumps([{
            "name": "aks-api", "issuer": "https://oidc.aks.example.com/abc/", "subject": "system:serviceaccount:palisade:api"}]),
        "palisade:blockedAsns": [64496, 64511],
        "palisade:registryServer": "palisadeacr.azurecr.io",
        "palisade:postgresTier": "Burstable",
        "palisade:postgresSku": "Standard_B2s",
        "palisade:postgresHighAvailability": "Disabled",
        "palisade:postgresGeoRedundantBackup": False,
        "palisade:postgresMinTls": "TLSv1.2",
        "palisade:kekKeyType": "RSA",
    }
    config.pop("palisade:postgresEntraAdmin")
    return run_program(config, secrets={"palisade:sentryDsn": f"https://{SECRET_MARK}-sentry@o1.ingest.sentry.io/1"})


class TestDataResidency:
    def test_every_azure_resource_is_in_the_configured_region(self, example):
        located = [r for r in example.resources if r.type.startswith("azure-native:") and "location" in r.inputs]
        assert located
        for r in located:
            assert r.inputs["location"] in ("westeurope", "global"), r.name
        # Only the private DNS zones (a global service) are not regional.
        assert {r.type for r in located if r.inputs["location"] == "global"} == {
            "azure-native:privatedns:PrivateZone", "azure-native:privatedns:VirtualNetworkLink"}


class TestNetwork:
    def test_subnets_are_delegated_and_private_dns_zones_linked(self, example):
        vnet = example.one("azure-native:network:VirtualNetwork").inputs
        assert vnet["addressSpace"]["addressPrefixes"] == ["10.42.0.0/16"]
        subnets = {s["name"]: s for s in vnet["subnets"]}
        assert subnets["apps"]["delegations"][0]["serviceName"] == "Microsoft.App/environments"
        assert subnets["database"]["delegations"][0]["serviceName"] == "Microsoft.DBforPostgreSQL/flexibleServers"
        assert subnets["endpoints"]["privateEndpointNetworkPolicies"] == "Enabled"
        zones = {r.inputs["privateZoneName"] for r in example.of_type("azure-native:privatedns:PrivateZone")}
        assert zones == {"palisade.private.postgres.database.azure.com", "privatelink.vaultcore.azure.net"}
        links = example.of_type("azure-native:privatedns:VirtualNetworkLink")
        assert len(links) == 2 and all(link.inputs["registrationEnabled"] is False for link in links)

    def test_database_subnet_admits_postgres_only_from_the_apps_subnet(self, example):
        nsg = example.one("azure-native:network:NetworkSecurityGroup", "database-nsg").inputs
        rules = {r["name"]: r for r in nsg["securityRules"]}
        allow = rules["allow-postgres-from-apps"]
        assert (allow["sourceAddressPrefix"], allow["destinationPortRange"]) == ("10.42.0.0/23", "5432")
        assert rules["deny-other-vnet-inbound"]["access"] == "Deny"


class TestDatabase:
    def test_server_is_private_only(self, example):
        server = example.one(SERVER).inputs
        assert server["network"]["publicNetworkAccess"] == "Disabled"
        assert server["network"]["delegatedSubnetResourceId"].endswith("/subnets/database")
        assert server["network"]["privateDnsZoneArmResourceId"].endswith("/privateDnsZones/palisade.private.postgres.database.azure.com")
        assert not example.of_type("azure-native:dbforpostgresql:FirewallRule")

    def test_version_is_16_or_newer(self, example):
        assert int(example.one(SERVER).inputs["version"]) >= 16

    def test_tls_is_required_with_a_minimum_version(self, example, variant):
        params = {r.inputs["configurationName"]: r.inputs["value"] for r in example.of_type(CONFIGURATION)}
        assert params["require_secure_transport"] == "on"
        assert params["ssl_min_protocol_version"] == "TLSv1.3"
        assert params["password_encryption"] == "scram-sha-256"
        lowered = {r.inputs["configurationName"]: r.inputs["value"] for r in variant.of_type(CONFIGURATION)}
        assert lowered["ssl_min_protocol_version"] == "TLSv1.2"

    def test_entra_authentication_is_enabled(self, example):
        auth = example.one(SERVER).inputs["authConfig"]
        assert auth == {"activeDirectoryAuth": "Enabled", "passwordAuth": "Enabled", "tenantId": TENANT}
        admin = example.one("azure-native:dbforpostgresql:AdministratorsMicrosoftEntra").inputs
        assert (admin["principalName"], admin["principalType"]) == ("palisade-db-admins", "Group")

    def test_backups_and_high_availability_default_on_and_are_configurable(self, example, variant):
        server = example.one(SERVER).inputs
        assert server["backup"]["geoRedundantBackup"] == "Enabled"
        assert server["backup"]["backupRetentionDays"] == 35
        assert server["highAvailability"]["mode"] == "ZoneRedundant"
        relaxed = variant.one(SERVER).inputs
        assert relaxed["backup"]["geoRedundantBackup"] == "Disabled"
        assert relaxed["highAvailability"]["mode"] == "Disabled"

    def test_the_app_has_its_database(self, example):
        db = example.one("azure-native:dbforpostgresql:Database").inputs
        assert (db["databaseName"], db["charset"]) == ("palisade", "UTF8")

    def test_connection_urls_in_the_vault_verify_the_server_certificate(self, example):
        host = example.outputs["databaseHost"]
        admin = vault_secret(example, defaults.ADMIN_DATABASE_URL)["properties"]["value"]
        app = vault_secret(example, defaults.DATABASE_URL)["properties"]["value"]
        assert re.fullmatch(rf"postgresql://palisade_admin:[^@]+@{re.escape(host)}:5432/palisade"
                            r"\?sslmode=verify-full&sslrootcert=system", admin)
        assert app.startswith("postgresql://palisade_app:")
        assert "admin-password" in admin and "admin-password" not in app  # two roles, two passwords


class TestSecretsStayInTheVault:
    def test_generated_secrets_travel_only_to_the_vault_and_their_one_consumer(self, example):
        # Where a generated secret may be an input at all: the vault, the server's own admin
        # password, and the CSR built from the origin key (signed locally, never sent as-is).
        allowed = {SECRET, SERVER, "tls:index/certRequest:CertRequest"}
        seen = set()
        for r in example.resources:
            for path, wrapped in secret_occurrences(r.raw_inputs):
                assert r.type in allowed, f"{r.type} {r.name}{path} carries a secret"
                assert wrapped, f"{r.type} {r.name}{path} carries a secret not marked secret"
                seen.add(r.type)
        assert seen == allowed

    def test_the_admin_password_is_stored_only_as_the_admin_url(self, example):
        holders = {(r.type, r.name) for r in example.resources
                   for _ in secret_occurrences(r.raw_inputs) if "admin-password" in json.dumps(r.raw_inputs)}
        assert holders == {(SERVER, "database-server"), (SECRET, "database-admin-url")}

    def test_the_turnstile_secret_goes_to_the_vault(self, example):
        stored = vault_secret(example, defaults.TURNSTILE_SECRET)
        assert stored["properties"]["value"] == f"{SECRET_MARK}-turnstile"

    def test_no_output_is_or_contains_a_secret(self, example):
        assert example.secret_outputs == set()
        assert SECRET_MARK not in json.dumps(example.outputs)


class TestKeyVault:
    def test_vault_is_rbac_only_purge_protected_and_private(self, example):
        props = example.one(VAULT).inputs["properties"]
        assert props["enableRbacAuthorization"] is True and props["accessPolicies"] == []
        assert props["enablePurgeProtection"] is True
        assert props["enableSoftDelete"] is True and props["softDeleteRetentionInDays"] == 90
        assert props["publicNetworkAccess"] == "Disabled"
        assert props["networkAcls"]["defaultAction"] == "Deny" and props["networkAcls"]["bypass"] == "None"
        assert not (props["enabledForDeployment"] or props["enabledForTemplateDeployment"] or props["enabledForDiskEncryption"])

    def test_vault_is_reached_through_a_private_endpoint(self, example):
        vault_id = example.one(VAULT).state["id"]
        endpoint = example.one("azure-native:network:PrivateEndpoint").inputs
        assert endpoint["subnet"]["id"].endswith("/subnets/endpoints")
        connection = endpoint["privateLinkServiceConnections"][0]
        assert (connection["privateLinkServiceId"], connection["groupIds"]) == (vault_id, ["vault"])
        group = example.one("azure-native:network:PrivateDnsZoneGroup").inputs
        assert group["privateDnsZoneConfigs"][0]["privateDnsZoneId"].endswith("/privatelink.vaultcore.azure.net")

    def test_vault_audit_logs_go_to_log_analytics(self, example):
        vault_id = example.one(VAULT).state["id"]
        workspace_id = example.one("azure-native:operationalinsights:Workspace").state["id"]
        setting = next(r.inputs for r in example.of_type("azure-native:monitor:DiagnosticSetting")
                       if r.inputs["resourceUri"] == vault_id)
        assert setting["workspaceId"] == workspace_id
        assert {"categoryGroup": "allLogs", "enabled": True} in setting["logs"]

    def test_kek_is_an_hsm_rsa_key_for_wrapping_only(self, example, variant):
        key = example.one(KEY).inputs["properties"]
        assert (key["kty"], key["keySize"], sorted(key["keyOps"])) == ("RSA-HSM", 3072, ["unwrapKey", "wrapKey"])
        assert key["rotationPolicy"]["lifetimeActions"][0]["action"]["type"] == "rotate"
        assert example.one(VAULT).inputs["properties"]["sku"]["name"] == "premium"
        assert variant.one(KEY).inputs["properties"]["kty"] == "RSA"
        assert variant.one(VAULT).inputs["properties"]["sku"]["name"] == "standard"


class TestIdentity:
    def test_every_role_assignment_is_scoped_inside_the_vault(self, example):
        vault_id = example.one(VAULT).state["id"]
        assignments = example.of_type(ROLE)
        assert assignments
        for r in assignments:
            assert r.inputs["scope"].startswith(vault_id + "/"), r.inputs["scope"]
            assert r.inputs["principalType"] == "ServicePrincipal"

    def test_each_identity_holds_exactly_what_it_needs(self, example):
        assert grants(example) == {
            "id-palisade-app": {
                (SECRETS_USER, "secrets/database-url"),
                (SECRETS_USER, "secrets/turnstile-secret"),
                (SECRETS_USER, "secrets/appinsights-connection-string"),
                (CRYPTO_SERVICE_ENCRYPTION_USER, "keys/palisade-kek"),
            },
            "id-palisade-migrator": {
                (SECRETS_USER, "secrets/admin-database-url"),
                (SECRETS_USER, "secrets/database-url"),
                (SECRETS_USER, "secrets/turnstile-secret"),
            },
            "id-palisade-ingress": {(SECRETS_USER, "secrets/origin-tls")},
        }

    def test_federated_credentials_are_configurable(self, example, variant):
        assert not example.of_type("azure-native:managedidentity:FederatedIdentityCredential")
        credential = variant.one("azure-native:managedidentity:FederatedIdentityCredential").inputs
        assert credential["resourceName"] == "id-palisade-app"
        assert credential["issuer"] == "https://oidc.aks.example.com/abc/"
        assert credential["subject"] == "system:serviceaccount:palisade:api"
        assert credential["audiences"] == ["api://AzureADTokenExchange"]


class TestAppHosting:
    def test_environment_is_in_the_vnet_with_encrypted_peer_traffic(self, example):
        env = example.one(ENVIRONMENT).inputs
        assert env["vnetConfiguration"]["infrastructureSubnetId"].endswith("/subnets/apps")
        assert env["peerTrafficConfiguration"]["encryption"]["enabled"] is True
        assert env["peerAuthentication"]["mtls"]["enabled"] is True
        assert env["appLogsConfiguration"] == {"destination": "azure-monitor"}

    def test_app_runs_at_least_two_replicas_with_health_probes(self, example):
        app = example.one(CONTAINER_APP).inputs
        assert app["template"]["scale"]["minReplicas"] >= 2
        api = app["template"]["containers"][0]
        probes = {p["type"]: p["httpGet"]["path"] for p in api["probes"]}
        assert probes["Liveness"] == "/health/live" and probes["Readiness"] == "/health/ready"
        assert all(p["httpGet"]["port"] == 8000 for p in api["probes"])

    def test_ingress_admits_only_cloudflare(self, example):
        ingress = example.one(CONTAINER_APP).inputs["configuration"]["ingress"]
        assert ingress["allowInsecure"] is False and ingress["external"] is True
        rules = ingress["ipSecurityRestrictions"]
        assert {r["action"] for r in rules} == {"Allow"}
        assert [r["ipAddressRange"] for r in rules] == list(defaults.CLOUDFLARE_IPV4)
        domain = ingress["customDomains"][0]
        assert (domain["name"], domain["bindingType"]) == ("palisade.example.com", "SniEnabled")

    def test_origin_certificate_comes_from_the_vault_through_the_ingress_identity(self, example):
        cert = example.one("azure-native:app:Certificate").inputs["properties"]["certificateKeyVaultProperties"]
        assert cert["keyVaultUrl"].endswith("/secrets/origin-tls")
        assert cert["identity"].endswith("/userAssignedIdentities/id-palisade-ingress")
        env_identities = example.one(ENVIRONMENT).inputs["identity"]["userAssignedIdentities"]
        assert env_identities == [cert["identity"]]

    def test_secrets_are_key_vault_references_resolved_by_the_app_identity(self, example):
        app = example.one(CONTAINER_APP).inputs
        identity = app["identity"]["userAssignedIdentities"][0]
        assert identity.endswith("/id-palisade-app")
        vault_uri = example.outputs["keyVaultUri"]
        for secret in app["configuration"]["secrets"]:
            assert set(secret) == {"name", "keyVaultUrl", "identity"}, secret
            assert secret["keyVaultUrl"] == f"{vault_uri}secrets/{secret['name']}"
            assert secret["identity"] == identity
        env = env_of(app["template"]["containers"][0])
        assert env["PALISADE_DATABASE_URL"] == {"name": "PALISADE_DATABASE_URL", "secretRef": "database-url"}
        assert env["PALISADE_TURNSTILE_SECRET"]["secretRef"] == "turnstile-secret"
        assert "PALISADE_ADMIN_DATABASE_URL" not in env

    def test_app_settings_match_the_app(self, example):
        env = env_of(example.one(CONTAINER_APP).inputs["template"]["containers"][0])
        value = {k: v.get("value") for k, v in env.items()}
        assert value["PALISADE_MODE"] == "production"
        assert json.loads(value["PALISADE_ISSUERS"]) == [
            {"issuer": "https://sso.example.com/realms/palisade", "audience": "palisade-api", "roles_claim": "realm_access.roles"}]
        assert value["PALISADE_TRUSTED_PROXIES"] == "10.42.0.0/23"
        assert value["PALISADE_CLOUDFLARE_RANGES"].split(",") == list(defaults.CLOUDFLARE_RANGES)
        assert (value["PALISADE_SECRET_PROVIDER"], value["PALISADE_KEK_PROVIDER"]) == ("keyvault", "keyvault")
        assert value["PALISADE_KEY_VAULT_URL"] == example.outputs["keyVaultUri"]
        assert value["PALISADE_KEK_KEY_URL"] == example.outputs["keyVaultUri"] + "keys/palisade-kek"
        assert value["AZURE_CLIENT_ID"] == example.outputs["appIdentityClientId"]
        assert value["PALISADE_TURNSTILE_EXPECTED_HOSTNAME"] == "palisade.example.com"

    def test_traces_are_wired_to_application_insights(self, example, variant):
        containers = {c["name"]: c for c in example.one(CONTAINER_APP).inputs["template"]["containers"]}
        api = {k: v.get("value") for k, v in env_of(containers["api"]).items()}
        assert api["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
        assert api["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        collector = env_of(containers["otel-collector"])
        assert collector["APPLICATIONINSIGHTS_CONNECTION_STRING"]["secretRef"] == "appinsights-connection-string"
        assert "127.0.0.1:4318" in collector["OTELCOL_CONFIG"]["value"]
        # With a collector of their own, no sidecar and no App Insights secret.
        other = variant.one(CONTAINER_APP).inputs["template"]["containers"]
        assert [c["name"] for c in other] == ["api"]
        assert env_of(other[0])["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "https://otel.example.com"

    def test_migration_job_runs_with_the_admin_url_from_the_vault(self, example):
        job = example.one(JOB).inputs
        assert job["configuration"]["triggerType"] == "Manual"
        identity = job["identity"]["userAssignedIdentities"][0]
        assert identity.endswith("/id-palisade-migrator")
        assert {s["name"] for s in job["configuration"]["secrets"]} == set(defaults.MIGRATION_SECRET_ENV)
        assert all(s["identity"] == identity and "value" not in s for s in job["configuration"]["secrets"])
        container = job["template"]["containers"][0]
        assert container["command"] == ["palisade", "migrate"]
        assert env_of(container)["PALISADE_ADMIN_DATABASE_URL"]["secretRef"] == "admin-database-url"

    def test_optional_secrets_are_vault_references_too(self, variant):
        assert vault_secret(variant, defaults.SENTRY_DSN)["properties"]["value"].startswith("https://")
        app = variant.one(CONTAINER_APP).inputs
        assert env_of(app["template"]["containers"][0])["PALISADE_SENTRY_DSN"]["secretRef"] == "sentry-dsn"
        assert (SECRETS_USER, "secrets/sentry-dsn") in grants(variant)["id-palisade-app"]
        registry = app["configuration"]["registries"][0]
        assert registry == {"server": "palisadeacr.azurecr.io", "identity": app["identity"]["userAssignedIdentities"][0]}


class TestEdge:
    def test_dns_record_is_proxied_to_the_app(self, example):
        records = {r.inputs["type"]: r.inputs for r in example.of_type(DNS)}
        app = records["CNAME"]
        assert app["name"] == "palisade.example.com" and app["proxied"] is True
        assert app["content"] == "ca-palisade-api.happy-sky-0123abcd.westeurope.azurecontainerapps.io"
        assert records["TXT"]["name"] == "asuid.palisade.example.com" and records["TXT"]["proxied"] is False

    def test_zone_tls_settings(self, example):
        settings = {r.inputs["settingId"]: r.inputs["value"] for r in example.of_type(ZONE_SETTING)}
        assert settings["ssl"] == "strict"
        assert settings["min_tls_version"] == "1.2"
        assert settings["tls_1_3"] == "on"
        assert settings["always_use_https"] == "on"
        hsts = settings["security_header"]["strict_transport_security"]
        assert hsts["enabled"] is True and hsts["max_age"] == 31_536_000 and hsts["include_subdomains"] is True

    def test_origin_certificate_is_from_the_cloudflare_origin_ca(self, example):
        cert = example.one("cloudflare:index/originCaCertificate:OriginCaCertificate").inputs
        assert cert["hostnames"] == ["palisade.example.com"] and cert["requestType"] == "origin-ecc"
        assert vault_secret(example, defaults.ORIGIN_TLS)["properties"]["contentType"] == "application/x-pem-file"

    def test_managed_waf_rulesets_are_deployed(self, example):
        managed = next(r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_request_firewall_managed")
        executed = {rule["actionParameters"]["id"] for rule in managed["rules"] if rule["action"] == "execute" and rule["enabled"]}
        assert executed == {defaults.CLOUDFLARE_MANAGED_RULESET, defaults.CLOUDFLARE_OWASP_RULESET}

    def test_custom_rules_block_and_challenge(self, example, variant):
        custom = next(r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_request_firewall_custom")
        rules = {rule["description"]: rule for rule in custom["rules"]}
        assert rules["blocked countries"]["expression"] == '(ip.src.country in {"KP"})'
        assert rules["blocked countries"]["action"] == "block"
        challenge = rules["challenge on sensitive paths"]
        assert challenge["action"] == "managed_challenge"
        assert challenge["expression"] == '(http.request.uri.path in {"/api/v1/invitations/accept"})'
        other = next(r.inputs for r in variant.of_type(RULESET) if r.inputs["phase"] == "http_request_firewall_custom")
        assert {"action": "block", "expression": "(ip.src.asnum in {64496 64511})"}.items() <= {
            k: v for rule in other["rules"] if "ASN" in rule["description"] for k, v in rule.items()}.items()

    def test_api_is_rate_limited_per_client_ip(self, example):
        limit = next(r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_ratelimit")
        rule = limit["rules"][0]
        assert rule["action"] == "block"
        assert rule["expression"] == '(starts_with(http.request.uri.path, "/api/"))'
        assert rule["ratelimit"]["requestsPerPeriod"] == 100 and rule["ratelimit"]["period"] == 60
        assert "ip.src" in rule["ratelimit"]["characteristics"]

    def test_turnstile_widget_covers_the_app_hostname(self, example):
        widget = example.one("cloudflare:index/turnstileWidget:TurnstileWidget").inputs
        assert widget["domains"] == ["palisade.example.com"] and widget["mode"] == "managed"


class TestStructure:
    def test_outputs_are_the_documented_plain_values(self, example):
        assert example.outputs == {
            "appUrl": "https://palisade.example.com",
            "keyVaultUri": "https://kv-palisade-x1y2z3.vault.azure.net/",
            "databaseHost": "psql-palisade-x1y2z3.postgres.database.azure.com",
            "appIdentityClientId": "client-id-of-id-palisade-app",
            "turnstileSiteKey": "0x4AAAAAAAexamplesitekey",
            "migrationJobName": "caj-palisade-migrate",
            "resourceGroupName": "rg-palisade-example",
        }

    def test_every_resource_belongs_to_a_component(self, example):
        # URNs carry the parent chain: "...::palisade:infra:Network$azure-native:...::name".
        for urn in example.urns:
            qualified_type = urn.split("::")[2]
            if qualified_type.split("$")[-1].startswith("palisade:infra:"):
                continue
            assert qualified_type.startswith("palisade:infra:"), urn

    def test_nothing_is_read_from_the_environment_but_the_deploying_tenant(self, example):
        assert set(example.calls) == {"azure-native:authorization:getClientConfig"}

    def test_the_stack_is_composed_of_the_components(self, example):
        assert {r.type for r in example.resources if r.type.startswith("palisade:infra:")} == {
            f"palisade:infra:{c}" for c in
            ("Network", "Monitoring", "Secrets", "Database", "Edge", "Identity", "AppEnvironment", "EdgeDns", "AppHosting")}
