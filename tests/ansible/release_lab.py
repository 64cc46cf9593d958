"""Release bundles for the tests: a scratch repository of this working tree, tagged, and the helpers
that build, verify and tamper with bundles through scripts/release (the real command)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

from conftest import REPO

GIT_DATE = "2026-01-01T00:00:00+00:00"


def run(*argv: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def git(repo: Path, *args: str) -> str:
    who = {"NAME": "Release Test", "EMAIL": "release@test.invalid", "DATE": GIT_DATE}
    env = {f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER") for key, value in who.items()}
    return run("git", *args, cwd=repo, env=env | {"PATH": "/usr/bin:/bin"}).stdout.strip()


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # The release tools' virtualenv is shared with the working tree (made from requirements-build.lock).
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PALISADE_RELEASE_TOOLS": str(REPO / ".venv-release")}
    return run(str(repo / "scripts/release"), *args, cwd=repo, env=env, check=check)


def scratch_repo(where: Path) -> Path:
    """This working tree's files (tracked and new, not ignored), committed and tagged v<version>."""
    where.mkdir(parents=True)
    files = run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, where / name)
    git(where, "init", "-q", "-b", "main")
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "release under test")
    git(where, "tag", f"v{project_version()}")
    return where


def keypair(where: Path, name: str) -> Path:
    """A minisign key pair NAME.pub / NAME.sec without a password (a real release key has one)."""
    if shutil.which("minisign") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "minisign"], capture_output=True, timeout=600)
    run("minisign", "-G", "-W", "-p", f"{name}.pub", "-s", f"{name}.sec", cwd=where)
    return where / name


def verify(bundle: Path, key: Path, into: Path) -> subprocess.CompletedProcess[str]:
    return release(REPO, "verify", "--pubkey", f"{key}.pub", str(bundle), "--into", str(into), check=False)


def tampered_copy(unpacked: Path, where: Path) -> Path:
    """A copy of an unpacked bundle to change; pack() makes a bundle of it again."""
    copy = where / unpacked.name
    shutil.copytree(unpacked, copy)
    return copy


def pack(top: Path) -> Path:
    with tarfile.open(top.with_suffix(".tar"), "w") as tar:
        tar.add(top, arcname=top.name)
    return top.with_suffix(".tar")
