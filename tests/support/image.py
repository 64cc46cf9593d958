"""The Palisade container image, for tests: built once by `scripts/image build`, run with podman.

    image = ensure_image()                      # Image(ref, id, digest, archive, sbom)
    with run(image, ["serve", "--port", "8123"], {"PALISADE_DATABASE_URL": url}, detach=True) as c:
        ...                                     # c.wait(timeout), c.logs(), c.stop()

The build is cached on disk by `scripts/image` (keyed by a hash of its inputs), so a second
session with unchanged inputs costs a few seconds. Containers always run with `--network host`
(loopback only, the tests' own servers), a read-only root filesystem and a tmpfs /tmp, and the
flags Debian's podman needs here (runc, explicit ulimits). Needs root; fails, never skips.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "dist" / "image"
PODMAN_FLAGS = ["--runtime", "runc"]
RUN_FLAGS = ["--rm", "--pull=never", "--network", "host", "--read-only", "--tmpfs", "/tmp",
             "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


class ImageError(AssertionError):
    """The image could not be built or run here (a failure, never a skip)."""


@dataclass(frozen=True)
class Image:
    ref: str      # localhost/palisade:<version>, in the local container storage
    id: str       # the image ID (its config digest): what `podman run` is given
    digest: str   # sha256:… of the OCI archive's manifest: what the signature and the SBOM name
    archive: Path
    sbom: Path


@functools.cache
def ensure_image() -> Image:
    """Build (or find up to date) the image with scripts/image; once per process."""
    if os.geteuid() != 0:
        raise ImageError("the image tests need root: Debian's buildah/podman run containers here only as root")
    result = subprocess.run([str(ROOT / "scripts/image"), "build"], capture_output=True, text=True, timeout=1200)
    if result.returncode:
        raise ImageError(f"scripts/image build failed:\n{result.stdout}\n{result.stderr[-6000:]}")
    version = subprocess.run(["python3", "-c", "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))"
                              "['project']['version'])"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    ref = f"localhost/palisade:{version}"
    image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                              capture_output=True, text=True, check=True).stdout.strip()
    return Image(ref=ref, id=image_id, digest=(OUT / "palisade-image.digest").read_text().strip(),
                 archive=OUT / "palisade-image.oci.tar", sbom=OUT / "palisade-image.cdx.json")


class Container:
    """A `podman run` in progress (or finished); output goes to a file, read with logs()."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self._proc, self._log = name, proc, log

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float = 300) -> int:
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ImageError(f"container {self.name} still running after {timeout}s:\n{self.logs()[-4000:]}") from None

    def logs(self) -> str:
        return self._log.read_text(errors="replace")

    def stop(self) -> None:
        if self._proc.poll() is None:
            subprocess.run(["podman", "stop", "-t", "5", self.name], capture_output=True, timeout=60)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run(["podman", "rm", "-f", self.name], capture_output=True, timeout=60)
                self._proc.wait(timeout=30)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)


def run(image: Image, args: list[str], env: dict[str, str], *, add_hosts: dict[str, str] | None = None,
        volumes: list[tuple[str, str, str]] | None = None, detach: bool = False, name: str | None = None,
        entrypoint: list[str] | None = None, user: str | None = None, timeout: float = 300) -> Container:
    """Run the image with *args* (after its `palisade` entrypoint, or after *entrypoint*).

    *env* values reach the container through podman's environment, never its command line.
    *volumes* are (host path, container path, mode such as "ro"). Without *detach*, returns once
    the container has exited (see .returncode and .logs()).
    """
    name = name or f"palisade-test-{secrets.token_hex(4)}"
    cmd = ["podman", *PODMAN_FLAGS, "run", *RUN_FLAGS, "--name", name]
    for key in env:
        cmd += ["--env", key]
    for host, address in (add_hosts or {}).items():
        cmd += ["--add-host", f"{host}:{address}"]
    for host_path, container_path, mode in volumes or []:
        cmd += ["--volume", f"{host_path}:{container_path}:{mode}"]
    if entrypoint is not None:
        cmd += ["--entrypoint", json.dumps(entrypoint)]
    if user is not None:
        cmd += ["--user", user]
    fd, log = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen([*cmd, image.id, *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
    container = Container(name, proc, Path(log))
    if not detach:
        container.wait(timeout)
    return container
