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
        zones = {
            zone_name: privatedns.PrivateZone(
                f"{name}-{zone_name}-zone",
                resource_group_name=rg,
                private_zone_name=private_zone_name,
                location="global",
                tags=tags,
                opts=child,
            )
            for zone_name, private_zone_name in (("postgres", f"{args.prefix}.private.postgres.database.azure.com"),
                                                 ("keyvault", KEY_VAULT_ZONE), ("blob", BLOB_ZONE))
        }
        for zone_name, zone in zones.items():
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
        self.postgres_dns_zone_id = zones["postgres"].id
        self.key_vault_dns_zone_id = zones["keyvault"].id
        self.blob_dns_zone_id = zones["blob"].id
        self.register_outputs(
            {
                "resource_group_name": self.resource_group_name,
                "vnet_id": self.vnet_id,
                "apps_subnet_id": self.apps_subnet_id,
                "database_subnet_id": self.database_subnet_id,
                "endpoints_subnet_id": self.endpoints_subnet_id,
            }
        )


def private_endpoint(
    name: str,
    *,
    resource_group_name: pulumi.Input[str],
    location: str,
    subnet_id: pulumi.Input[str],
    target_id: pulumi.Input[str],
    group: str,
    dns_zone_id: pulumi.Input[str],
    tags: Mapping[str, str],
    opts: pulumi.ResourceOptions,
) -> network.PrivateEndpoint:
    """A private endpoint for one sub-resource (`group`: vault, blob) of `target_id`, registered in its private DNS zone."""
    endpoint = network.PrivateEndpoint(
        f"{name}-endpoint",
        resource_group_name=resource_group_name,
        location=location,
        subnet=network.SubnetArgs(id=subnet_id),
        private_link_service_connections=[
            network.PrivateLinkServiceConnectionArgs(name=group, private_link_service_id=target_id, group_ids=[group])
        ],
        tags=dict(tags),
        opts=opts,
    )
    network.PrivateDnsZoneGroup(
        f"{name}-endpoint-dns",
        resource_group_name=resource_group_name,
        private_endpoint_name=endpoint.name,
        private_dns_zone_group_name=group,
        private_dns_zone_configs=[network.PrivateDnsZoneConfigArgs(name=group, private_dns_zone_id=dns_zone_id)],
        opts=opts,
    )
    return endpoint
