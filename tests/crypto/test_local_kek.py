"""LocalKeyWrapper: AES key wrap (RFC 5649) under owner-only kek-<n>.key files; the highest n is current."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from app.crypto.kek import KeyWrapError, KeyWrapper, LocalKeyWrapper, UnknownKeyVersion, UnwrapFailed
from app.crypto.secrets import UnsafeSecretFile


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    return directory


def test_create_version_writes_owner_only_random_keys(keys_dir: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        assert LocalKeyWrapper.create_version(keys_dir) == "1"
        assert LocalKeyWrapper.create_version(keys_dir) == "2"
    finally:
        os.umask(old_umask)
    first, second = keys_dir / "kek-1.key", keys_dir / "kek-2.key"
    for path in (first, second):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_bytes()) == 32
    assert first.read_bytes() != second.read_bytes()


def test_round_trip_and_rotation(keys_dir: Path) -> None:
    LocalKeyWrapper.create_version(keys_dir)
    kek = LocalKeyWrapper(keys_dir)
    assert isinstance(kek, KeyWrapper)
    assert kek.current_version() == "1"

    dek = os.urandom(32)
    v1, w1 = kek.wrap(dek)
    assert v1 == "1" and dek not in w1
    assert aes_key_unwrap_with_padding((keys_dir / "kek-1.key").read_bytes(), w1) == dek  # plain RFC 5649
    assert kek.unwrap(v1, w1) == dek

    # `palisade keys rotate` on-prem: the next version becomes current without a restart.
    assert LocalKeyWrapper.create_version(keys_dir) == "2"
    assert kek.current_version() == "2"
    v2, w2 = kek.wrap(dek)
    assert v2 == "2" and w2 != w1
    assert kek.unwrap("1", w1) == dek  # the old version still unwraps
    assert kek.unwrap("2", w2) == dek
    assert kek.versions() == ["1", "2"]

    # Retiring a version (after rewrapping) = removing its file.
    (keys_dir / "kek-1.key").unlink()
    with pytest.raises(UnknownKeyVersion, match="'1'"):
        kek.unwrap("1", w1)


def test_versions_are_compared_as_numbers(keys_dir: Path) -> None:
    for n in (2, 10, 9):
        path = keys_dir / f"kek-{n}.key"
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
    assert LocalKeyWrapper(keys_dir).current_version() == "10"
    assert LocalKeyWrapper.create_version(keys_dir) == "11"


def test_tampered_or_foreign_wrapped_keys_do_not_unwrap(keys_dir: Path) -> None:
    LocalKeyWrapper.create_version(keys_dir)
    LocalKeyWrapper.create_version(keys_dir)
    kek = LocalKeyWrapper(keys_dir)
    version, wrapped = kek.wrap(os.urandom(32))
    with pytest.raises(UnwrapFailed):
        kek.unwrap(version, bytes([wrapped[0] ^ 1]) + wrapped[1:])
    with pytest.raises(UnwrapFailed):
        kek.unwrap("1", wrapped)  # wrapped under 2, presented as 1
    for bad in ("../kek-1", "01", "0", "x", "", "1/../2"):
        with pytest.raises(UnknownKeyVersion):
            kek.unwrap(bad, wrapped)


def test_key_files_obey_the_secret_file_rules(keys_dir: Path, tmp_path: Path) -> None:
    LocalKeyWrapper.create_version(keys_dir)
    kek = LocalKeyWrapper(keys_dir)
    key_file = keys_dir / "kek-1.key"
    key_file.chmod(0o640)
    with pytest.raises(UnsafeSecretFile, match="kek-1.key.*0640"):
        kek.wrap(os.urandom(32))
    key_file.chmod(0o600)

    outside = tmp_path / "stolen.key"
    outside.write_bytes(os.urandom(32))
    outside.chmod(0o600)
    (keys_dir / "kek-2.key").symlink_to(outside)
    with pytest.raises(UnsafeSecretFile, match="outside the directory"):
        kek.wrap(os.urandom(32))
    (keys_dir / "kek-2.key").unlink()

    short = keys_dir / "kek-3.key"
    short.write_bytes(os.urandom(16))
    short.chmod(0o600)
    with pytest.raises(UnsafeSecretFile, match="32"):
        kek.wrap(os.urandom(32))
    short.unlink()

    misnamed = keys_dir / "kek-04.key"
    misnamed.write_bytes(os.urandom(32))
    misnamed.chmod(0o600)
    with pytest.raises(UnsafeSecretFile, match="kek-04.key"):
        kek.current_version()
    misnamed.unlink()

    keys_dir.chmod(0o777)
    with pytest.raises(UnsafeSecretFile, match="change it"):
        kek.wrap(os.urandom(32))


def test_empty_or_missing_directory(keys_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyWrapError, match="palisade keys rotate"):
        LocalKeyWrapper(keys_dir).current_version()
    with pytest.raises(UnsafeSecretFile, match="does not exist"):
        LocalKeyWrapper(tmp_path / "nowhere")


def test_data_keys_must_be_aes_sized(keys_dir: Path) -> None:
    LocalKeyWrapper.create_version(keys_dir)
    kek = LocalKeyWrapper(keys_dir)
    for dek in (b"", b"x" * 31, b"x" * 33, "x" * 32):
        with pytest.raises(ValueError):
            kek.wrap(dek)  # type: ignore[arg-type]
