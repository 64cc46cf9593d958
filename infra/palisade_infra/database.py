"""Database: PostgreSQL Flexible Server reachable only from the VNet, TLS 1.3 required, Microsoft
Entra ID authentication only: there is no database password at all.

Two roles, as the design asks, each signing in with its managed identity's tokens:
- the schema owner is the migration job's identity, made the server's Entra administrator
  (`DatabaseAccess`, declared once the identity exists); the migration job alone uses it;
- the app role (`appRole`) is created by `palisade migrate` for the API identity's object id
  (`pgaadauth_create_principal_with_oid`) and confined by the first migration (NOBYPASSRLS, owns
  nothing); it is the only one the running app has a URL for.

The URLs in the vault name the role, the host and `sslmode=verify-full`; they carry no secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.dbforpostgresql as dbforpostgresql
import pulumi_random as random

from . import defaults
from .config import EntraAdmin
from .options import children_of
from .vault import VaultRef, store_secret


@dataclass
class DatabaseArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    delegated_subnet_id: pulumi.Input[str]
    private_dns_zone_id: pulumi.Input[str]
    vault: VaultRef
    version: str = "16"
    sku: str = "Standard_D2ds_v5"
    tier: str = "GeneralPurpose"
    storage_gb: int = 128
    high_availability: str = "ZoneRedundant"
    geo_redundant_backup: bool = True
    backup_retention_days: int = 35
    min_tls: str = "TLSv1.3"
    entra_admin: EntraAdmin | None = None
    database_name: str = "palisade"
    # The migration job's identity's name: the Entra administrator's role name.
    admin_role: str = "id-palisade-migrator"
    app_role: str = "palisade_app"
    tags: Mapping[str, str] = field(default_factory=dict)


def connection_url(role: str, host: pulumi.Input[str], database: str) -> pulumi.Output[str]:
    """A libpq URL with no password (Entra ID tokens sign in) that verifies the server's certificate
    against the system trust store."""
    return pulumi.Output.from_input(host).apply(
        lambda h: f"postgresql://{quote(role, safe='')}@{h}:5432/{database}?sslmode=verify-full&sslrootcert=system"
    )


class Database(pulumi.ComponentResource):
    host: pulumi.Output[str]
    server_name: pulumi.Output[str]
    tenant_id: pulumi.Output[str]
    server_id: pulumi.Output[str]
    database_name: str
    admin_url_secret_name: str = defaults.ADMIN_DATABASE_URL
    app_url_secret_name: str = defaults.DATABASE_URL

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Database", name, None, opts)
        child = children_of(self, opts)
        client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))

        suffix = random.RandomString(f"{name}-suffix", length=6, special=False, upper=False, opts=child)

        server = dbforpostgresql.Server(
            f"{name}-server",
            resource_group_name=args.resource_group_name,
            location=args.location,
            server_name=suffix.result.apply(lambda s: f"psql-{args.prefix}-{s}"),
            version=args.version,
            sku=dbforpostgresql.SkuArgs(name=args.sku, tier=args.tier),
            storage=dbforpostgresql.StorageArgs(storage_size_gb=args.storage_gb, auto_grow="Enabled"),
            backup=dbforpostgresql.BackupArgs(
                backup_retention_days=args.backup_retention_days,
                geo_redundant_backup="Enabled" if args.geo_redundant_backup else "Disabled",
            ),
            high_availability=dbforpostgresql.HighAvailabilityArgs(mode=args.high_availability),
            network=dbforpostgresql.NetworkArgs(
                delegated_subnet_resource_id=args.delegated_subnet_id,
                private_dns_zone_arm_resource_id=args.private_dns_zone_id,
                public_network_access="Disabled",
            ),
            auth_config=dbforpostgresql.AuthConfigArgs(
                active_directory_auth="Enabled",
                # No passwords: every role signs in with Entra ID tokens (no administrator login).
                password_auth="Disabled",
                tenant_id=client.tenant_id,
            ),
            tags=dict(args.tags),
            opts=children_of(self, opts, protect=True),
        )

        # The server applies one parameter change at a time, so each waits for the previous one.
        parameters = {
            "require_secure_transport": "on",
            "ssl_min_protocol_version": args.min_tls,
            "password_encryption": "scram-sha-256",
            "log_connections": "on",
            "log_disconnections": "on",
        }
        previous: pulumi.Resource = server
        for parameter, value in parameters.items():
            previous = dbforpostgresql.Configuration(
                f"{name}-{parameter.replace('_', '-')}",
                resource_group_name=args.resource_group_name,
                server_name=server.name,
                configuration_name=parameter,
                value=value,
                source="user-override",
                opts=children_of(self, opts, depends_on=[previous]),
            )

        database = dbforpostgresql.Database(
            f"{name}-database",
            resource_group_name=args.resource_group_name,
            server_name=server.name,
            database_name=args.database_name,
            charset="UTF8",
            collation="en_US.utf8",
            opts=children_of(self, opts, depends_on=[previous]),
        )

        if args.entra_admin is not None:
            dbforpostgresql.AdministratorsMicrosoftEntra(
                f"{name}-entra-admin",
                resource_group_name=args.resource_group_name,
                server_name=server.name,
                object_id=args.entra_admin.object_id,
                principal_name=args.entra_admin.principal_name,
                principal_type=args.entra_admin.principal_type,
                tenant_id=client.tenant_id,
                opts=children_of(self, opts, depends_on=[database]),
            )

        host = server.fully_qualified_domain_name
        store_secret(
            f"{name}-admin-url", vault=args.vault, secret_name=self.admin_url_secret_name,
            value=connection_url(args.admin_role, host, args.database_name), opts=children_of(self, opts),
        )
        store_secret(
            f"{name}-app-url", vault=args.vault, secret_name=self.app_url_secret_name,
            value=connection_url(args.app_role, host, args.database_name), opts=children_of(self, opts),
        )

        self.host = host
        self.server_id = server.id
        self.server_name = server.name
        self.tenant_id = client.tenant_id
        self.database_name = args.database_name
        self.register_outputs({"host": self.host, "server_id": self.server_id})


@dataclass
class DatabaseAccessArgs:
    resource_group_name: pulumi.Input[str]
    server_name: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    # The migration job's managed identity: its name is the administrator's role name.
    migrator_name: str
    migrator_principal_id: pulumi.Input[str]


class DatabaseAccess(pulumi.ComponentResource):
    """The migration job's identity as the server's Entra administrator (the schema owner).

    Declared after the identities exist (they in turn wait for the vault's secrets). The API's
    identity gets no server-level role: `palisade migrate` creates the app role for it.
    """

    def __init__(self, name: str, args: DatabaseAccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:DatabaseAccess", name, None, opts)
        dbforpostgresql.AdministratorsMicrosoftEntra(
            f"{name}-migrator-admin",
            resource_group_name=args.resource_group_name,
            server_name=args.server_name,
            object_id=args.migrator_principal_id,
            principal_name=args.migrator_name,
            principal_type="ServicePrincipal",
            tenant_id=args.tenant_id,
            opts=children_of(self, opts),
        )
        self.register_outputs({})
