"""Azure Blob Storage for the off-host pgBackRest repository: Azurite (npm, pinned in azurite/package-lock.json)
on the host side of the test network, over HTTPS with a certificate made for this run, and one storage
account whose key is made for this run too (so the no-secret-in-any-log checks look for it).

The test host reaches it at its veth peer address, the way a database host reaches an Azure Storage
endpoint; the test reads the container through the Azure SDK (azurite/blob.mjs) to see what landed there.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "azurite"
ACCOUNT = "palisadebackups"
CONTAINER = "pgbackrest"


class Azurite:
    def __init__(self, workdir: Path, address: str) -> None:
        self.dir = workdir / "azurite"
        self.dir.mkdir()
        self.address = address
        self.key = base64.b64encode(secrets.token_bytes(64)).decode()
        self.cert, self.private_key = self.dir / "cert.pem", self.dir / "key.pem"
        self._process: subprocess.Popen | None = None
        with socket.socket() as probe:
            probe.bind((address, 0))
            self.port = probe.getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}/{ACCOUNT}"

    def start(self) -> Azurite:
        if not (PACKAGE / "node_modules/.bin/azurite-blob").exists():
            subprocess.run(["npm", "ci", "--prefix", str(PACKAGE), "--no-audit", "--no-fund", "--loglevel=error"],
                           check=True, capture_output=True, timeout=600)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(self.private_key), "-out", str(self.cert), "-days", "2", "-subj", "/CN=azurite",
                        # pgBackRest (2.45) matches the host it connects to against the certificate's DNS
                        # names only, the Azure SDK an address against its IP names: the address is both.
                        "-addext", f"subjectAltName=IP:{self.address},DNS:{self.address}"],
                       check=True, capture_output=True, timeout=60)
        log = open(self.dir / "azurite.log", "wb")
        self._process = subprocess.Popen(
            [str(PACKAGE / "node_modules/.bin/azurite-blob"), "--blobHost", self.address, "--blobPort", str(self.port),
             "--location", str(self.dir / "data"), "--cert", str(self.cert), "--key", str(self.private_key),
             "--disableTelemetry", "--disableProductStyleUrl", "--silent"],
            env=dict(os.environ, AZURITE_ACCOUNTS=f"{ACCOUNT}:{self.key}"), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((self.address, self.port), timeout=2).close()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start: {(self.dir / 'azurite.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        self.blob("create-container", CONTAINER)
        return self

    def blob(self, *args: str) -> str:
        """Run azurite/blob.mjs (the Azure SDK) against this account; returns its standard output."""
        env = dict(os.environ, AZURITE_URL=self.url, AZURITE_ACCOUNT=ACCOUNT, AZURITE_KEY=self.key,
                   NODE_EXTRA_CA_CERTS=str(self.cert))
        done = subprocess.run(["node", str(PACKAGE / "blob.mjs"), *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=PACKAGE)
        if done.returncode:
            raise RuntimeError(f"blob.mjs {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=30)
        self._process = None
        shutil.rmtree(self.dir / "data", ignore_errors=True)
