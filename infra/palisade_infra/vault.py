"""Secrets: the Key Vault (RBAC only, purge protection, soft delete, no public network), its private
endpoint, audit logs to Log Analytics, the key-encryption key that wraps tenants' data keys, and the
EC key that signs the audit checkpoints.

Secrets are written through Azure Resource Manager (`Microsoft.KeyVault/vaults/secrets`), the
control plane, so `pulumi up` never needs the vault's data plane, which only the VNet can reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.keyvault as keyvault
import pulumi_azure_native.monitor as monitor
import pulumi_random as random

from .network import private_endpoint
from .options import children_of

KEK_NAME = "palisade-kek"
CHECKPOINT_KEY_NAME = "palisade-audit-checkpoint"


@dataclass
class VaultRef:
    """What other components need to know about the vault."""

    name: pulumi.Output[str]
    id: pulumi.Output[str]
    uri: pulumi.Output[str]
    resource_group_name: pulumi.Input[str]

    def secret_url(self, secret_name: str) -> pulumi.Output[str]:
        """The versionless secret URI: Container Apps picks up a new version without a redeploy."""
        return self.uri.apply(lambda uri: f"{uri.rstrip('/')}/secrets/{secret_name}")


def store_secret(
    resource_name: str,
    *,
    vault: VaultRef,
    secret_name: str,
    value: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
    content_type: str = "text/plain",
) -> keyvault.Secret:
    """Write `value` to the vault as `secret_name`; the value is marked secret in the Pulumi state."""
    return keyvault.Secret(
        resource_name,
        resource_group_name=vault.resource_group_name,
        vault_name=vault.name,
        secret_name=secret_name,
        properties=keyvault.SecretPropertiesArgs(
            value=pulumi.Output.secret(value),
            content_type=content_type,
            attributes=keyvault.SecretAttributesArgs(enabled=True),
        ),
        opts=opts,
    )


def rotated_every(days: int) -> keyvault.RotationPolicyArgs:
    """Key Vault adds a new version of the key `days` after the current one was created."""
    return keyvault.RotationPolicyArgs(lifetime_actions=[
        keyvault.LifetimeActionArgs(action=keyvault.ActionArgs(type="rotate"),
                                    trigger=keyvault.TriggerArgs(time_after_create=f"P{days}D")),
    ])


@dataclass
class SecretsArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    endpoints_subnet_id: pulumi.Input[str]
    key_vault_dns_zone_id: pulumi.Input[str]
    log_workspace_id: pulumi.Input[str]
    kek_key_type: str = "RSA-HSM"
    kek_key_size: int = 3072
    kek_rotation_days: int = 365
    soft_delete_retention_days: int = 90
    # Values other components produce that belong in the vault: name -> value.
    stored_secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


class Secrets(pulumi.ComponentResource):
    vault: VaultRef
    vault_uri: pulumi.Output[str]
    kek_id: pulumi.Output[str]
    kek_uri: pulumi.Output[str]
    checkpoint_key_id: pulumi.Output[str]
    checkpoint_key_uri: pulumi.Output[str]
    stored: dict[str, keyvault.Secret]

    def __init__(self, name: str, args: SecretsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Secrets", name, None, opts)
        child = children_of(self, opts)
        client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))

        suffix = random.RandomString(
            f"{name}-suffix", length=6, special=False, upper=False, numeric=True, lower=True, opts=child
        )
        vault = keyvault.Vault(
            f"{name}-vault",
            resource_group_name=args.resource_group_name,
            location=args.location,
            vault_name=suffix.result.apply(lambda s: f"kv-{args.prefix}-{s}"),
            tags=dict(args.tags),
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=client.tenant_id,
                # HSM-protected keys need the Premium SKU.
                sku=keyvault.SkuArgs(family="A", name="premium" if args.kek_key_type.endswith("-HSM") else "standard"),
                enable_rbac_authorization=True,
                access_policies=[],
                enable_soft_delete=True,
                soft_delete_retention_in_days=args.soft_delete_retention_days,
                enable_purge_protection=True,
                public_network_access="Disabled",
                network_acls=keyvault.NetworkRuleSetArgs(default_action="Deny", bypass="None", ip_rules=[],
                                                         virtual_network_rules=[]),
                enabled_for_deployment=False,
                enabled_for_disk_encryption=False,
                enabled_for_template_deployment=False,
            ),
            # Purge protection makes a deleted vault unrecoverable-by-name for the retention period;
            # a `pulumi destroy` of this stack should be a decision, not a side effect.
            opts=children_of(self, opts, protect=True),
        )

        private_endpoint(name, resource_group_name=args.resource_group_name, location=args.location,
                         subnet_id=args.endpoints_subnet_id, target_id=vault.id, group="vault",
                         dns_zone_id=args.key_vault_dns_zone_id, tags=args.tags, opts=child)

        monitor.DiagnosticSetting(
            f"{name}-audit",
            name="audit-to-log-analytics",
            resource_uri=vault.id,
            workspace_id=args.log_workspace_id,
            log_analytics_destination_type="Dedicated",
            logs=[monitor.DiagnosticsLogSettingsArgs(category_group="allLogs", enabled=True)],
            metrics=[monitor.DiagnosticsMetricSettingsArgs(category="AllMetrics", enabled=True)],
            opts=child,
        )

        kek = keyvault.Key(
            f"{name}-kek",
            resource_group_name=args.resource_group_name,
            vault_name=vault.name,
            key_name=KEK_NAME,
            properties=keyvault.KeyPropertiesArgs(
                kty=args.kek_key_type,
                key_size=args.kek_key_size,
                # Wrap/unwrap only: the KEK never encrypts data itself and never signs.
                key_ops=["wrapKey", "unwrapKey"],
                attributes=keyvault.KeyAttributesArgs(enabled=True, exportable=False),
                # Rotation adds a version; older versions keep unwrapping until an operator disables
                # them after rewrapping (see `app.crypto.kek`). No expiry is set for that reason.
                rotation_policy=rotated_every(args.kek_rotation_days),
            ),
            opts=children_of(self, opts, protect=True),
        )

        # Signs the audit checkpoints (ES256, app.audit.anchor): sign and verify only, never exported.
        # Rotation adds a version; the app signs with the version current when it started, and
        # verify reads every version's public key.
        checkpoint_key = keyvault.Key(
            f"{name}-checkpoint-key",
            resource_group_name=args.resource_group_name,
            vault_name=vault.name,
            key_name=CHECKPOINT_KEY_NAME,
            properties=keyvault.KeyPropertiesArgs(
                kty="EC-HSM" if args.kek_key_type.endswith("-HSM") else "EC",
                curve_name="P-256",
                key_ops=["sign", "verify"],
                attributes=keyvault.KeyAttributesArgs(enabled=True, exportable=False),
                rotation_policy=rotated_every(args.kek_rotation_days),
            ),
            opts=children_of(self, opts, protect=True),
        )

        self.vault = VaultRef(name=vault.name, id=vault.id, uri=vault.properties.apply(lambda p: p.vault_uri),
                              resource_group_name=args.resource_group_name)
        self.stored = {
            secret_name: store_secret(f"{name}-{secret_name}", vault=self.vault, secret_name=secret_name, value=value,
                                      opts=children_of(self, opts))
            for secret_name, value in args.stored_secrets.items()
        }
        self.vault_uri = self.vault.uri
        self.kek_id = kek.id
        self.kek_uri = kek.key_uri
        self.checkpoint_key_id = checkpoint_key.id
        self.checkpoint_key_uri = checkpoint_key.key_uri
        self.register_outputs({"vault_uri": self.vault_uri, "vault_id": vault.id, "kek_uri": self.kek_uri})
