"""FileSecrets and systemd credentials: owner-only regular files inside the directory, or a refusal naming the file."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from app.crypto.secrets import (
    FileSecrets,
    MissingSecret,
    SecretProvider,
    SecretProviderError,
    UnsafeSecretFile,
    systemd_credentials,
)

VALUE = "tskey-Zq9-very-secret"


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    return directory


def write(directory: Path, name: str, content: str | bytes, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def refused(provider: FileSecrets, name: str) -> UnsafeSecretFile:
    with pytest.raises(UnsafeSecretFile) as excinfo:
        provider.get(name)
    message = str(excinfo.value)
    assert VALUE not in message  # the reason names the file, never its content
    return excinfo.value


def test_owner_only_files_are_read_with_one_trailing_newline_stripped(secrets_dir: Path) -> None:
    write(secrets_dir, "database-url", VALUE + "\n")
    write(secrets_dir, "turnstile-secret", VALUE, mode=0o400)
    write(secrets_dir, "two-newlines", VALUE + "\n\n")
    write(secrets_dir, "crlf", VALUE + "\r\n")
    provider = FileSecrets(secrets_dir)
    assert isinstance(provider, SecretProvider)
    assert provider.get("database-url").reveal() == VALUE
    assert provider.get("turnstile-secret").reveal() == VALUE
    assert provider.get("two-newlines").reveal() == VALUE + "\n"
    assert provider.get("crlf").reveal() == VALUE


def test_readable_by_others_is_refused(secrets_dir: Path) -> None:
    path = write(secrets_dir, "database-url", VALUE, mode=0o644)
    error = refused(FileSecrets(secrets_dir), "database-url")
    assert error.path == str(path)
    assert "0644" in str(error) and str(path) in str(error)


@pytest.mark.parametrize("mode", [0o620, 0o640, 0o604, 0o602, 0o660])
def test_any_group_or_other_bit_is_refused(secrets_dir: Path, mode: int) -> None:
    write(secrets_dir, "database-url", VALUE, mode=mode)
    assert f"{mode:04o}" in str(refused(FileSecrets(secrets_dir), "database-url"))


def test_symlink_pointing_outside_the_directory_is_refused(secrets_dir: Path, tmp_path: Path) -> None:
    outside = write(tmp_path, "elsewhere", VALUE)
    (secrets_dir / "database-url").symlink_to(outside)
    error = refused(FileSecrets(secrets_dir), "database-url")
    assert "outside the directory" in str(error) and "database-url" in str(error)


def test_relative_symlink_escaping_with_dotdot_is_refused(secrets_dir: Path, tmp_path: Path) -> None:
    write(tmp_path, "elsewhere", VALUE)
    (secrets_dir / "database-url").symlink_to("../elsewhere")
    assert "outside" in str(refused(FileSecrets(secrets_dir), "database-url"))


def test_kubernetes_style_links_inside_the_directory_are_followed(secrets_dir: Path) -> None:
    # A Secret volume: name -> ..data/name, ..data -> ..<timestamp>/ (all inside the mount).
    stamped = secrets_dir / "..2026_01_01_00_00_00.000"
    stamped.mkdir(mode=0o700)
    write(stamped, "database-url", VALUE)
    (secrets_dir / "..data").symlink_to(stamped.name)
    (secrets_dir / "database-url").symlink_to("..data/database-url")
    assert FileSecrets(secrets_dir).get("database-url").reveal() == VALUE


def test_a_directory_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path, "secrets", "x")
    with pytest.raises(UnsafeSecretFile, match="not a directory") as excinfo:
        FileSecrets(not_a_dir)
    assert str(not_a_dir) in str(excinfo.value)
    with pytest.raises(UnsafeSecretFile, match="does not exist"):
        FileSecrets(tmp_path / "missing")


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o777])
def test_a_directory_others_can_change_is_refused(secrets_dir: Path, mode: int) -> None:
    write(secrets_dir, "database-url", VALUE)
    secrets_dir.chmod(mode)
    with pytest.raises(UnsafeSecretFile, match="group or others change it"):
        FileSecrets(secrets_dir)


def test_a_directory_loosened_after_start_is_refused_on_the_next_read(secrets_dir: Path) -> None:
    write(secrets_dir, "database-url", VALUE)
    provider = FileSecrets(secrets_dir)
    secrets_dir.chmod(0o777)
    with pytest.raises(UnsafeSecretFile, match="change it"):
        provider.get("database-url")


def test_non_regular_files_are_refused(secrets_dir: Path) -> None:
    os.mkfifo(secrets_dir / "fifo", 0o600)
    (secrets_dir / "subdir").mkdir(mode=0o700)
    provider = FileSecrets(secrets_dir)
    assert "not a regular file" in str(refused(provider, "fifo"))  # and did not block on the FIFO
    assert "not a regular file" in str(refused(provider, "subdir"))


def test_files_owned_by_another_user_are_refused(secrets_dir: Path) -> None:
    path = write(secrets_dir, "database-url", VALUE)
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")  # CI and this machine run the suite as root
    os.chown(path, 65534, 65534)
    error = refused(FileSecrets(secrets_dir), "database-url")
    assert "owned by uid 65534" in str(error)


def test_a_directory_owned_by_another_user_is_refused(secrets_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a directory's owner needs root")
    os.chown(secrets_dir, 65534, 65534)
    with pytest.raises(UnsafeSecretFile, match="owned by uid 65534"):
        FileSecrets(secrets_dir)


def test_missing_and_empty_secrets_raise_missing_secret_naming_them(secrets_dir: Path) -> None:
    write(secrets_dir, "empty", "\n")
    provider = FileSecrets(secrets_dir)
    with pytest.raises(MissingSecret, match="'turnstile-secret'") as excinfo:
        provider.get("turnstile-secret")
    assert excinfo.value.secret_name == "turnstile-secret"
    with pytest.raises(MissingSecret, match="'empty'.*empty"):
        provider.get("empty")


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/b", "..", ".hidden", "", "x" * 200, "a b"])
def test_names_that_are_not_plain_file_names_are_rejected_without_echo(secrets_dir: Path, name: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        FileSecrets(secrets_dir).get(name)
    assert not name or name not in str(excinfo.value)


def test_binary_and_oversized_files_are_refused(secrets_dir: Path) -> None:
    write(secrets_dir, "binary", b"\xff\xfe\x00secret")
    write(secrets_dir, "huge", b"a" * (64 * 1024 + 1))
    provider = FileSecrets(secrets_dir)
    assert "UTF-8" in str(refused(provider, "binary"))
    assert "larger than" in str(refused(provider, "huge"))


# --- POSIX ACLs: how systemd hands credentials to a non-root service ----------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF


def set_acl(path: Path, *entries: tuple[int, int, int]) -> None:
    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", raw)
    except OSError as exc:  # pragma: no cover - depends on the file system under tmp
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("the file system under tmp has no POSIX ACLs")
        raise


def test_systemd_credential_with_a_read_acl_for_the_service_user_is_accepted(secrets_dir: Path) -> None:
    # What systemd's write_credential() does for User=: 0400, then `setfacl -m u:<service>:r`.
    # The mask shows in the group bits: the file reads as mode 0440 although no group can read it.
    path = write(secrets_dir, "database-url", VALUE, mode=0o400)
    set_acl(path, (ACL_USER_OBJ, 4, UNDEFINED), (ACL_USER, 4, os.geteuid()), (ACL_GROUP_OBJ, 0, UNDEFINED),
            (ACL_MASK, 4, UNDEFINED), (ACL_OTHER, 0, UNDEFINED))
    assert path.stat().st_mode & 0o777 == 0o440
    provider = systemd_credentials({"CREDENTIALS_DIRECTORY": str(secrets_dir)})
    assert provider.get("database-url").reveal() == VALUE


def test_acl_granting_a_group_or_another_user_is_refused(secrets_dir: Path) -> None:
    group = write(secrets_dir, "group", VALUE, mode=0o400)
    set_acl(group, (ACL_USER_OBJ, 4, UNDEFINED), (ACL_GROUP_OBJ, 0, UNDEFINED), (ACL_GROUP, 4, 1234),
            (ACL_MASK, 4, UNDEFINED), (ACL_OTHER, 0, UNDEFINED))
    stranger = write(secrets_dir, "stranger", VALUE, mode=0o400)
    set_acl(stranger, (ACL_USER_OBJ, 4, UNDEFINED), (ACL_USER, 4, 4242), (ACL_GROUP_OBJ, 0, UNDEFINED),
            (ACL_MASK, 4, UNDEFINED), (ACL_OTHER, 0, UNDEFINED))
    provider = FileSecrets(secrets_dir)
    assert "group" in str(refused(provider, "group"))
    assert "uid 4242" in str(refused(provider, "stranger"))


def test_systemd_credentials_needs_the_credentials_directory() -> None:
    with pytest.raises(SecretProviderError, match="CREDENTIALS_DIRECTORY"):
        systemd_credentials({})
