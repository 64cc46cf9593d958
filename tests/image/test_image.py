"""The container image as a customer meets it: verified before use, then `palisade migrate` and
`palisade serve` run from it against a real PostgreSQL, as uid 10001 on a read-only root."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from app.db.migrate import head_revision
from tests.image.conftest import Release, keypair
from tests.support.database import ROOT, superuser_execute
from tests.support.image import Image, run


def lock_pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9._-]+)==(\S+)", path.read_text(), flags=re.M))


# --- the signature, the digest and the SBOM -------------------------------------------------------


def test_a_signed_release_verifies_against_the_loaded_image(release: Release, image: Image) -> None:
    result = release.verify("--image", image.ref)
    assert result.returncode == 0, result.stderr
    assert image.digest in result.stdout


def test_the_archive_loads_as_the_image_it_was_built_as(release: Release, image: Image) -> None:
    loaded = subprocess.run(["podman", "load", "-i", str(image.archive)], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert image.ref in loaded.stdout
    result = release.verify("--image", image.ref)
    assert result.returncode == 0, result.stderr


def test_a_tampered_digest_file_fails(release: Release) -> None:
    digest = release.dir / "palisade-image.digest"
    digest.write_text("sha256:" + "0" * 64 + "\n")
    result = release.verify()
    assert result.returncode != 0 and "signature" in result.stderr + result.stdout


def test_a_tampered_sbom_fails(release: Release) -> None:
    sbom = release.dir / "palisade-image.cdx.json"
    bom = json.loads(sbom.read_text())
    bom["components"] = [c for c in bom["components"] if c["name"] != "cryptography"]
    sbom.write_text(json.dumps(bom))
    result = release.verify()
    assert result.returncode != 0 and "signature" in result.stderr + result.stdout


def test_a_signature_by_another_key_fails(release: Release, tmp_path: Path) -> None:
    other_public, _ = keypair(tmp_path / "other")
    result = release.verify(pubkey=other_public)
    assert result.returncode != 0


def test_an_sbom_of_another_image_fails_even_when_signed(release: Release) -> None:
    sbom = release.dir / "palisade-image.cdx.json"
    bom = json.loads(sbom.read_text())
    for prop in bom["metadata"]["properties"]:
        if prop["name"] == "palisade:image-digest":
            prop["value"] = "sha256:" + "1" * 64
    sbom.write_text(json.dumps(bom))
    release.sign()  # the right key signs it: the binding to the digest is what must catch it
    result = release.verify()
    assert result.returncode != 0 and "SBOM describes image" in result.stderr


def test_a_digest_not_matching_the_archive_fails_even_when_signed(release: Release) -> None:
    (release.dir / "palisade-image.digest").write_text("sha256:" + "2" * 64 + "\n")
    release.sign()
    result = release.verify()
    assert result.returncode != 0 and "the signed digest is" in result.stderr


def test_verify_refuses_a_loaded_image_that_is_not_the_signed_one(release: Release) -> None:
    result = release.verify("--image", "localhost/palisade-base:bookworm")
    assert result.returncode != 0 and "is not the signed image" in result.stderr


def test_the_sbom_lists_the_runtime_lock_and_the_debian_packages(image: Image) -> None:
    bom = json.loads(image.sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["type"] == "container"
    assert image.digest.removeprefix("sha256:") in bom["metadata"]["component"]["purl"]
    python = {c["name"].lower().replace("_", "-"): c["version"] for c in bom["components"]
              if c.get("purl", "").startswith("pkg:pypi/")}
    runtime = lock_pins(ROOT / "requirements-runtime.lock")
    assert {name: python.get(name) for name in runtime} == runtime
    assert "pytest" not in python and "ruff" not in python and "pip" not in python
    debian = {c["name"] for c in bom["components"] if c.get("purl", "").startswith("pkg:deb/")}
    assert {"python3.11", "ca-certificates", "libc6"} <= debian
    assert not {"gcc", "gcc-12", "cpp", "make"} & debian


# --- the runtime lock -----------------------------------------------------------------------------


def test_the_runtime_lock_pins_the_same_versions_and_hashes_as_the_full_lock() -> None:
    def entries(path: Path) -> dict[str, tuple[str, frozenset[str], frozenset[str]]]:
        """name -> (version, hashes, what pulled it in: pip-compile's `# via` lines)."""
        blocks = re.split(r"\n(?=[a-z0-9])", path.read_text())
        found = {}
        for block in blocks:
            match = re.match(r"([a-z0-9._-]+)==(\S+)", block)
            if match:
                via = block.partition("# via")[2]
                parents = re.findall(r"#?\s*([A-Za-z0-9._-]+(?: \(pyproject\.toml\))?)", via)
                found[match[1]] = (match[2], frozenset(re.findall(r"--hash=(sha256:\w+)", block)), frozenset(parents))
        return found

    full, runtime = entries(ROOT / "requirements.lock"), entries(ROOT / "requirements-runtime.lock")
    assert {name: full.get(name, (None, None, None))[:2] for name in runtime} == {n: e[:2] for n, e in runtime.items()}
    # What the full lock has beyond the runtime lock is the test extra's tools and what only they
    # pull in (per the lock's own `# via` lines), nothing else.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_only = {re.match(r"[A-Za-z0-9._-]+", spec)[0].lower() for spec in pyproject["project"]["optional-dependencies"]["test"]}
    grew = True
    while grew:
        more = {name for name, (_, _, parents) in full.items() if name not in runtime and parents and parents <= test_only}
        grew = not more <= test_only
        test_only |= more
    assert set(full) - set(runtime) == test_only & set(full)
    assert {"pytest", "ruff", "schemathesis"} <= test_only


# --- the image at run time ------------------------------------------------------------------------


PROBE = """
import importlib.util, os, shutil
print("uid", os.getuid(), os.getgid())
print("tools", [m for m in ("pytest", "ruff", "pip", "setuptools") if importlib.util.find_spec(m)],
      [c for c in ("gcc", "cc", "make", "pip", "pytest", "ruff") if shutil.which(c)])
for path in ("/opt/palisade/venv/x", "/etc/x", "/tmp/x"):
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, exc.strerror)
"""


def test_runs_as_uid_10001_on_a_read_only_root_without_test_tools_or_compilers(image: Image) -> None:
    container = run(image, ["-c", PROBE], {}, entrypoint=["python"])
    out = container.logs()
    assert container.returncode == 0, out
    assert "uid 10001 10001" in out
    assert "tools [] []" in out
    assert "refused /opt/palisade/venv/x Read-only file system" in out
    assert "refused /etc/x Read-only file system" in out
    assert "wrote /tmp/x" in out


def test_labels_name_the_version_and_the_commit(image: Image) -> None:
    labels = json.loads(subprocess.run(["podman", "image", "inspect", "--format", "{{json .Labels}}", image.ref],
                                       capture_output=True, text=True, check=True).stdout)
    # The last commit that changed an input of the image (a later commit that did not is the same image).
    inputs = ["Containerfile", "scripts/image", "requirements-runtime.lock", "requirements-build.lock", "pyproject.toml",
              "README.md", "app", "migrations"]
    head = subprocess.run(["git", "log", "-1", "--format=%H", "--", *inputs], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == image.ref.rsplit(":", 1)[1]
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head


# --- migrate and serve from the image, against the test PostgreSQL ---------------------------------


def _access(url: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """Volumes and user for reaching *url* from a container: a Unix-socket server's directory is
    mounted and, being owner-only (0700), entered as its owner; a TCP server needs neither."""
    socket_dir = make_url(url).query.get("host")
    if not socket_dir:
        return [], None
    st = os.stat(socket_dir)
    return [(socket_dir, socket_dir, "rw")], f"{st.st_uid}:{st.st_gid}"


@pytest.fixture(scope="module")
def scratch(pg_superuser_url: str):
    """An empty database owned by an admin role (CREATEROLE, no superuser), as a managed service gives."""
    tag = secrets.token_hex(4)
    name, admin, app_role, password = f"palisade_img_{tag}", f"palisade_i{tag}_admin", f"palisade_i{tag}_app", secrets.token_hex(12)
    superuser_execute(pg_superuser_url, f"CREATE ROLE {admin} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD '{password}'",
                      f"CREATE DATABASE {name} OWNER {admin}")
    base = make_url(pg_superuser_url).set(database=name)
    urls = {"admin": base.set(username=admin, password=password).render_as_string(hide_password=False),
            "app": base.set(username=app_role, password=password).render_as_string(hide_password=False),
            "super": base.render_as_string(hide_password=False)}
    yield urls
    superuser_execute(pg_superuser_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                      f"DROP OWNED BY {app_role}", f"DROP ROLE IF EXISTS {app_role}", f"DROP ROLE IF EXISTS {admin}")


@pytest.fixture(scope="module")
def migrated(image: Image, scratch: dict[str, str]) -> dict[str, str]:
    volumes, user = _access(scratch["admin"])
    env = {"PALISADE_MODE": "development", "PALISADE_SECRET_PROVIDER": "env",
           "PALISADE_ADMIN_DATABASE_URL": scratch["admin"], "PALISADE_DATABASE_URL": scratch["app"]}
    # As arguments to the image's `palisade` entrypoint.
    container = run(image, ["migrate"], env, volumes=volumes, user=user)
    assert container.returncode == 0, container.logs()
    assert "migrations applied" in container.logs()
    return scratch


def test_migrate_from_the_image_brings_a_fresh_database_to_head(migrated: dict[str, str]) -> None:
    engine = create_engine(migrated["super"], poolclass=pool.NullPool)
    with engine.connect() as conn:
        version = conn.execute(text("select version_num from alembic_version")).scalar_one()
        forced = conn.execute(text("select count(*) from pg_class where relforcerowsecurity")).scalar_one()
    engine.dispose()
    assert version == head_revision()
    assert forced > 0  # the tenant tables exist, with row-level security forced


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_from_the_image_answers_the_health_probes(image: Image, migrated: dict[str, str]) -> None:
    volumes, user = _access(migrated["app"])
    port = _free_port()
    env = {"PALISADE_MODE": "development", "PALISADE_SECRET_PROVIDER": "env", "PALISADE_DATABASE_URL": migrated["app"]}
    # The whole command line, as Azure Container Apps' `command` gives it (it replaces the entrypoint).
    command = ["palisade", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with run(image, [], env, volumes=volumes, user=user, entrypoint=command, detach=True) as container:
        deadline, live = time.monotonic() + 60, None
        while time.monotonic() < deadline and container.returncode is None:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert live is not None and live.status_code == 200, container.logs()
        assert live.json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
        assert ready.status_code == 200, container.logs()
        assert ready.json() == {"status": "ok"}


def test_a_rebuild_from_the_same_inputs_gives_the_same_digest(image: Image, tmp_path: Path) -> None:
    # Built again from the same commit, locks and base tarball: a customer or auditor who rebuilds
    # gets the digest the vendor signed.
    rebuilt = subprocess.run([str(ROOT / "scripts/image"), "build", "--dir", str(tmp_path)], capture_output=True,
                             text=True, timeout=1200, env={**os.environ, "PALISADE_IMAGE_NO_CACHE": "1"})
    assert rebuilt.returncode == 0, rebuilt.stderr[-4000:]
    assert (tmp_path / "palisade-image.digest").read_text().strip() == image.digest
