"""Checkpoints: where the app anchors its audit chains outside PostgreSQL (app/audit/anchor.py).

A storage account that takes no shared key (Entra ID only), TLS 1.2 or newer, no public blob
access and no public network (a private endpoint in the VNet, like the vault's); one container,
`audit-checkpoints`, whose time-based immutability policy lets blobs be appended to (protected
append writes) but never overwritten or deleted until `auditCheckpointRetentionDays` have passed.
The app appends one append blob per UTC day there as its own identity (granted on that container
only, identity.py) and signs each line with an EC key in the vault (vault.py).

The policy is created unlocked: locking it (which also stops anyone shortening it or deleting it
while blobs are retained) cannot be undone, so it is left to the operator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.storage as storage
import pulumi_random as random

from .network import private_endpoint
from .options import children_of

CONTAINER = "audit-checkpoints"


@dataclass
class CheckpointStoreArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    endpoints_subnet_id: pulumi.Input[str]
    blob_dns_zone_id: pulumi.Input[str]
    retention_days: int = 365
    tags: Mapping[str, str] = field(default_factory=dict)


class CheckpointStore(pulumi.ComponentResource):
    account_url: pulumi.Output[str]  # https://<account>.blob.core.windows.net/
    container_name: str
    container_id: pulumi.Output[str]  # the scope of the app's grant

    def __init__(self, name: str, args: CheckpointStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:CheckpointStore", name, None, opts)
        child = children_of(self, opts)
        suffix = random.RandomString(
            f"{name}-suffix", length=6, special=False, upper=False, numeric=True, lower=True, opts=child
        )
        # 3-24 lowercase letters and digits, unique in Azure.
        stem = re.sub(r"[^a-z0-9]", "", args.prefix.lower())[:16]
        account = storage.StorageAccount(
            f"{name}-account",
            resource_group_name=args.resource_group_name,
            location=args.location,
            account_name=suffix.result.apply(lambda s: f"st{stem}{s}"),
            kind="StorageV2",
            sku=storage.SkuArgs(name="Standard_ZRS"),
            allow_shared_key_access=False,
            default_to_o_auth_authentication=True,
            minimum_tls_version="TLS1_2",
            enable_https_traffic_only=True,
            allow_blob_public_access=False,
            allow_cross_tenant_replication=False,
            allowed_copy_scope="PrivateLink",
            is_local_user_enabled=False,
            is_sftp_enabled=False,
            public_network_access="Disabled",
            network_rule_set=storage.NetworkRuleSetArgs(default_action="Deny", bypass="None", ip_rules=[],
                                                        virtual_network_rules=[]),
            tags=dict(args.tags),
            # What anchors the audit trail: deleting it should be a decision, not a side effect.
            opts=children_of(self, opts, protect=True),
        )
        container = storage.BlobContainer(
            f"{name}-container",
            resource_group_name=args.resource_group_name,
            account_name=account.name,
            container_name=CONTAINER,
            public_access="None",
            opts=child,
        )
        storage.BlobContainerImmutabilityPolicy(
            f"{name}-immutability",
            resource_group_name=args.resource_group_name,
            account_name=account.name,
            container_name=container.name,
            immutability_policy_name="default",
            immutability_period_since_creation_in_days=args.retention_days,
            allow_protected_append_writes=True,
            opts=child,
        )
        private_endpoint(name, resource_group_name=args.resource_group_name, location=args.location,
                         subnet_id=args.endpoints_subnet_id, target_id=account.id, group="blob",
                         dns_zone_id=args.blob_dns_zone_id, tags=args.tags, opts=child)

        self.account_url = account.primary_endpoints.apply(lambda e: e.blob)
        self.container_name = CONTAINER
        self.container_id = pulumi.Output.all(account.id, container.name).apply(
            lambda v: f"{v[0]}/blobServices/default/containers/{v[1]}")
        self.register_outputs({"account_url": self.account_url, "container_id": self.container_id})
