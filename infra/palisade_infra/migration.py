"""Migrations before traffic: a `pulumi up` that changes the image runs the migration job with the
new image, waits for it to succeed, and only then updates the API.

`MigrationRun` is a dynamic resource whose inputs are the job's resource id and the image. Pulumi
creates or updates it (which starts one execution of the job through Azure Resource Manager and
waits for its outcome) after the job has the new image and before the API, which depends on it.
A failed or timed-out execution fails `pulumi up` there: the API keeps the revision it had, which
keeps serving, because migrations only expand the schema (expand, then contract in a later
release; see the README's upgrade runbook).

Azure Resource Manager is reached with the deploying operator's own Azure CLI sign-in (`az account
get-access-token`), the same identity `pulumi up` deploys with; nothing here is stored.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

ARM = "https://management.azure.com"
API_VERSION = "2024-03-01"
DONE = {"Succeeded", "Failed", "Stopped", "Degraded"}


class MigrationFailed(Exception):
    pass


def _token(arm: str) -> str:
    result = subprocess.run(["az", "account", "get-access-token", "--resource", arm + "/", "--query", "accessToken",
                             "-o", "tsv"], capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise MigrationFailed("could not get an Azure Resource Manager token from the Azure CLI (az login?): "
                              + result.stderr.strip()[-500:])
    return result.stdout.strip()


def _call(method: str, url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (https ARM, or a test's loopback)
        body = response.read()
    return json.loads(body) if body else {}


def run_job(job_id: str, *, arm: str = ARM, timeout: float = 1800, poll: float = 10) -> str:
    """Start one execution of the job and wait for it; its name on success, MigrationFailed otherwise."""
    token = _token(arm)
    started = _call("POST", f"{arm}{job_id}/start?api-version={API_VERSION}", token)
    name = started.get("name") or str(started.get("id", "")).rsplit("/", 1)[-1]
    if not name:
        raise MigrationFailed(f"starting {job_id} returned no execution name")
    deadline = time.monotonic() + timeout
    while True:
        execution = _call("GET", f"{arm}{job_id}/executions/{name}?api-version={API_VERSION}", token)
        status = execution.get("properties", {}).get("status", "")
        if status == "Succeeded":
            return name
        if status in DONE:
            raise MigrationFailed(f"migration job execution {name} ended {status}: the API was not updated; read the "
                                  "job's logs (ContainerAppConsoleLogs) before retrying")
        if time.monotonic() > deadline:
            raise MigrationFailed(f"migration job execution {name} did not finish within {timeout:.0f} s")
        time.sleep(poll)


class _Provider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        execution = run_job(props["job_id"], arm=props.get("arm", ARM))
        return dynamic.CreateResult(id_=execution, outs={**props, "execution": execution})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in ("job_id", "image") if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # an execution that happened stays in the job's history


# Pulumi pickles a dynamic provider (dill) into the state and unpickles it in a provider process
# whose import path need not include this program's directory. Marked as `__main__`'s, dill
# carries the provider and the functions it calls by value, so unpickling imports only the
# standard library (tests/infra/test_migration_run.py unpickles it where `palisade_infra` is not
# importable).
for _by_value in (_Provider, *vars(_Provider).values(), MigrationFailed, run_job, _token, _call):
    if callable(_by_value):
        _by_value.__module__ = "__main__"


class MigrationRun(dynamic.Resource):
    """One successful execution of the migration job for this image."""

    execution: pulumi.Output[str]

    def __init__(self, name: str, *, job_id: pulumi.Input[str], image: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(_Provider(), name, {"job_id": job_id, "image": image, "execution": None}, opts)
