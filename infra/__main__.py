"""Palisade: the stack, composed from component resources (one module each in palisade_infra/).

Order follows the trust chain: network and logs, then the vault, then what stores secrets in it
(database, edge and its tunnel), then the identities allowed to read them, then what runs as
those identities.
"""

import re

import pulumi
import pulumi.runtime.config as runtime_config
from palisade_infra import config as stack_config
from palisade_infra import defaults
from palisade_infra.checkpoints import CheckpointStore, CheckpointStoreArgs
from palisade_infra.database import Database, DatabaseAccess, DatabaseAccessArgs, DatabaseArgs
from palisade_infra.edge import Edge, EdgeArgs, EdgeDns, EdgeDnsArgs
from palisade_infra.hosting import AppEnvironment, AppEnvironmentArgs, AppHosting, AppHostingArgs, KeyVaultSecretRef
from palisade_infra.identity import Identity, IdentityArgs, identity_name
from palisade_infra.monitoring import Monitoring, MonitoringArgs
from palisade_infra.network import Network, NetworkArgs
from palisade_infra.vault import Secrets, SecretsArgs

# Validated before anything is declared: a bad stack fails `pulumi preview` listing every problem.
# The whole config map (the SDK exposes no public listing) serves only to catch misspelt keys.
palisade_config = pulumi.Config(stack_config.NAMESPACE)
cfg = stack_config.load(palisade_config, all_keys=runtime_config.CONFIG.get())
config_secrets = {defaults.SECRET_CONFIG_KEYS[k]: v for k, v in stack_config.load_secrets(palisade_config).items()}
use_collector = cfg.otlp_endpoint is None

stack = re.sub(r"[^a-z0-9-]", "-", pulumi.get_stack().lower())[:20]
tags = {"app": "palisade", "stack": stack, **cfg.tags}

network = Network("network", NetworkArgs(
    prefix=cfg.prefix, location=cfg.location, address_space=cfg.address_space, apps_subnet=cfg.apps_subnet,
    database_subnet=cfg.database_subnet, endpoints_subnet=cfg.endpoints_subnet,
    resource_group_name=f"rg-{cfg.prefix}-{stack}", tags=tags,
))

monitoring = Monitoring("monitoring", MonitoringArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    retention_days=cfg.log_retention_days, tags=tags,
))

secrets = Secrets("secrets", SecretsArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    endpoints_subnet_id=network.endpoints_subnet_id, key_vault_dns_zone_id=network.key_vault_dns_zone_id,
    log_workspace_id=monitoring.workspace_id, kek_key_type=cfg.kek_key_type, kek_key_size=cfg.kek_key_size,
    kek_rotation_days=cfg.kek_rotation_days, soft_delete_retention_days=cfg.soft_delete_retention_days,
    stored_secrets={
        **config_secrets,
        **({defaults.APPINSIGHTS_CONNECTION_STRING: monitoring.app_insights_connection_string} if use_collector else {}),
    },
    tags=tags,
), opts=pulumi.ResourceOptions(depends_on=[network]))

checkpoints = CheckpointStore("checkpoints", CheckpointStoreArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    endpoints_subnet_id=network.endpoints_subnet_id, blob_dns_zone_id=network.blob_dns_zone_id,
    retention_days=cfg.audit_checkpoint_retention_days, tags=tags,
), opts=pulumi.ResourceOptions(depends_on=[network]))

database = Database("database", DatabaseArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    delegated_subnet_id=network.database_subnet_id, private_dns_zone_id=network.postgres_dns_zone_id,
    vault=secrets.vault, version=cfg.postgres_version, sku=cfg.postgres_sku, tier=cfg.postgres_tier,
    storage_gb=cfg.postgres_storage_gb, high_availability=cfg.postgres_high_availability,
    geo_redundant_backup=cfg.postgres_geo_redundant_backup, backup_retention_days=cfg.postgres_backup_retention_days,
    min_tls=cfg.postgres_min_tls, entra_admin=cfg.postgres_entra_admin, database_name=cfg.database_name,
    admin_role=identity_name(cfg.prefix, "migrator"), app_role=cfg.app_role, tags=tags,
), opts=pulumi.ResourceOptions(depends_on=[network]))

edge = Edge("edge", EdgeArgs(
    prefix=cfg.prefix, domain=cfg.domain, zone_id=cfg.cloudflare_zone_id, account_id=cfg.cloudflare_account_id,
    vault=secrets.vault, port=cfg.port, blocked_countries=cfg.blocked_countries, blocked_asns=cfg.blocked_asns,
    challenge_paths=cfg.challenge_paths, api_path_prefix=cfg.api_path_prefix,
    rate_limit_per_minute=cfg.edge_rate_limit_per_minute, manage_zone_settings=cfg.manage_zone_settings,
    hsts_max_age_seconds=cfg.hsts_max_age_seconds, hsts_include_subdomains=cfg.hsts_include_subdomains,
    hsts_preload=cfg.hsts_preload,
))

# What each identity may read: the app's own secrets (those this stack stores), the migration
# job's two URLs, the tunnel token. One role assignment per secret (identity.py).
app_secrets = [name for name in defaults.APP_SECRETS
               if name in (defaults.DATABASE_URL, defaults.TURNSTILE_SECRET) or name in config_secrets]
collector_secrets = [defaults.APPINSIGHTS_CONNECTION_STRING] if use_collector else []

identity = Identity("identity", IdentityArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    vault_id=secrets.vault.id, kek_id=secrets.kek_id, checkpoint_key_id=secrets.checkpoint_key_id,
    checkpoint_container_id=checkpoints.container_id, app_secrets=[*app_secrets, *collector_secrets],
    migrator_secrets=list(defaults.MIGRATION_SECRETS), tunnel_secrets=[defaults.TUNNEL_TOKEN],
    federated_credentials=cfg.federated_credentials, tags=tags,
), opts=pulumi.ResourceOptions(depends_on=[secrets, checkpoints, database, edge]))

database_access = DatabaseAccess("database-access", DatabaseAccessArgs(
    resource_group_name=network.resource_group_name, server_name=database.server_name, tenant_id=database.tenant_id,
    migrator_name=identity_name(cfg.prefix, "migrator"), migrator_principal_id=identity.migrator.principal_id,
), opts=pulumi.ResourceOptions(depends_on=[database, identity]))

environment = AppEnvironment("environment", AppEnvironmentArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    infrastructure_subnet_id=network.apps_subnet_id, log_workspace_id=monitoring.workspace_id, tags=tags,
), opts=pulumi.ResourceOptions(depends_on=[identity]))

edge_dns = EdgeDns("edge-dns", EdgeDnsArgs(zone_id=cfg.cloudflare_zone_id, domain=cfg.domain, tunnel_cname=edge.tunnel_cname))


def sidecar_secret(name: str, env: str, identity_id: pulumi.Input[str]) -> KeyVaultSecretRef:
    return KeyVaultSecretRef(name=name, url=secrets.vault.secret_url(name), env=env, identity_id=identity_id)


hosting = AppHosting("app", AppHostingArgs(
    prefix=cfg.prefix, stack=stack, location=cfg.location, resource_group_name=network.resource_group_name,
    environment_id=environment.environment_id, domain=cfg.domain,
    image=cfg.image, port=cfg.port, min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas, cpu=cfg.cpu,
    memory=cfg.memory, app_identity_id=identity.app.id, app_identity_client_id=identity.app.client_id,
    migrator_identity_id=identity.migrator.id, migrator_identity_client_id=identity.migrator.client_id,
    app_identity_principal_id=identity.app.principal_id,
    tunnel_identity_id=identity.tunnel.id, vault_uri=secrets.vault_uri, kek_uri=secrets.kek_uri,
    checkpoint_key_uri=secrets.checkpoint_key_uri, checkpoint_account_url=checkpoints.account_url,
    checkpoint_container=checkpoints.container_name,
    issuers=cfg.issuers, tunnel_token=sidecar_secret(defaults.TUNNEL_TOKEN, "TUNNEL_TOKEN", identity.tunnel.id),
    cloudflared_image=cfg.cloudflared_image,
    optional_secrets=[name for name in defaults.OPTIONAL_APP_SECRETS if name in app_secrets], cors_allow_origins=cfg.cors_allow_origins,
    alert_webhook_url=cfg.alert_webhook_url, otlp_endpoint=cfg.otlp_endpoint, collector_image=cfg.collector_image,
    collector_secret=sidecar_secret(defaults.APPINSIGHTS_CONNECTION_STRING, "APPLICATIONINSIGHTS_CONNECTION_STRING",
                                    identity.app.id) if use_collector else None,
    registry_server=cfg.registry_server, tags=tags,
), opts=pulumi.ResourceOptions(depends_on=[identity, edge_dns, database_access]))

# Monitoring and alerts: PostgreSQL and app diagnostic settings, log and metric alert rules wired to
# one action group, opt-in Defender plans (alerting.py). Last: it watches what is declared above.
from palisade_infra.alerting import Alerting, AlertingArgs  # noqa: E402

alerting = Alerting("alerting", AlertingArgs(
    prefix=cfg.prefix, location=cfg.location, resource_group_name=network.resource_group_name,
    log_workspace_id=monitoring.workspace_id, postgres_server_id=database.server_id, vault_id=secrets.vault.id,
    container_app_id=hosting.app_id, job_id=hosting.job_id, alert_emails=cfg.alert_emails,
    # Read as a secret: the URL may carry a token (cfg only validated it).
    webhook_url=palisade_config.get_secret("azureMonitorWebhookUrl") if cfg.azure_monitor_webhook_url else None,
    defender_plans=cfg.defender_plans, tags=tags,
))

# Plain outputs only: nothing here is a secret (the vault holds those).
pulumi.export("appUrl", cfg.app_url)
pulumi.export("keyVaultUri", secrets.vault_uri)
pulumi.export("databaseHost", database.host)
pulumi.export("appIdentityClientId", identity.app.client_id)
pulumi.export("turnstileSiteKey", edge.turnstile_site_key)
pulumi.export("migrationJobName", hosting.migration_job_name)
pulumi.export("resourceGroupName", network.resource_group_name)
