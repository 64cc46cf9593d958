"""App hosting: the Container Apps environment in the VNet, the API (at least two replicas, health
probes, ingress only from Cloudflare, secrets by Key Vault reference) and the migration job.

Secrets reach containers only as Key Vault references resolved by a managed identity
(`keyVaultUrl` + `identity`); no container app or job carries a secret value.

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

from .config import Issuer

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
    ingress_identity_id: pulumi.Input[str]
    origin_certificate_url: pulumi.Input[str]
    tags: Mapping[str, str] = field(default_factory=dict)


class AppEnvironment(pulumi.ComponentResource):
    environment_id: pulumi.Output[str]
    default_domain: pulumi.Output[str]
    verification_id: pulumi.Output[str]
    certificate_id: pulumi.Output[str]

    def __init__(self, name: str, args: AppEnvironmentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:AppEnvironment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        environment = app.ManagedEnvironment(
            f"{name}-environment",
            resource_group_name=args.resource_group_name,
            location=args.location,
            environment_name=f"cae-{args.prefix}",
            vnet_configuration=app.VnetConfigurationArgs(
                infrastructure_subnet_id=args.infrastructure_subnet_id,
                # External: Cloudflare must reach the ingress; the app's IP rules admit only Cloudflare.
                internal=False,
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
            identity=app.ManagedServiceIdentityArgs(type="UserAssigned", user_assigned_identities=[args.ingress_identity_id]),
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
        certificate = app.Certificate(
            f"{name}-origin-certificate",
            resource_group_name=args.resource_group_name,
            environment_name=environment.name,
            location=args.location,
            certificate_name="cloudflare-origin",
            properties=app.CertificatePropertiesArgs(
                certificate_type="ServerSSLCertificate",
                certificate_key_vault_properties=app.CertificateKeyVaultPropertiesArgs(
                    identity=args.ingress_identity_id, key_vault_url=args.origin_certificate_url
                ),
            ),
            opts=child,
        )

        self.environment_id = environment.id
        self.default_domain = environment.default_domain
        self.verification_id = environment.custom_domain_configuration.apply(
            lambda c: c.custom_domain_verification_id if c else None
        )
        self.certificate_id = certificate.id
        self.register_outputs({"environment_id": self.environment_id, "default_domain": self.default_domain})


@dataclass
class KeyVaultSecretRef:
    """A Container Apps secret resolved from Key Vault, exposed to a container as `env`."""

    name: str  # the Key Vault secret name, reused as the Container Apps secret name
    url: pulumi.Input[str]  # versionless secret URI
    env: str  # the environment variable the container reads


@dataclass
class AppHostingArgs:
    prefix: str
    stack: str
    location: str
    resource_group_name: pulumi.Input[str]
    environment_id: pulumi.Input[str]
    certificate_id: pulumi.Input[str]
    domain: str
    image: str
    port: int
    min_replicas: int
    max_replicas: int
    cpu: float
    memory: str
    app_identity_id: pulumi.Input[str]
    app_identity_client_id: pulumi.Input[str]
    migrator_identity_id: pulumi.Input[str]
    vault_uri: pulumi.Input[str]
    kek_uri: pulumi.Input[str]
    issuers: Sequence[Issuer]
    trusted_proxies: Sequence[str]
    cloudflare_ranges: Sequence[str]
    ingress_allowed_ranges: Sequence[str]
    app_secrets: Sequence[KeyVaultSecretRef]
    migration_secrets: Sequence[KeyVaultSecretRef]
    cors_allow_origins: Sequence[str] = ()
    alert_webhook_url: str | None = None
    otlp_endpoint: str | None = None
    collector_image: str = ""
    collector_secret: KeyVaultSecretRef | None = None
    registry_server: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def _env(values: Mapping[str, pulumi.Input[str]], secrets: Sequence[KeyVaultSecretRef]) -> list[app.EnvironmentVarArgs]:
    return [app.EnvironmentVarArgs(name=k, value=v) for k, v in values.items()] + [
        app.EnvironmentVarArgs(name=s.env, secret_ref=s.name) for s in secrets
    ]


def _secrets(refs: Sequence[KeyVaultSecretRef], identity_id: pulumi.Input[str]) -> list[app.SecretArgs]:
    return [app.SecretArgs(name=s.name, key_vault_url=s.url, identity=identity_id) for s in refs]


class AppHosting(pulumi.ComponentResource):
    app_fqdn: pulumi.Output[str]
    migration_job_name: pulumi.Output[str]

    def __init__(self, name: str, args: AppHostingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:AppHosting", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        registries = (
            [app.RegistryCredentialsArgs(server=args.registry_server, identity=args.app_identity_id)]
            if args.registry_server else None
        )

        app_settings: dict[str, pulumi.Input[str]] = {
            "PALISADE_MODE": "production",
            "PALISADE_ISSUERS": json.dumps([i.to_app() for i in args.issuers], separators=(",", ":")),
            "PALISADE_TRUSTED_PROXIES": ",".join(args.trusted_proxies),
            "PALISADE_CLOUDFLARE_RANGES": ",".join(args.cloudflare_ranges),
            "PALISADE_SECRET_PROVIDER": "keyvault",
            "PALISADE_KEY_VAULT_URL": args.vault_uri,
            "PALISADE_KEK_PROVIDER": "keyvault",
            "PALISADE_KEK_KEY_URL": args.kek_uri,
            "AZURE_CLIENT_ID": args.app_identity_client_id,
            "PALISADE_AZURE_MANAGED_IDENTITY_CLIENT_ID": args.app_identity_client_id,
            "PALISADE_TURNSTILE_EXPECTED_HOSTNAME": args.domain,
            "PALISADE_LOG_JSON": "true",
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
                command=["palisade", "serve", "--host", "0.0.0.0", "--port", str(args.port)],
                resources=app.ContainerResourcesArgs(cpu=args.cpu, memory=args.memory),
                env=_env(app_settings, args.app_secrets),
                probes=[
                    probe("Startup", "/health/live", period_seconds=5, failure_threshold=24, timeout_seconds=3),
                    probe("Liveness", "/health/live", period_seconds=10, failure_threshold=3, timeout_seconds=3),
                    probe("Readiness", "/health/ready", period_seconds=10, failure_threshold=3, timeout_seconds=5),
                ],
            )
        ]
        secret_refs = list(args.app_secrets)
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

        container_app = app.ContainerApp(
            f"{name}-api",
            resource_group_name=args.resource_group_name,
            location=args.location,
            container_app_name=app_name(args.prefix),
            environment_id=args.environment_id,
            workload_profile_name=WORKLOAD_PROFILE,
            identity=app.ManagedServiceIdentityArgs(type="UserAssigned", user_assigned_identities=[args.app_identity_id]),
            configuration=app.ConfigurationArgs(
                active_revisions_mode="Single",
                ingress=app.IngressArgs(
                    external=True,
                    target_port=args.port,
                    transport="auto",
                    allow_insecure=False,
                    client_certificate_mode="ignore",
                    # Listing any Allow rule denies everything else: only Cloudflare reaches the app.
                    ip_security_restrictions=[
                        app.IpSecurityRestrictionRuleArgs(
                            name=f"cloudflare-{i}", action="Allow", ip_address_range=cidr, description="Cloudflare edge"
                        )
                        for i, cidr in enumerate(args.ingress_allowed_ranges)
                    ],
                    custom_domains=[
                        app.CustomDomainArgs(name=args.domain, binding_type="SniEnabled", certificate_id=args.certificate_id)
                    ],
                ),
                secrets=_secrets(secret_refs, args.app_identity_id),
                registries=registries,
            ),
            template=app.TemplateArgs(
                containers=containers,
                scale=app.ScaleArgs(
                    min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas,
                    rules=[app.ScaleRuleArgs(name="http", http=app.HttpScaleRuleArgs(metadata={"concurrentRequests": "50"}))],
                ),
            ),
            tags=dict(args.tags),
            opts=child,
        )

        # The migration job: the only workload given the schema owner's URL. `palisade migrate`
        # validates production settings as a whole, hence the issuers and the Turnstile secret.
        job_settings = {
            "PALISADE_MODE": "production",
            "PALISADE_ISSUERS": app_settings["PALISADE_ISSUERS"],
            "PALISADE_LOG_JSON": "true",
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
                secrets=_secrets(args.migration_secrets, args.migrator_identity_id),
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
                        command=["palisade", "migrate"],
                        resources=app.ContainerResourcesArgs(cpu=0.5, memory="1Gi"),
                        env=_env(job_settings, args.migration_secrets),
                    )
                ]
            ),
            tags=dict(args.tags),
            opts=child,
        )

        self.app_fqdn = container_app.latest_revision_fqdn
        self.migration_job_name = job.name
        self.register_outputs({"migration_job_name": self.migration_job_name})
