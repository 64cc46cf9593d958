"""Identity: user-assigned managed identities and the only role assignments this program makes.

Three identities, three trust scopes:

| identity   | used by                              | may read                                      |
| ---------- | ------------------------------------ | --------------------------------------------- |
| `app`      | the API replicas                     | its own secrets; wrap/unwrap with the KEK;    |
|            |                                      | sign with the checkpoint key; append blobs to |
|            |                                      | the checkpoint container                      |
| `migrator` | the migration job                    | the admin (schema owner) URL, the app URL     |
| `tunnel`   | the API's cloudflared sidecar        | the tunnel token                              |

The app reads its secrets itself (`palisade` with the keyvault provider, as the `app` identity);
Container Apps resolves only the sidecars' references. Every identity assigned to a container app
is usable by each container of it (the platform's token endpoint does not tell containers apart),
so the `tunnel` identity keeps the tunnel token away from the migration job, not from a
compromised API process.

Every assignment is scoped to one secret or one key inside the vault, narrower than the vault
itself, or to the one checkpoint container; nothing is granted at storage-account, resource-group,
subscription or management-group scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.managedidentity as managedidentity

from .config import FederatedCredential
from .options import children_of

# Built-in role definitions (ids are the same in every tenant).
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"  # secrets/getSecret/action, secrets/readMetadata
# keys/read + keys/wrapKey/action + keys/unwrapKey/action: exactly what app.crypto.kek needs.
KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
# The only built-in role with keys/sign/action (it also reads, updates and backs up the key, and
# uses it in every way its key_ops allow: sign and verify only, vault.py).
KEY_VAULT_CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
# Read, write (create, append) and delete blobs; deleting or overwriting is refused on the
# checkpoint container by its immutability policy (checkpoints.py).
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def identity_name(prefix: str, who: str) -> str:
    """A managed identity's name; for `migrator` also its role name on PostgreSQL (Entra admin)."""
    return f"id-{prefix}-{who}"


@dataclass
class IdentityArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    vault_id: pulumi.Input[str]
    kek_id: pulumi.Input[str]
    checkpoint_key_id: pulumi.Input[str]
    checkpoint_container_id: pulumi.Input[str]
    app_secrets: Sequence[str]
    migrator_secrets: Sequence[str]
    tunnel_secrets: Sequence[str]
    federated_credentials: Sequence[FederatedCredential] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ManagedIdentity:
    id: pulumi.Output[str]
    client_id: pulumi.Output[str]
    principal_id: pulumi.Output[str]


class Identity(pulumi.ComponentResource):
    app: ManagedIdentity
    migrator: ManagedIdentity
    tunnel: ManagedIdentity

    def __init__(self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Identity", name, None, opts)
        child = children_of(self, opts)
        client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))

        def role(guid: str) -> pulumi.Output[str]:
            return client.subscription_id.apply(
                lambda sub: f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
            )

        def grant(label: str, who: managedidentity.UserAssignedIdentity, role_guid: str, scope: pulumi.Input[str]) -> None:
            authorization.RoleAssignment(
                f"{name}-{label}",
                principal_id=who.principal_id,
                # Skips the directory lookup that fails while a new identity replicates.
                principal_type="ServicePrincipal",
                role_definition_id=role(role_guid),
                scope=scope,
                description=f"palisade: {label}",
                opts=child,
            )

        def secret_scope(secret_name: str) -> pulumi.Output[str]:
            return pulumi.Output.from_input(args.vault_id).apply(lambda vault_id: f"{vault_id}/secrets/{secret_name}")

        identities = {}
        for who in ("app", "migrator", "tunnel"):
            identities[who] = managedidentity.UserAssignedIdentity(
                f"{name}-{who}",
                resource_group_name=args.resource_group_name,
                location=args.location,
                resource_name_=identity_name(args.prefix, who),
                tags=dict(args.tags),
                opts=child,
            )

        for who, secret_names in (("app", args.app_secrets), ("migrator", args.migrator_secrets),
                                  ("tunnel", args.tunnel_secrets)):
            for secret_name in secret_names:
                grant(f"{who}-reads-{secret_name}", identities[who], KEY_VAULT_SECRETS_USER, secret_scope(secret_name))
        grant("app-wraps-with-kek", identities["app"], KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER, args.kek_id)
        grant("app-signs-checkpoints", identities["app"], KEY_VAULT_CRYPTO_USER, args.checkpoint_key_id)
        grant("app-appends-checkpoints", identities["app"], STORAGE_BLOB_DATA_CONTRIBUTOR, args.checkpoint_container_id)

        # Workload identity federation for runtimes outside Container Apps (AKS, an external
        # issuer): their tokens for the configured subject become the app identity, nothing more.
        for credential in args.federated_credentials:
            managedidentity.FederatedIdentityCredential(
                f"{name}-federation-{credential.name}",
                resource_group_name=args.resource_group_name,
                resource_name_=identities["app"].name,
                federated_identity_credential_resource_name=credential.name,
                issuer=credential.issuer,
                subject=credential.subject,
                audiences=list(credential.audiences),
                opts=child,
            )

        self.app, self.migrator, self.tunnel = (
            ManagedIdentity(i.id, i.client_id, i.principal_id)
            for i in (identities["app"], identities["migrator"], identities["tunnel"])
        )
        self.register_outputs({"app_client_id": self.app.client_id, "app_identity_id": self.app.id})
