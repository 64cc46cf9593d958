"""The whole program, run under Pulumi's mocks: each security property of the baseline, asserted on
what would be sent to Azure and Cloudflare."""

from __future__ import annotations

import json
from typing import Any

import pytest
from infra_harness import (
    SECRET_MARK,
    TENANT,
    TUNNEL_ID,
    ProgramRun,
    client_id_of,
    example_stack_config,
    is_secret,
    principal_id_of,
    run_program,
)
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

# Every edge rule starts by matching the app's host name (the rest of the zone is not ours).
HOST = '(http.host eq "palisade.example.com") and '
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"


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
    """identity name -> {(role guid, scope tail inside the vault or the storage account)} from the role assignments."""
    principal_to_identity = {r.state["principalId"]: r.inputs["resourceName"] for r in run.of_type(IDENTITY)}
    out: dict[str, set[tuple[str, str]]] = {}
    for r in run.of_type(ROLE):
        who = principal_to_identity[r.inputs["principalId"]]
        tail = r.inputs["scope"].split("/vaults/" if "/vaults/" in r.inputs["scope"] else "/storageAccounts/", 1)[1]
        tail = tail.split("/", 1)[1]
        out.setdefault(who, set()).add((r.inputs["roleDefinitionId"].rsplit("/", 1)[1], tail))
    return out


@pytest.fixture(scope="module")
def zone_managed() -> ProgramRun:
    """The example stack with the zone-wide settings opted in."""
    return run_program({**example_stack_config(), "palisade:manageZoneSettings": True,
                        "palisade:hstsIncludeSubdomains": True})


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
        # Only the private DNS zones, the action group and the metric alerts (global services that
        # hold no data) are not regional.
        assert {r.type for r in located if r.inputs["location"] == "global"} == {
            "azure-native:privatedns:PrivateZone", "azure-native:privatedns:VirtualNetworkLink",
            "azure-native:monitor:ActionGroup", "azure-native:monitor:MetricAlert"}


class TestNetwork:
    def test_subnets_are_delegated_and_private_dns_zones_linked(self, example):
        vnet = example.one("azure-native:network:VirtualNetwork").inputs
        assert vnet["addressSpace"]["addressPrefixes"] == ["10.42.0.0/16"]
        subnets = {s["name"]: s for s in vnet["subnets"]}
        assert subnets["apps"]["delegations"][0]["serviceName"] == "Microsoft.App/environments"
        assert subnets["database"]["delegations"][0]["serviceName"] == "Microsoft.DBforPostgreSQL/flexibleServers"
        assert subnets["endpoints"]["privateEndpointNetworkPolicies"] == "Enabled"
        zones = {r.inputs["privateZoneName"] for r in example.of_type("azure-native:privatedns:PrivateZone")}
        assert zones == {"palisade.private.postgres.database.azure.com", "privatelink.vaultcore.azure.net",
                         "privatelink.blob.core.windows.net"}
        links = example.of_type("azure-native:privatedns:VirtualNetworkLink")
        assert len(links) == 3 and all(link.inputs["registrationEnabled"] is False for link in links)

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

    def test_tls_1_3_is_required(self, example):
        params = {r.inputs["configurationName"]: r.inputs["value"] for r in example.of_type(CONFIGURATION)}
        assert params["require_secure_transport"] == "on"
        assert params["ssl_min_protocol_version"] == "TLSv1.3"
        assert params["password_encryption"] == "scram-sha-256"

    def test_only_entra_id_signs_in_and_the_migration_job_is_the_administrator(self, example):
        server = example.one(SERVER).inputs
        assert server["authConfig"] == {"activeDirectoryAuth": "Enabled", "passwordAuth": "Disabled", "tenantId": TENANT}
        assert "administratorLogin" not in server and "administratorLoginPassword" not in server
        admins = {a.inputs["principalName"]: a.inputs for a in example.of_type("azure-native:dbforpostgresql:AdministratorsMicrosoftEntra")}
        assert admins["palisade-db-admins"]["principalType"] == "Group"
        migrator = admins["id-palisade-migrator"]
        assert (migrator["principalType"], migrator["objectId"]) == ("ServicePrincipal", principal_id_of("id-palisade-migrator"))
        # Not the API's identity: it signs in only as the app role `palisade migrate` creates for it.
        assert set(admins) == {"palisade-db-admins", "id-palisade-migrator"}
        job_env = env_of(example.one(JOB).inputs["template"]["containers"][0])
        assert job_env["PALISADE_DATABASE_APP_PRINCIPAL_ID"]["value"] == principal_id_of("id-palisade-app")

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
        # No password in either: the roles sign in with their identities' Entra ID tokens.
        assert admin == f"postgresql://id-palisade-migrator@{host}:5432/palisade?sslmode=verify-full&sslrootcert=system"
        assert app == f"postgresql://palisade_app@{host}:5432/palisade?sslmode=verify-full&sslrootcert=system"
        assert not example.of_type("random:index/randomPassword:RandomPassword")


class TestSecretsStayInTheVault:
    def test_generated_secrets_travel_only_to_the_vault_and_their_one_consumer(self, example):
        # Where a generated secret may be an input at all: the vault (there is no database password).
        allowed = {SECRET}
        seen = set()
        for r in example.resources:
            for path, wrapped in secret_occurrences(r.raw_inputs):
                assert r.type in allowed, f"{r.type} {r.name}{path} carries a secret"
                assert wrapped, f"{r.type} {r.name}{path} carries a secret not marked secret"
                seen.add(r.type)
        assert seen == allowed

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
        endpoint = example.one("azure-native:network:PrivateEndpoint", "secrets-endpoint").inputs
        assert endpoint["subnet"]["id"].endswith("/subnets/endpoints")
        connection = endpoint["privateLinkServiceConnections"][0]
        assert (connection["privateLinkServiceId"], connection["groupIds"]) == (vault_id, ["vault"])
        group = example.one("azure-native:network:PrivateDnsZoneGroup", "secrets-endpoint-dns").inputs
        assert group["privateDnsZoneConfigs"][0]["privateDnsZoneId"].endswith("/privatelink.vaultcore.azure.net")

    def test_vault_audit_logs_go_to_log_analytics(self, example):
        vault_id = example.one(VAULT).state["id"]
        workspace_id = example.one("azure-native:operationalinsights:Workspace").state["id"]
        setting = next(r.inputs for r in example.of_type("azure-native:monitor:DiagnosticSetting")
                       if r.inputs["resourceUri"] == vault_id)
        assert setting["workspaceId"] == workspace_id
        assert {"categoryGroup": "allLogs", "enabled": True} in setting["logs"]

    def test_kek_is_an_hsm_rsa_key_for_wrapping_only(self, example, variant):
        key = example.one(KEY, "secrets-kek").inputs["properties"]
        assert (key["kty"], key["keySize"], sorted(key["keyOps"])) == ("RSA-HSM", 3072, ["unwrapKey", "wrapKey"])
        assert key["rotationPolicy"]["lifetimeActions"][0]["action"]["type"] == "rotate"
        assert example.one(VAULT).inputs["properties"]["sku"]["name"] == "premium"
        assert variant.one(KEY, "secrets-kek").inputs["properties"]["kty"] == "RSA"
        assert variant.one(VAULT).inputs["properties"]["sku"]["name"] == "standard"


class TestAuditCheckpoints:
    def test_the_account_takes_entra_id_only_over_tls_1_2_and_no_public_network(self, example):
        account = example.one(STORAGE_ACCOUNT).inputs
        assert account["allowSharedKeyAccess"] is False and account["defaultToOAuthAuthentication"] is True
        assert account["minimumTlsVersion"] == "TLS1_2" and account["enableHttpsTrafficOnly"] is True
        assert account["allowBlobPublicAccess"] is False and account["publicNetworkAccess"] == "Disabled"
        assert account["networkRuleSet"] == {"defaultAction": "Deny", "bypass": "None", "ipRules": [], "virtualNetworkRules": []}
        endpoint = example.one("azure-native:network:PrivateEndpoint", "checkpoints-endpoint").inputs
        connection = endpoint["privateLinkServiceConnections"][0]
        assert (connection["privateLinkServiceId"], connection["groupIds"]) == (example.one(STORAGE_ACCOUNT).state["id"], ["blob"])

    def test_the_container_is_private_and_write_once_but_appendable(self, example):
        container = example.one("azure-native:storage:BlobContainer").inputs
        assert (container["containerName"], container["publicAccess"]) == ("audit-checkpoints", "None")
        policy = example.one("azure-native:storage:BlobContainerImmutabilityPolicy").inputs
        assert policy["containerName"] == "audit-checkpoints" and policy["allowProtectedAppendWrites"] is True
        assert policy["immutabilityPeriodSinceCreationInDays"] == 365
        longer = run_program({**example_stack_config(), "palisade:auditCheckpointRetentionDays": 2555})
        assert longer.one("azure-native:storage:BlobContainerImmutabilityPolicy").inputs[
            "immutabilityPeriodSinceCreationInDays"] == 2555

    def test_checkpoints_are_signed_by_a_non_exportable_ec_key_that_only_signs(self, example, variant):
        key = example.one(KEY, "secrets-checkpoint-key").inputs["properties"]
        assert (key["kty"], key["curveName"], sorted(key["keyOps"])) == ("EC-HSM", "P-256", ["sign", "verify"])
        assert key["attributes"]["exportable"] is False
        assert variant.one(KEY, "secrets-checkpoint-key").inputs["properties"]["kty"] == "EC"

    def test_the_app_is_pointed_at_the_container_and_the_key(self, example):
        env = env_of(example.one(CONTAINER_APP).inputs["template"]["containers"][0])
        account = example.one(STORAGE_ACCOUNT).inputs["accountName"]
        assert {k: env[k]["value"] for k in env if k.startswith("PALISADE_AUDIT_CHECKPOINT_")} == {
            "PALISADE_AUDIT_CHECKPOINT_SINK": "azure-blob",
            "PALISADE_AUDIT_CHECKPOINT_BLOB_ACCOUNT_URL": f"https://{account}.blob.core.windows.net/",
            "PALISADE_AUDIT_CHECKPOINT_BLOB_CONTAINER": "audit-checkpoints",
            "PALISADE_AUDIT_CHECKPOINT_KEY_URL": example.one(KEY, "secrets-checkpoint-key").state["keyUri"],
        }


class TestIdentity:
    def test_every_role_assignment_is_scoped_inside_the_vault_or_the_checkpoint_container(self, example):
        vault_id = example.one(VAULT).state["id"]
        container = example.one(STORAGE_ACCOUNT).state["id"] + "/blobServices/default/containers/audit-checkpoints"
        assignments = example.of_type(ROLE)
        assert assignments
        for r in assignments:
            assert r.inputs["scope"].startswith(vault_id + "/") or r.inputs["scope"] == container, r.inputs["scope"]
            assert r.inputs["principalType"] == "ServicePrincipal"

    def test_each_identity_holds_exactly_what_it_needs(self, example):
        assert grants(example) == {
            "id-palisade-app": {
                (SECRETS_USER, "secrets/database-url"),
                (SECRETS_USER, "secrets/turnstile-secret"),
                (SECRETS_USER, "secrets/appinsights-connection-string"),
                (CRYPTO_SERVICE_ENCRYPTION_USER, "keys/palisade-kek"),
                (CRYPTO_USER, "keys/palisade-audit-checkpoint"),
                (STORAGE_BLOB_DATA_CONTRIBUTOR, "blobServices/default/containers/audit-checkpoints"),
            },
            "id-palisade-migrator": {
                (SECRETS_USER, "secrets/admin-database-url"),
                (SECRETS_USER, "secrets/database-url"),
            },
            "id-palisade-tunnel": {(SECRETS_USER, "secrets/cloudflared-tunnel-token")},
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

    def test_nothing_reaches_a_replica_but_the_tunnel(self, example):
        # No ingress on the app and an internal environment: no public endpoint exists at all.
        assert "ingress" not in example.one(CONTAINER_APP).inputs["configuration"]
        assert example.one(ENVIRONMENT).inputs["vnetConfiguration"]["internal"] is True
        assert not example.of_type("azure-native:app:Certificate")

    def test_cloudflared_runs_beside_the_api_with_the_tunnel_token_from_the_vault(self, example):
        app = example.one(CONTAINER_APP).inputs
        containers = {c["name"]: c for c in app["template"]["containers"]}
        cloudflared = containers["cloudflared"]
        assert cloudflared["args"][:3] == ["tunnel", "--no-autoupdate", "--protocol"] and "quic" in cloudflared["args"]
        assert env_of(cloudflared)["TUNNEL_TOKEN"] == {"name": "TUNNEL_TOKEN", "secretRef": "cloudflared-tunnel-token"}
        secrets = {s["name"]: s for s in app["configuration"]["secrets"]}
        assert secrets["cloudflared-tunnel-token"]["identity"].endswith("/id-palisade-tunnel")
        assert vault_secret(example, defaults.TUNNEL_TOKEN)["properties"]["value"] == f"{SECRET_MARK}-tunnel-token"
        # The API container itself takes no secret from the platform: it reads its own.
        assert not [e for e in containers["api"]["env"] if "secretRef" in e]

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
        assert [c["name"] for c in other] == ["api", "cloudflared"]
        assert env_of(other[0])["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "https://otel.example.com"

    def test_migrations_run_before_the_api_changes(self, example):
        # pulumi up: the job gets the new image, one execution of it must succeed, then the API.
        run = example.one("pulumi-python:dynamic:Resource", "migration-run")
        assert run.inputs["image"] == example.one(CONTAINER_APP).inputs["template"]["containers"][0]["image"]
        assert run.inputs["job_id"] == example.one(JOB).state["id"]
        assert example.waits_for("app-migration-run", "app-migrate")
        # The job signs in to PostgreSQL as its Entra administrator, so that assignment comes first.
        assert example.waits_for("app-migration-run", "database-access-migrator-admin")

    def test_grants_come_after_what_they_grant_and_before_who_uses_them(self, example):
        # A role assignment scoped to a secret needs the secret; a workload needs its grants.
        assert example.waits_for("identity-app-reads-database-url", "database-app-url")
        assert example.waits_for("identity-migrator-reads-admin-database-url", "database-admin-url")
        assert example.waits_for("identity-tunnel-reads-cloudflared-tunnel-token", "edge-tunnel-token")
        for workload in ("app-api", "app-migrate", "app-migration-run"):
            assert example.waits_for(workload, "identity-app-reads-database-url"), workload
            assert example.waits_for(workload, "identity-migrator-reads-admin-database-url"), workload
        assert example.waits_for("app-api", "app-migration-run")
        assert not example.waits_for("app-migrate", "app-api")

    def test_the_registry_is_pulled_with_the_workloads_own_identity(self, variant):
        app = variant.one(CONTAINER_APP).inputs
        registry = app["configuration"]["registries"][0]
        assert registry == {"server": "palisadeacr.azurecr.io", "identity": app["identity"]["userAssignedIdentities"][0]}
        assert (SECRETS_USER, "secrets/sentry-dsn") in grants(variant)["id-palisade-app"]


class TestEdge:
    def test_the_app_host_name_is_a_proxied_record_for_the_tunnel(self, example):
        (record,) = [r.inputs for r in example.of_type(DNS)]
        assert (record["name"], record["type"], record["proxied"]) == ("palisade.example.com", "CNAME", True)
        assert record["content"] == f"{TUNNEL_ID}.cfargotunnel.com"

    def test_the_tunnel_routes_only_the_app_host_name_to_the_api_on_loopback(self, example):
        tunnel = example.one("cloudflare:index/zeroTrustTunnelCloudflared:ZeroTrustTunnelCloudflared").inputs
        assert tunnel["configSrc"] == "cloudflare"
        config = example.one("cloudflare:index/zeroTrustTunnelCloudflaredConfig:ZeroTrustTunnelCloudflaredConfig").inputs
        assert config["tunnelId"] == TUNNEL_ID
        assert config["config"]["ingresses"] == [
            {"hostname": "palisade.example.com", "service": "http://localhost:8000",
             "originRequest": {"keepAliveTimeout": defaults.TUNNEL_ORIGIN_KEEP_ALIVE_SECONDS}},
            {"service": "http_status:404"},
        ]

    def test_the_sidecar_drops_an_idle_connection_before_the_api_does(self, example):
        # Otherwise cloudflared may send a request on a connection the API is closing: a 502.
        config = example.one("cloudflare:index/zeroTrustTunnelCloudflaredConfig:ZeroTrustTunnelCloudflaredConfig").inputs
        sidecar_idle = config["config"]["ingresses"][0]["originRequest"]["keepAliveTimeout"]
        api = example.one(CONTAINER_APP).inputs["template"]["containers"][0]
        assert 0 < sidecar_idle < int(env_of(api)["PALISADE_KEEP_ALIVE_SECONDS"]["value"])

    def test_tls_1_3_for_the_app_host_name_and_nothing_zone_wide_by_default(self, example, zone_managed):
        (tls,) = [r.inputs for r in example.of_type("cloudflare:index/hostnameTlsSetting:HostnameTlsSetting")]
        assert (tls["hostname"], tls["settingId"], tls["value"]) == ("palisade.example.com", "min_tls_version", "1.3")
        assert not example.of_type(ZONE_SETTING)
        settings = {r.inputs["settingId"]: r.inputs["value"] for r in zone_managed.of_type(ZONE_SETTING)}
        assert (settings["ssl"], settings["tls_1_3"], settings["always_use_https"], settings["0rtt"]) == (
            "strict", "on", "on", "off")
        assert settings["security_header"]["strict_transport_security"]["include_subdomains"] is True

    def test_every_edge_rule_matches_the_app_host_name_only(self, example):
        rules = [rule for r in example.of_type(RULESET) for rule in r.inputs["rules"]]
        assert len(rules) >= 5
        for rule in rules:
            assert rule["expression"].startswith('(http.host eq "palisade.example.com")'), rule

    def test_plain_http_is_redirected_to_https(self, example):
        (redirect,) = [r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_request_dynamic_redirect"]
        rule = redirect["rules"][0]
        assert rule["expression"].endswith("and not ssl") and rule["action"] == "redirect"
        target = rule["actionParameters"]["fromValue"]
        assert target["statusCode"] == 308 and target["preserveQueryString"] is True
        assert target["targetUrl"]["expression"].startswith('concat("https://palisade.example.com"')

    def test_managed_waf_rulesets_are_deployed(self, example):
        managed = next(r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_request_firewall_managed")
        executed = {rule["actionParameters"]["id"] for rule in managed["rules"] if rule["action"] == "execute" and rule["enabled"]}
        assert executed == {defaults.CLOUDFLARE_MANAGED_RULESET, defaults.CLOUDFLARE_OWASP_RULESET}

    def test_custom_rules_block_and_challenge(self, example, variant):
        custom = next(r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_request_firewall_custom")
        rules = {rule["description"]: rule for rule in custom["rules"]}
        assert rules["blocked countries"]["expression"] == HOST + '(ip.src.country in {"KP"})'
        assert rules["blocked countries"]["action"] == "block"
        challenge = rules["challenge on sensitive paths"]
        assert challenge["action"] == "managed_challenge"
        assert challenge["expression"] == HOST + '(http.request.uri.path in {"/api/v1/invitations/accept"})'
        other = next(r.inputs for r in variant.of_type(RULESET) if r.inputs["phase"] == "http_request_firewall_custom")
        assert {"action": "block", "expression": HOST + "(ip.src.asnum in {64496 64511})"}.items() <= {
            k: v for rule in other["rules"] if "ASN" in rule["description"] for k, v in rule.items()}.items()

    def test_api_is_rate_limited_per_client_ip(self, example):
        limit = next(r.inputs for r in example.of_type(RULESET) if r.inputs["phase"] == "http_ratelimit")
        rule = limit["rules"][0]
        assert rule["action"] == "block"
        assert rule["expression"] == HOST + '(starts_with(http.request.uri.path, "/api/"))'
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
            "appIdentityClientId": client_id_of("id-palisade-app"),
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
        assert set(example.calls) == {"azure-native:authorization:getClientConfig",
                                      "cloudflare:index/getZeroTrustTunnelCloudflaredToken:getZeroTrustTunnelCloudflaredToken"}

    def test_the_stack_is_composed_of_the_components(self, example):
        assert {r.type for r in example.resources if r.type.startswith("palisade:infra:")} == {
            f"palisade:infra:{c}" for c in
            ("Network", "Monitoring", "Secrets", "CheckpointStore", "Database", "Edge", "Identity", "AppEnvironment",
             "EdgeDns", "AppHosting", "Alerting", "DatabaseAccess")}
