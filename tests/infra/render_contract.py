"""Render what the Pulumi program gives each workload, as JSON: the deploy contract.

    .venv-infra/bin/python tests/infra/render_contract.py OVERRIDES.json > contract.json

Runs the program under the harness's mocks for the example stack with OVERRIDES (stack config
keys) on top, and writes, for the API container app and the migration job: each container's
image, command, arguments, plain environment and Key Vault references; the identities assigned to
it (client and principal ids); every role assignment of the stack with its scope inside the vault
or the storage account; and the audit checkpoint store (account URL, container) and signing key. `tests/deploy/test_azure_contract.py` starts the real app from exactly this (it runs in the
app's environment, which has no Pulumi; this script runs in the program's, which has no app).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (REPO / "infra", HERE):
    sys.path.insert(0, str(path))

from infra_harness import example_stack_config, run_program  # noqa: E402

WORKLOADS = {"azure-native:app:ContainerApp": "api", "azure-native:app:Job": "migrate"}


def render(overrides: dict[str, object]) -> dict[str, object]:
    run = run_program({**example_stack_config(), **overrides})
    identities = {
        r.state["id"]: {"name": r.inputs["resourceName"], "client_id": r.state["clientId"], "principal_id": r.state["principalId"]}
        for r in run.of_type("azure-native:managedidentity:UserAssignedIdentity")
    }
    vault = run.one("azure-native:keyvault:Vault").state
    account = run.one("azure-native:storage:StorageAccount").state
    grants = []
    for r in run.of_type("azure-native:authorization:RoleAssignment"):
        scope = r.inputs["scope"]
        inside = scope.split(vault["id"], 1)[1].lstrip("/") if scope.startswith(vault["id"]) else None
        in_account = scope.split(account["id"], 1)[1].lstrip("/") if scope.startswith(account["id"] + "/") else None
        grants.append({"principal_id": r.inputs["principalId"], "role": r.inputs["roleDefinitionId"].rsplit("/", 1)[1],
                       "scope": scope, "in_vault": inside, "in_storage": in_account})
    workloads = {}
    for token, label in WORKLOADS.items():
        resource = run.one(token)
        configuration = resource.inputs["configuration"]
        containers = {}
        for container in resource.inputs["template"]["containers"]:
            containers[container["name"]] = {
                "image": container["image"],
                "command": container.get("command"),
                "args": container.get("args", []),
                "env": {e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
                "secret_env": {e["name"]: e["secretRef"] for e in container.get("env", []) if "secretRef" in e},
            }
        workloads[label] = {
            "resource": resource.name,
            "identities": resource.inputs["identity"]["userAssignedIdentities"],
            "secrets": {s["name"]: {"key_vault_url": s["keyVaultUrl"], "identity": s["identity"]}
                        for s in configuration.get("secrets", [])},
            "ingress": configuration.get("ingress"),
            "containers": containers,
        }
    key = run.one("azure-native:keyvault:Key", "secrets-kek").state
    checkpoint_key = run.one("azure-native:keyvault:Key", "secrets-checkpoint-key").state
    return {
        "vault": {"id": vault["id"], "uri": vault["properties"]["vaultUri"]},
        "kek": {"name": key["keyName"], "uri": key["keyUri"]},
        "checkpoint_key": {"name": checkpoint_key["keyName"], "uri": checkpoint_key["keyUri"]},
        "checkpoint_store": {"account_url": account["primaryEndpoints"]["blob"],
                             "container": run.one("azure-native:storage:BlobContainer").inputs["containerName"]},
        "stored_secrets": sorted(r.inputs["secretName"] for r in run.of_type("azure-native:keyvault:Secret")),
        # The database URLs carry no secret (Entra ID tokens sign in): their exact form is part of the contract.
        "database_urls": {r.inputs["secretName"]: r.inputs["properties"]["value"]
                          for r in run.of_type("azure-native:keyvault:Secret")
                          if r.inputs["secretName"] in ("database-url", "admin-database-url")},
        "database_host": run.outputs["databaseHost"],
        "identities": identities,
        "role_assignments": grants,
        "workloads": workloads,
        "outputs": run.outputs,
    }


if __name__ == "__main__":
    overrides = json.loads(Path(sys.argv[1]).read_text()) if len(sys.argv) > 1 else {}
    json.dump(render(overrides), sys.stdout, indent=2, default=str)
