"""The migration run `pulumi up` waits on: one execution of the job, started and watched through
Azure Resource Manager's REST API (here a loopback stand-in speaking its documented shapes), with
the operator's Azure CLI token (here a stand-in `az` on PATH printing one)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from palisade_infra.migration import API_VERSION, MigrationFailed, run_job

JOB = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.App/jobs/caj-palisade-migrate"
TOKEN = "operator-arm-token"


class Arm:
    def __init__(self, statuses: list[str]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[str, str, str]] = []
        arm = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: dict) -> None:
                arm.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                data = json.dumps(body).encode()
                self.send_response(200 if self.command == "GET" else 202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                self._reply({"id": f"{JOB}/executions/caj-palisade-migrate-x7k2", "name": "caj-palisade-migrate-x7k2"})

            def do_GET(self):  # noqa: N802
                status = arm.statuses.pop(0) if len(arm.statuses) > 1 else arm.statuses[0]
                self._reply({"name": "caj-palisade-migrate-x7k2", "properties": {"status": status}})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def az(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shim = tmp_path / "bin" / "az"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\necho {TOKEN}\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:/usr/bin:/bin")


def test_a_successful_run_is_started_once_and_waited_for(az):
    arm = Arm(["Running", "Running", "Succeeded"])
    assert run_job(JOB, arm=arm.url, poll=0.01) == "caj-palisade-migrate-x7k2"
    methods = [m for m, _, _ in arm.requests]
    assert methods == ["POST", "GET", "GET", "GET"]
    assert arm.requests[0][1] == f"{JOB}/start?api-version={API_VERSION}"
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in arm.requests)


@pytest.mark.parametrize("status", ["Failed", "Stopped", "Degraded"])
def test_a_failed_run_stops_pulumi_up_before_the_api(az, status):
    arm = Arm(["Running", status])
    with pytest.raises(MigrationFailed, match=f"ended {status}: the API was not updated"):
        run_job(JOB, arm=arm.url, poll=0.01)


def test_a_run_that_never_ends_times_out(az):
    arm = Arm(["Running"])
    with pytest.raises(MigrationFailed, match="did not finish"):
        run_job(JOB, arm=arm.url, poll=0.01, timeout=0.2)


def test_without_an_azure_sign_in_nothing_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shim = tmp_path / "az"
    shim.write_text("#!/bin/sh\necho 'Please run az login' >&2\nexit 1\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    arm = Arm(["Succeeded"])
    with pytest.raises(MigrationFailed, match="az login"):
        run_job(JOB, arm=arm.url, poll=0.01)
    assert arm.requests == []


def test_the_provider_runs_where_the_program_is_not_importable(az, tmp_path: Path):
    # What `pulumi up` does with a dynamic provider: pickle it into the state, then load it in a
    # provider process. That process must not need this program's modules on its import path.
    import subprocess
    import sys

    from palisade_infra.migration import _Provider
    from pulumi.dynamic.dynamic import serialize_provider

    blob = tmp_path / "provider.b64"
    blob.write_text(serialize_provider(_Provider()))
    arm = Arm(["Succeeded"])
    script = ("import base64, sys, dill; p = dill.loads(base64.b64decode(open(sys.argv[1]).read()));"
              "print(p.create({'job_id': sys.argv[2], 'image': 'img', 'arm': sys.argv[3]}).id)")
    result = subprocess.run([sys.executable, "-I", "-c", script, str(blob), JOB, arm.url], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "caj-palisade-migrate-x7k2"
