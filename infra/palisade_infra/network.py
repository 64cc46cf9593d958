"""Network: the resource group (in the configured region), a VNet with delegated subnets, NSGs,
and the private DNS zones that make PostgreSQL, Key Vault and the checkpoint blobs resolvable only
from inside."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.network as network
import pulumi_azure_native.privatedns as privatedns
import pulumi_azure_native.resources as resources

from .options import children_of

KEY_VAULT_ZONE = "privatelink.vaultcore.azure.net"
BLOB_ZONE = "privatelink.blob.core.windows.net"


@dataclass
class NetworkArgs:
    prefix: str
    location: str
    address_space: str
    apps_subnet: str
    database_subnet: str
    endpoints_subnet: str
    resource_group_name: str
    tags: Mapping[str, str] = field(default_factory=dict)


class Network(pulumi.ComponentResource):
    resource_group_name: pulumi.Output[str]
    vnet_id: pulumi.Output[str]
    apps_subnet_id: pulumi.Output[str]
    database_subnet_id: pulumi.Output[str]
    endpoints_subnet_id: pulumi.Output[str]
    postgres_dns_zone_id: pulumi.Output[str]
    key_vault_dns_zone_id: pulumi.Output[str]
    blob_dns_zone_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Network", name, None, opts)
        child = children_of(self, opts)
        tags = dict(args.tags)

        group = resources.ResourceGroup(
            f"{name}-rg", resource_group_name=args.resource_group_name, location=args.location, tags=tags, opts=child
        )
        rg = group.name

        # Inbound rules only narrow what the VNet default rules allow; the subnets have no public IPs.
        db_nsg = network.NetworkSecurityGroup(
            f"{name}-database-nsg",
            resource_group_name=rg,
            location=args.location,
            tags=tags,
            security_rules=[
                network.SecurityRuleArgs(
                    name="allow-postgres-from-apps", priority=100, direction="Inbound", access="Allow", protocol="Tcp",
                    source_address_prefix=args.apps_subnet, source_port_range="*",
                    destination_address_prefix=args.database_subnet, destination_port_range="5432",
                ),
                # High availability replicates between the primary and the standby inside this subnet.
                network.SecurityRuleArgs(
                    name="allow-within-database-subnet", priority=110, direction="Inbound", access="Allow",
                    protocol="*", source_address_prefix=args.database_subnet, source_port_range="*",
                    destination_address_prefix=args.database_subnet, destination_port_range="*",
                ),
                network.SecurityRuleArgs(
                    name="deny-other-vnet-inbound", priority=4000, direction="Inbound", access="Deny", protocol="*",
                    source_address_prefix="VirtualNetwork", source_port_range="*",
                    destination_address_prefix="*", destination_port_range="*",
                ),
            ],
            opts=child,
        )
        endpoints_nsg = network.NetworkSecurityGroup(
            f"{name}-endpoints-nsg",
            resource_group_name=rg,
            location=args.location,
            tags=tags,
            security_rules=[
                network.SecurityRuleArgs(
                    name="allow-https-from-apps", priority=100, direction="Inbound", access="Allow", protocol="Tcp",
                    source_address_prefix=args.apps_subnet, source_port_range="*",
                    destination_address_prefix=args.endpoints_subnet, destination_port_range="443",
                ),
                network.SecurityRuleArgs(
                    name="deny-other-vnet-inbound", priority=4000, direction="Inbound", access="Deny", protocol="*",
                    source_address_prefix="VirtualNetwork", source_port_range="*",
                    destination_address_prefix="*", destination_port_range="*",
                ),
            ],
            opts=child,
        )

        # Subnets are declared inline so the VNet and its subnets are one resource (no drift between
        # a VNet update and separately managed subnets).
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=rg,
            location=args.location,
            tags=tags,
            address_space=network.AddressSpaceArgs(address_prefixes=[args.address_space]),
            subnets=[
                network.SubnetArgs(
                    name="apps",
                    address_prefix=args.apps_subnet,
                    delegations=[network.DelegationArgs(name="container-apps", service_name="Microsoft.App/environments")],
                ),
                network.SubnetArgs(
                    name="database",
                    address_prefix=args.database_subnet,
                    delegations=[network.DelegationArgs(
                        name="postgres", service_name="Microsoft.DBforPostgreSQL/flexibleServers")],
                    network_security_group=network.NetworkSecurityGroupArgs(id=db_nsg.id),
                ),
                network.SubnetArgs(
                    name="endpoints",
                    address_prefix=args.endpoints_subnet,
                    network_security_group=network.NetworkSecurityGroupArgs(id=endpoints_nsg.id),
                    # NSGs apply to private endpoints only with network policies enabled.
                    private_endpoint_network_policies="Enabled",
                ),
            ],
            opts=child,
        )
        subnet_ids = vnet.subnets.apply(lambda subnets: {s.name: s.id for s in subnets or []})

        # Private access (VNet integration) needs a zone ending in postgres.database.azure.com.
        postgres_zone = privatedns.PrivateZone(
            f"{name}-postgres-zone",
            resource_group_name=rg,
            private_zone_name=f"{args.prefix}.private.postgres.database.azure.com",
            location="global",
            tags=tags,
            opts=child,
        )
        vault_zone = privatedns.PrivateZone(
            f"{name}-keyvault-zone",
            resource_group_name=rg,
            private_zone_name=KEY_VAULT_ZONE,
            location="global",
            tags=tags,
            opts=child,
        )
        blob_zone = privatedns.PrivateZone(
            f"{name}-blob-zone",
            resource_group_name=rg,
            private_zone_name=BLOB_ZONE,
            location="global",
            tags=tags,
            opts=child,
        )
        for zone_name, zone in (("postgres", postgres_zone), ("keyvault", vault_zone), ("blob", blob_zone)):
            privatedns.VirtualNetworkLink(
                f"{name}-{zone_name}-link",
                resource_group_name=rg,
                private_zone_name=zone.name,
                location="global",
                virtual_network=privatedns.SubResourceArgs(id=vnet.id),
                registration_enabled=False,
                tags=tags,
                opts=child,
            )

        self.resource_group_name = rg
        self.vnet_id = vnet.id
        self.apps_subnet_id = subnet_ids.apply(lambda ids: ids["apps"])
        self.database_subnet_id = subnet_ids.apply(lambda ids: ids["database"])
        self.endpoints_subnet_id = subnet_ids.apply(lambda ids: ids["endpoints"])
        self.postgres_dns_zone_id = postgres_zone.id
        self.key_vault_dns_zone_id = vault_zone.id
        self.blob_dns_zone_id = blob_zone.id
        self.register_outputs(
            {
                "resource_group_name": self.resource_group_name,
                "vnet_id": self.vnet_id,
                "apps_subnet_id": self.apps_subnet_id,
                "database_subnet_id": self.database_subnet_id,
                "endpoints_subnet_id": self.endpoints_subnet_id,
            }
        )
