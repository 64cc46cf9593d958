"""The image, built once per session (cached on disk by scripts/image), and a throwaway signing key."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.image import ROOT, Image, ensure_image


@pytest.fixture(scope="session")
def image() -> Image:
    return ensure_image()


@dataclass(frozen=True)
class Release:
    """A copy of dist/image signed with a key of its own: what a customer receives."""

    dir: Path
    secret_key: Path
    public_key: Path

    def verify(self, *extra: str, pubkey: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "scripts/image"), "verify", "--dir", str(self.dir),
                               "--pubkey", str(pubkey or self.public_key), *extra],
                              capture_output=True, text=True, timeout=300)

    def sign(self) -> None:
        subprocess.run([str(ROOT / "scripts/image"), "sign", "--dir", str(self.dir), "--key", str(self.secret_key)],
                       check=True, capture_output=True, timeout=120)


def keypair(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / "release.pub", directory / "release.key"
    # -W: no password on this throwaway key (a real release key has one).
    subprocess.run(["minisign", "-G", "-W", "-p", str(public), "-s", str(secret)], check=True, capture_output=True)
    return public, secret


@pytest.fixture
def release(image: Image, tmp_path: Path) -> Release:
    out = tmp_path / "release"
    out.mkdir()
    (out / image.archive.name).symlink_to(image.archive)  # read only; no need to copy 100+ MB
    for source in (image.archive.parent / "palisade-image.digest", image.sbom):
        (out / source.name).write_bytes(source.read_bytes())
    public, secret = keypair(tmp_path / "keys")
    signed = Release(dir=out, secret_key=secret, public_key=public)
    signed.sign()
    return signed
