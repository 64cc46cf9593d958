"""Runs the Pulumi program under `pulumi.runtime.set_mocks` and records every resource it declares.

The mocks answer like Azure and Cloudflare would for the properties the program reads back (ids,
URIs, FQDNs, generated secrets), so the recorded inputs are what `pulumi up` would send. Every
generated secret carries the marker MOCKSECRET, which lets a test find where secrets travel.
"""

from __future__ import annotations

import json
import runpy
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.mocks import MockMonitor

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
POLICY = INFRA / "policy"

SUBSCRIPTION = "11111111-2222-4333-8444-555555555555"
TENANT = "66666666-7777-4888-9999-000000000000"
SECRET_MARK = "MOCKSECRET"
TUNNEL_ID = "7f3e0d3c-5b1a-4c2e-9d8f-0a1b2c3d4e5f"

# type token -> (ARM provider/type, input holding the resource's name)
AZURE_TYPES = {
    "azure-native:resources:ResourceGroup": (None, "resourceGroupName"),
    "azure-native:network:NetworkSecurityGroup": ("Microsoft.Network/networkSecurityGroups", "networkSecurityGroupName"),
    "azure-native:network:VirtualNetwork": ("Microsoft.Network/virtualNetworks", "virtualNetworkName"),
    "azure-native:network:PrivateEndpoint": ("Microsoft.Network/privateEndpoints", "privateEndpointName"),
    "azure-native:network:PrivateDnsZoneGroup": ("Microsoft.Network/privateEndpoints/x/privateDnsZoneGroups", "privateDnsZoneGroupName"),
    "azure-native:privatedns:PrivateZone": ("Microsoft.Network/privateDnsZones", "privateZoneName"),
    "azure-native:privatedns:VirtualNetworkLink": ("Microsoft.Network/privateDnsZones/x/virtualNetworkLinks", "virtualNetworkLinkName"),
    "azure-native:operationalinsights:Workspace": ("Microsoft.OperationalInsights/workspaces", "workspaceName"),
    "azure-native:applicationinsights:Component": ("Microsoft.Insights/components", "resourceName"),
    "azure-native:keyvault:Vault": ("Microsoft.KeyVault/vaults", "vaultName"),
    "azure-native:storage:StorageAccount": ("Microsoft.Storage/storageAccounts", "accountName"),
    "azure-native:storage:BlobContainer": (None, "containerName"),
    "azure-native:storage:BlobContainerImmutabilityPolicy": (None, "immutabilityPolicyName"),
    "azure-native:monitor:DiagnosticSetting": (None, "name"),
    "azure-native:dbforpostgresql:Server": ("Microsoft.DBforPostgreSQL/flexibleServers", "serverName"),
    "azure-native:dbforpostgresql:Configuration": (None, "configurationName"),
    "azure-native:dbforpostgresql:Database": (None, "databaseName"),
    "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra": (None, "objectId"),
    "azure-native:managedidentity:UserAssignedIdentity": ("Microsoft.ManagedIdentity/userAssignedIdentities", "resourceName"),
    "azure-native:managedidentity:FederatedIdentityCredential": (None, "federatedIdentityCredentialResourceName"),
    "azure-native:authorization:RoleAssignment": (None, None),
    "azure-native:app:ManagedEnvironment": ("Microsoft.App/managedEnvironments", "environmentName"),
    "azure-native:app:Certificate": (None, "certificateName"),
    "azure-native:app:ContainerApp": ("Microsoft.App/containerApps", "containerAppName"),
    "azure-native:app:Job": ("Microsoft.App/jobs", "jobName"),
    "azure-native:monitor:ActionGroup": ("Microsoft.Insights/actionGroups", "actionGroupName"),
    "azure-native:monitor:ScheduledQueryRule": ("Microsoft.Insights/scheduledQueryRules", "ruleName"),
    "azure-native:monitor:MetricAlert": ("Microsoft.Insights/metricAlerts", "ruleName"),
    "azure-native:security:Pricing": (None, "pricingName"),
}


SECRET_SIG = rpc._special_sig_key, rpc._special_secret_sig


def is_secret(value: Any) -> bool:
    """Whether a recorded input arrived wrapped as a Pulumi secret."""
    return isinstance(value, dict) and value.get(SECRET_SIG[0]) == SECRET_SIG[1]


def plain(value: Any) -> Any:
    """The value with every secret wrapper removed."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@dataclass
class Registered:
    type: str
    name: str
    raw_inputs: dict[str, Any]  # as sent, secrets still wrapped
    inputs: dict[str, Any]  # secrets unwrapped
    state: dict[str, Any]


class PalisadeMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.calls: list[str] = []

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args.token)
        if args.token == "azure-native:authorization:getClientConfig":
            return {"clientId": "deployer", "objectId": "deployer-object", "subscriptionId": SUBSCRIPTION, "tenantId": TENANT}
        if args.token == "cloudflare:index/getZeroTrustTunnelCloudflaredToken:getZeroTrustTunnelCloudflaredToken":
            return {"accountId": args.args.get("accountId"), "tunnelId": args.args.get("tunnelId"),
                    "token": f"{SECRET_MARK}-tunnel-token"}
        raise NotImplementedError(f"unexpected invoke {args.token}")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = plain(dict(args.inputs))
        state = dict(inputs)
        token = args.typ
        arm_type, name_key = AZURE_TYPES.get(token, (None, None))
        name = inputs.get(name_key) if name_key else None
        name = name or args.name
        state["name"] = name
        rid = f"{token}::{args.name}"
        if token.startswith("azure-native:"):
            rg = inputs.get("resourceGroupName", "rg")
            rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}"
            if token == "azure-native:resources:ResourceGroup":
                rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}"
            elif token == "azure-native:keyvault:Key":
                rid += f"/providers/Microsoft.KeyVault/vaults/{inputs['vaultName']}/keys/{inputs['keyName']}"
            elif token == "azure-native:keyvault:Secret":
                rid += f"/providers/Microsoft.KeyVault/vaults/{inputs['vaultName']}/secrets/{inputs['secretName']}"
            elif token == "azure-native:authorization:RoleAssignment":
                rid = f"{inputs['scope']}/providers/Microsoft.Authorization/roleAssignments/{args.name}"
            elif arm_type:
                rid += f"/providers/{arm_type}/{name}"
            else:
                rid += f"/providers/mock/{args.name}"
        if token == "cloudflare:index/zeroTrustTunnelCloudflared:ZeroTrustTunnelCloudflared":
            rid = TUNNEL_ID
        state["id"] = rid
        identity = inputs.get("identity")
        if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
            # Requests list the identity ids; responses map each id to its principal.
            state["identity"] = {**identity, "userAssignedIdentities": {
                i: {"clientId": "client", "principalId": "principal"} for i in identity["userAssignedIdentities"]}}

        if token == "azure-native:keyvault:Vault":
            state["properties"] = {**inputs["properties"], "vaultUri": f"https://{name}.vault.azure.net/"}
        elif token == "azure-native:storage:StorageAccount":
            state["primaryEndpoints"] = {"blob": f"https://{name}.blob.core.windows.net/"}
        elif token == "azure-native:keyvault:Key":
            uri = f"https://{inputs['vaultName']}.vault.azure.net/keys/{inputs['keyName']}"
            state.update(keyUri=uri, keyUriWithVersion=uri + "/0123456789abcdef")
        elif token == "azure-native:keyvault:Secret":
            props = {k: v for k, v in inputs["properties"].items() if k != "value"}
            state["properties"] = {**props, "secretUri": f"https://{inputs['vaultName']}.vault.azure.net/secrets/{inputs['secretName']}"}
        elif token == "azure-native:network:VirtualNetwork":
            state["subnets"] = [{**s, "id": f"{rid}/subnets/{s['name']}"} for s in inputs.get("subnets", [])]
        elif token == "azure-native:dbforpostgresql:Server":
            state["fullyQualifiedDomainName"] = f"{name}.postgres.database.azure.com"
        elif token == "azure-native:managedidentity:UserAssignedIdentity":
            # GUIDs, as Entra ID gives them (the deploy contract maps them to database roles).
            state.update(clientId=client_id_of(name), principalId=principal_id_of(name), tenantId=TENANT)
        elif token == "azure-native:applicationinsights:Component":
            state.update(connectionString=f"InstrumentationKey={SECRET_MARK}-appinsights;IngestionEndpoint=https://x",
                         instrumentationKey=f"{SECRET_MARK}-appinsights")
        elif token == "azure-native:operationalinsights:Workspace":
            state["customerId"] = "workspace-customer-id"
        elif token == "azure-native:app:ManagedEnvironment":
            state.update(defaultDomain="happy-sky-0123abcd.westeurope.azurecontainerapps.io", staticIp="20.0.0.1",
                         customDomainConfiguration={"customDomainVerificationId": "ABCDEF0123456789"})
        elif token == "azure-native:app:ContainerApp":
            state["latestRevisionFqdn"] = f"{name}--rev1.happy-sky-0123abcd.westeurope.azurecontainerapps.io"
        elif token == "random:index/randomString:RandomString":
            state["result"] = "x1y2z3"[: int(inputs.get("length", 6))]
        elif token == "random:index/randomPassword:RandomPassword":
            state["result"] = f"{SECRET_MARK}-{args.name}-Aa1~"
        elif token == "cloudflare:index/turnstileWidget:TurnstileWidget":
            state.update(sitekey="0x4AAAAAAAexamplesitekey", secret=f"{SECRET_MARK}-turnstile")
        self.resources.append(Registered(token, args.name, dict(args.inputs), inputs, state))
        return rid, state


def client_id_of(identity: str) -> str:
    """The mocked client (application) id of a user-assigned identity, a GUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"client-id/{identity}"))


def principal_id_of(identity: str) -> str:
    """The mocked principal (object) id of a user-assigned identity, a GUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"principal-id/{identity}"))


class RecordingMonitor(MockMonitor):
    """The mocks' monitor, also recording what each resource waits for (its dependencies, explicit
    and through its inputs), by logical name: the order `pulumi up` would follow."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.dependencies: dict[str, set[str]] = {}

    def RegisterResource(self, request):  # noqa: N802 (the gRPC method's name)
        urns = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            urns.update(deps.urns)
        self.dependencies[request.name] = {urn.rsplit("::", 1)[-1] for urn in urns}
        return super().RegisterResource(request)


@dataclass
class ProgramRun:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)
    urns: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    dependencies: dict[str, set[str]] = field(default_factory=dict)

    def waits_for(self, name: str, other: str) -> bool:
        """Whether resource `name` is created or updated only after `other` (directly or not)."""
        seen, todo = set(), [name]
        while todo:
            for dep in self.dependencies.get(todo.pop(), set()) - seen:
                if dep == other:
                    return True
                seen.add(dep)
                todo.append(dep)
        return False

    def of_type(self, token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str, name_suffix: str = "") -> Registered:
        found = [r for r in self.of_type(token) if r.name.endswith(name_suffix)]
        assert len(found) == 1, f"expected one {token} named *{name_suffix}, found {[r.name for r in found]}"
        return found[0]


def project_defaults() -> dict[str, Any]:
    """The `default:` of every key declared in Pulumi.yaml (Pulumi hands these to the program)."""
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    return {key: decl["default"] for key, decl in project["config"].items() if "default" in decl}


def example_stack_config() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "Pulumi.example.yaml").read_text())["config"])


def _as_pulumi_string(value: Any) -> str:
    # What the language host receives: strings as they are, everything else JSON.
    if isinstance(value, str):
        return value
    return json.dumps(value)


def run_program(
    stack_config: dict[str, Any],
    *,
    secrets: dict[str, str] | None = None,
    preview: bool = False,
    mocks: PalisadeMocks | None = None,
) -> ProgramRun:
    """Run infra/__main__.py for `stack_config` (namespaced keys) merged over the Pulumi.yaml defaults."""
    config = {**project_defaults(), **stack_config, **(secrets or {})}
    mocks = mocks or PalisadeMocks()
    monitor = RecordingMonitor(mocks)
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="palisade", stack="example", preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config({k: _as_pulumi_string(v) for k, v in config.items()}, secret_keys=list(secrets or {}))
    result: dict[str, Any] = {}
    secret_outputs: set[str] = set()

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")
        outputs = runtime_settings.get_root_resource().outputs  # type: ignore[union-attr]

        def collect(name: str, output: Any):
            out = pulumi.Output.from_input(output)
            return pulumi.Output.all(out, pulumi.Output.from_input(out.is_secret())).apply(
                lambda pair: (result.__setitem__(name, pair[0]), pair[1] and secret_outputs.add(name))
            )

        return pulumi.Output.all(*[collect(n, o) for n, o in outputs.items()])

    program()
    return ProgramRun(mocks.resources, result, secret_outputs, list(monitor.get_registered_resources()), mocks.calls,
                      monitor.dependencies)
