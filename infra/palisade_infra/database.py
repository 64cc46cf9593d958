"""Database: PostgreSQL Flexible Server reachable only from the VNet, TLS required, Entra ID
authentication on, passwords generated here and handed to nobody but Key Vault.

Two roles, as the design asks: the server administrator (`adminRole`) owns the schema and is used
by the migration job alone; the app role (`appRole`) is created by the first migration and is the
only one the running app has a URL for.
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
    admin_role: str = "palisade_admin"
    app_role: str = "palisade_app"
    tags: Mapping[str, str] = field(default_factory=dict)


def _password(name: str, parent: pulumi.Resource) -> random.RandomPassword:
    # URL-unreserved specials only, so the password sits in a connection URL unchanged; 40
    # characters from 66 symbols is ~240 bits. Azure wants three character classes: all four here.
    return random.RandomPassword(
        name, length=40, special=True, override_special="-_.~", min_upper=2, min_lower=2, min_numeric=2, min_special=2,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def connection_url(role: str, password: pulumi.Input[str], host: pulumi.Input[str], database: str) -> pulumi.Output[str]:
    """A libpq URL that verifies the server's certificate against the system trust store."""
    return pulumi.Output.secret(
        pulumi.Output.all(password, host).apply(
            lambda v: f"postgresql://{role}:{quote(v[0], safe='')}@{v[1]}:5432/{database}"
            "?sslmode=verify-full&sslrootcert=system"
        )
    )


class Database(pulumi.ComponentResource):
    host: pulumi.Output[str]
    server_id: pulumi.Output[str]
    database_name: str
    admin_url_secret_name: str = defaults.ADMIN_DATABASE_URL
    app_url_secret_name: str = defaults.DATABASE_URL

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))

        suffix = random.RandomString(f"{name}-suffix", length=6, special=False, upper=False, opts=child)
        admin_password = _password(f"{name}-admin-password", self)
        app_password = _password(f"{name}-app-password", self)

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
                # Passwords stay on for the two application roles (their URLs live in Key Vault).
                password_auth="Enabled",
                tenant_id=client.tenant_id,
            ),
            administrator_login=args.admin_role,
            administrator_login_password=pulumi.Output.secret(admin_password.result),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=True),
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
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
            )

        database = dbforpostgresql.Database(
            f"{name}-database",
            resource_group_name=args.resource_group_name,
            server_name=server.name,
            database_name=args.database_name,
            charset="UTF8",
            collation="en_US.utf8",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
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
                opts=pulumi.ResourceOptions(parent=self, depends_on=[database]),
            )

        host = server.fully_qualified_domain_name
        store_secret(
            f"{name}-admin-url", vault=args.vault, secret_name=self.admin_url_secret_name,
            value=connection_url(args.admin_role, admin_password.result, host, args.database_name), parent=self,
        )
        store_secret(
            f"{name}-app-url", vault=args.vault, secret_name=self.app_url_secret_name,
            value=connection_url(args.app_role, app_password.result, host, args.database_name), parent=self,
        )

        self.host = host
        self.server_id = server.id
        self.database_name = args.database_name
        self.register_outputs({"host": self.host, "server_id": self.server_id})
