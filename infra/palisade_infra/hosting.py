"""App hosting: the internal Container Apps environment in the VNet, the API (at least two
replicas, health probes, no ingress: a cloudflared sidecar dials out to the Cloudflare Tunnel) and
the migration job.

Secrets: `palisade` reads its own from Key Vault as its own managed identity (the API's identity
is granted only the API's secrets, the job's identity the schema owner's URL); third-party
sidecars get theirs as Key Vault references (`keyVaultUrl` + `identity`). No container app or
job carries a secret value.

The image's entrypoint is `palisade`: containers pass only its arguments (`serve ...`, `migrate`).

Traces: the app exports OTLP over HTTP/protobuf. Unless `otlpEndpoint` names a collector, an
OpenTelemetry Collector sidecar receives them on localhost and forwards them to Application
Insights (its connection string is itself a Key Vault reference).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.app as app
import pulumi_azure_native.monitor as monitor

from . import defaults
from .config import Issuer
from .migration import MigrationRun
from .options import children_of

WORKLOAD_PROFILE = "Consumption"


def app_name(prefix: str) -> str:
    """The container app's name; its Azure FQDN is `<name>.<environment default domain>`."""
    return f"ca-{prefix}-api"

COLLECTOR_PORT = 4318

# Receives OTLP/HTTP on loopback only; nothing outside the replica can send to it.
COLLECTOR_CONFIG = f"""\
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{COLLECTOR_PORT}
processors:
  batch: {{}}
exporters:
  azuremonitor:
    connection_string: ${{env:APPLICATIONINSIGHTS_CONNECTION_STRING}}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [azuremonitor]
"""


@dataclass
class AppEnvironmentArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    infrastructure_subnet_id: pulumi.Input[str]
    log_workspace_id: pulumi.Input[str]
    tags: Mapping[str, str] = field(default_factory=dict)


class AppEnvironment(pulumi.ComponentResource):
    """The Container Apps environment: internal (no public IP, no public ingress at all).

    Nothing outside the VNet can open a connection to a replica: visitors reach the API only
    through the Cloudflare Tunnel that the `cloudflared` sidecar dials out to (see `edge.py`).
    """

    environment_id: pulumi.Output[str]
    default_domain: pulumi.Output[str]

    def __init__(self, name: str, args: AppEnvironmentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:AppEnvironment", name, None, opts)
        child = children_of(self, opts)

        environment = app.ManagedEnvironment(
            f"{name}-environment",
            resource_group_name=args.resource_group_name,
            location=args.location,
            environment_name=f"cae-{args.prefix}",
            vnet_configuration=app.VnetConfigurationArgs(
                infrastructure_subnet_id=args.infrastructure_subnet_id,
                # Internal: no public endpoint. Cloudflare reaches the app through the tunnel only.
                internal=True,
            ),
            workload_profiles=[app.WorkloadProfileArgs(name=WORKLOAD_PROFILE, workload_profile_type=WORKLOAD_PROFILE)],
            zone_redundant=True,
            # Logs go to Azure Monitor and from there (diagnostic setting below) to the workspace, so
            # no workspace shared key is ever handed to the environment.
            app_logs_configuration=app.AppLogsConfigurationArgs(destination="azure-monitor"),
            peer_authentication=app.ManagedEnvironmentPeerAuthenticationArgs(mtls=app.MtlsArgs(enabled=True)),
            peer_traffic_configuration=app.ManagedEnvironmentPeerTrafficConfigurationArgs(
                encryption=app.ManagedEnvironmentEncryptionArgs(enabled=True)
            ),
            tags=dict(args.tags),
            opts=child,
        )
        monitor.DiagnosticSetting(
            f"{name}-logs",
            name="logs-to-log-analytics",
            resource_uri=environment.id,
            workspace_id=args.log_workspace_id,
            log_analytics_destination_type="Dedicated",
            logs=[monitor.DiagnosticsLogSettingsArgs(category_group="allLogs", enabled=True)],
            opts=child,
        )

        self.environment_id = environment.id
        self.default_domain = environment.default_domain
        self.register_outputs({"environment_id": self.environment_id, "default_domain": self.default_domain})


@dataclass
class KeyVaultSecretRef:
    """A Container Apps secret resolved from Key Vault, exposed to a sidecar container as `env`.

    Only third-party sidecars (cloudflared, the collector) take secrets this way; the app reads
    its own from Key Vault itself, with its own identity, because production refuses secrets in
    its environment.
    """

    name: str  # the Key Vault secret name, reused as the Container Apps secret name
    url: pulumi.Input[str]  # versionless secret URI
    env: str  # the environment variable the container reads
    identity_id: pulumi.Input[str]  # the user-assigned identity that resolves it


@dataclass
class AppHostingArgs:
    prefix: str
    stack: str
    location: str
    resource_group_name: pulumi.Input[str]
    environment_id: pulumi.Input[str]
    domain: str
    image: str
    port: int
    min_replicas: int
    max_replicas: int
    cpu: float
    memory: str
    app_identity_id: pulumi.Input[str]
    app_identity_client_id: pulumi.Input[str]
    app_identity_principal_id: pulumi.Input[str]
    migrator_identity_id: pulumi.Input[str]
    migrator_identity_client_id: pulumi.Input[str]
    tunnel_identity_id: pulumi.Input[str]
    vault_uri: pulumi.Input[str]
    kek_uri: pulumi.Input[str]
    checkpoint_key_uri: pulumi.Input[str]
    checkpoint_account_url: pulumi.Input[str]
    checkpoint_container: str
    issuers: Sequence[Issuer]
    tunnel_token: KeyVaultSecretRef
    cloudflared_image: str
    # Optional secrets the app reads (stored in the vault and granted to its identity).
    optional_secrets: Sequence[str] = ()
    cors_allow_origins: Sequence[str] = ()
    alert_webhook_url: str | None = None
    otlp_endpoint: str | None = None
    collector_image: str = ""
    collector_secret: KeyVaultSecretRef | None = None
    registry_server: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def _env(values: Mapping[str, pulumi.Input[str]], secrets: Sequence[KeyVaultSecretRef] = ()) -> list[app.EnvironmentVarArgs]:
    return [app.EnvironmentVarArgs(name=k, value=v) for k, v in values.items()] + [
        app.EnvironmentVarArgs(name=s.env, secret_ref=s.name) for s in secrets
    ]


def _secrets(refs: Sequence[KeyVaultSecretRef]) -> list[app.SecretArgs]:
    return [app.SecretArgs(name=s.name, key_vault_url=s.url, identity=s.identity_id) for s in refs]


def reads_key_vault(
    vault_uri: pulumi.Input[str], identity_client_id: pulumi.Input[str], optional_secrets: Sequence[str] = ()
) -> dict[str, pulumi.Input[str]]:
    """The settings that make `palisade` read its secrets from Key Vault as one managed identity:
    its required ones, and of the optional ones exactly those this stack stores and grants."""
    return {
        "PALISADE_SECRET_PROVIDER": "keyvault",
        "PALISADE_OPTIONAL_SECRETS": ",".join(optional_secrets),
        "PALISADE_KEY_VAULT_URL": vault_uri,
        "PALISADE_AZURE_MANAGED_IDENTITY_CLIENT_ID": identity_client_id,
        "AZURE_CLIENT_ID": identity_client_id,
    }


class AppHosting(pulumi.ComponentResource):
    """The API (app container + cloudflared + optional collector) and the migration job."""

    app_id: pulumi.Output[str]
    job_id: pulumi.Output[str]
    migration_job_name: pulumi.Output[str]

    def __init__(self, name: str, args: AppHostingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:AppHosting", name, None, opts)
        child = children_of(self, opts)

        common: dict[str, pulumi.Input[str]] = {
            "PALISADE_MODE": "production",
            "PALISADE_ISSUERS": json.dumps([i.to_app() for i in args.issuers], separators=(",", ":")),
            "PALISADE_LOG_JSON": "true",
            # PostgreSQL sign-in with the workload's own Entra ID tokens: no database password.
            "PALISADE_DATABASE_AUTH": "entra",
        }
        app_settings: dict[str, pulumi.Input[str]] = {
            **common,
            **reads_key_vault(args.vault_uri, args.app_identity_client_id, args.optional_secrets),
            "PALISADE_KEK_PROVIDER": "keyvault",
            "PALISADE_KEK_KEY_URL": args.kek_uri,
            # Audit checkpoints: append blobs in the immutable container, signed in the vault.
            "PALISADE_AUDIT_CHECKPOINT_SINK": "azure-blob",
            "PALISADE_AUDIT_CHECKPOINT_BLOB_ACCOUNT_URL": args.checkpoint_account_url,
            "PALISADE_AUDIT_CHECKPOINT_BLOB_CONTAINER": args.checkpoint_container,
            "PALISADE_AUDIT_CHECKPOINT_KEY_URL": args.checkpoint_key_uri,
            # Only the app's own host name is served; the tunnel routes nothing else here either.
            "PALISADE_ALLOWED_HOSTS": args.domain,
            # The Cloudflare hop is the cloudflared sidecar on loopback: it alone names the client
            # (CF-Connecting-IP) and the scheme the visitor used.
            "PALISADE_CLOUDFLARE_RANGES": "127.0.0.1/32",
            "PALISADE_TURNSTILE_EXPECTED_HOSTNAME": args.domain,
            # Longer than the sidecar's idle keep-alive toward it (defaults.py).
            "PALISADE_KEEP_ALIVE_SECONDS": str(defaults.APP_KEEP_ALIVE_SECONDS),
            "OTEL_SERVICE_NAME": "palisade",
            "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment={args.stack},service.namespace={args.prefix}",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": args.otlp_endpoint or f"http://127.0.0.1:{COLLECTOR_PORT}",
        }
        if args.cors_allow_origins:
            app_settings["PALISADE_CORS_ALLOW_ORIGINS"] = ",".join(args.cors_allow_origins)
        if args.alert_webhook_url:
            app_settings["PALISADE_ALERT_WEBHOOK_URL"] = args.alert_webhook_url

        def probe(kind: str, path: str, **timing: int) -> app.ContainerAppProbeArgs:
            return app.ContainerAppProbeArgs(
                type=kind, http_get=app.ContainerAppProbeHttpGetArgs(path=path, port=args.port, scheme="HTTP"), **timing
            )

        containers = [
            app.ContainerArgs(
                name="api",
                image=args.image,
                args=["serve", "--host", "0.0.0.0", "--port", str(args.port)],
                resources=app.ContainerResourcesArgs(cpu=args.cpu, memory=args.memory),
                env=_env(app_settings),
                probes=[
                    probe("Startup", "/health/live", period_seconds=5, failure_threshold=24, timeout_seconds=3),
                    probe("Liveness", "/health/live", period_seconds=10, failure_threshold=3, timeout_seconds=3),
                    probe("Readiness", "/health/ready", period_seconds=10, failure_threshold=3, timeout_seconds=5),
                ],
            ),
            # Dials out to Cloudflare (QUIC, so TLS 1.3) and forwards the app's host name, and
            # nothing else, to the API on loopback (the tunnel's ingress rules, edge.py).
            app.ContainerArgs(
                name="cloudflared",
                image=args.cloudflared_image,
                args=["tunnel", "--no-autoupdate", "--protocol", "quic", "--metrics", "127.0.0.1:20241", "run"],
                resources=app.ContainerResourcesArgs(cpu=0.25, memory="0.5Gi"),
                env=_env({}, [args.tunnel_token]),
            ),
        ]
        secret_refs = [args.tunnel_token]
        if not args.otlp_endpoint and args.collector_secret is not None:
            secret_refs.append(args.collector_secret)
            containers.append(
                app.ContainerArgs(
                    name="otel-collector",
                    image=args.collector_image,
                    args=["--config=env:OTELCOL_CONFIG"],
                    resources=app.ContainerResourcesArgs(cpu=0.25, memory="0.5Gi"),
                    env=_env({"OTELCOL_CONFIG": COLLECTOR_CONFIG}, [args.collector_secret]),
                )
            )

        # The migration job: the only workload whose identity may read the schema owner's URL.
        job_settings = {
            **common,
            **reads_key_vault(args.vault_uri, args.migrator_identity_client_id),
            # The app role is created for the API identity's object id.
            "PALISADE_DATABASE_APP_PRINCIPAL_ID": args.app_identity_principal_id,
        }
        job = app.Job(
            f"{name}-migrate",
            resource_group_name=args.resource_group_name,
            location=args.location,
            job_name=f"caj-{args.prefix}-migrate",
            environment_id=args.environment_id,
            workload_profile_name=WORKLOAD_PROFILE,
            identity=app.ManagedServiceIdentityArgs(
                type="UserAssigned", user_assigned_identities=[args.migrator_identity_id]
            ),
            configuration=app.JobConfigurationArgs(
                trigger_type="Manual",
                replica_timeout=1800,
                # A failed migration is looked at, not retried blindly.
                replica_retry_limit=0,
                manual_trigger_config=app.JobConfigurationManualTriggerConfigArgs(parallelism=1, replica_completion_count=1),
                registries=(
                    [app.RegistryCredentialsArgs(server=args.registry_server, identity=args.migrator_identity_id)]
                    if args.registry_server else None
                ),
            ),
            template=app.JobTemplateArgs(
                containers=[
                    app.ContainerArgs(
                        name="migrate",
                        image=args.image,
                        args=["migrate"],
                        resources=app.ContainerResourcesArgs(cpu=0.5, memory="1Gi"),
                        env=_env(job_settings),
                    )
                ]
            ),
            tags=dict(args.tags),
            opts=child,
        )

        # Migrations before traffic: this image's migration run succeeds before the API changes.
        migration = MigrationRun(f"{name}-migration-run", job_id=job.id, image=args.image,
                                 opts=children_of(self, opts, depends_on=[job]))

        container_app = app.ContainerApp(
            f"{name}-api",
            resource_group_name=args.resource_group_name,
            location=args.location,
            container_app_name=app_name(args.prefix),
            environment_id=args.environment_id,
            workload_profile_name=WORKLOAD_PROFILE,
            identity=app.ManagedServiceIdentityArgs(
                type="UserAssigned", user_assigned_identities=[args.app_identity_id, args.tunnel_identity_id]
            ),
            configuration=app.ConfigurationArgs(
                # Single: a new revision takes all traffic once ready; the old one serves until then.
                active_revisions_mode="Single",
                # No ingress: nothing, not even the VNet, addresses the replicas; the tunnel is the way in.
                secrets=_secrets(secret_refs),
                registries=(
                    [app.RegistryCredentialsArgs(server=args.registry_server, identity=args.app_identity_id)]
                    if args.registry_server else None
                ),
            ),
            template=app.TemplateArgs(
                containers=containers,
                scale=app.ScaleArgs(min_replicas=args.min_replicas, max_replicas=args.max_replicas),
            ),
            tags=dict(args.tags),
            opts=children_of(self, opts, depends_on=[migration]),
        )

        self.app_id = container_app.id
        self.job_id = job.id
        self.migration_job_name = job.name
        self.register_outputs({"migration_job_name": self.migration_job_name})
