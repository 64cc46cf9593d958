"""The key-encryption key (KEK): wraps and unwraps per-tenant data keys; its secret half never leaves the vault.

    wrapper.wrap(dek)              -> (version, wrapped)   # always under the CURRENT version
    wrapper.unwrap(version, wrapped) -> dek                # any version still enabled

Store `version` next to `wrapped`. Rotation adds a version; old versions keep unwrapping until they
are disabled (Key Vault) or their file is removed (local), which an operator does only after every
data key has been rewrapped under the current version.

- `KeyVaultKeyWrapper`: an RSA key in Azure Key Vault (or Managed HSM), RSA-OAEP-256, through
  `azure.keyvault.keys.crypto.CryptographyClient`. Unwrapping is a Key Vault `unwrapKey` operation
  (the private key is never exported). Wrapping is a public-key operation: when the identity may
  read the key's public half (`keys/get`, e.g. the "Key Vault Crypto Service Encryption User"
  role), the SDK computes it locally from that public key; without `keys/get` it calls `wrapKey`.
  Either way the result is the same RSA-OAEP-256 ciphertext and the private key stays in the vault.
  The current version comes from `get_key(name)`, cached for `version_cache_seconds`.
- `LocalKeyWrapper`: on-prem, 256-bit keys in owner-only files `kek-<n>.key` (n = 1, 2, ...; the
  highest is current), AES key wrap with padding (RFC 5649, `cryptography`'s keywrap). The files
  obey the same ownership / permission / type checks as `app.crypto.secrets.FileSecrets`.
  `LocalKeyWrapper.create_version(directory)` adds the next version (`palisade keys rotate`).
- An HSM (PKCS#11, a KMIP server, another cloud's KMS) is any class implementing `KeyWrapper`.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from app.crypto.secrets import UnsafeSecretFile, check_directory, read_private_file

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.keys import KeyVaultKey
    from azure.keyvault.keys.crypto import CryptographyClient

__all__ = [
    "KeyVaultKeyWrapper",
    "KeyWrapError",
    "KeyWrapper",
    "LocalKeyWrapper",
    "UnknownKeyVersion",
    "UnwrapFailed",
]

DEK_SIZES = (16, 24, 32)


@runtime_checkable
class KeyWrapper(Protocol):
    def current_version(self) -> str:
        """The version new data keys are wrapped under (Key Vault key version / local key number)."""
        ...

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        """Wrap a data key under the current version: (version, wrapped)."""
        ...

    def unwrap(self, version: str, wrapped: bytes) -> bytes:
        """Unwrap a data key wrapped under `version`, if that version is still enabled."""
        ...


class KeyWrapError(Exception):
    """Base class of the wrappers' errors. Messages name versions, never key material."""


class UnknownKeyVersion(KeyWrapError, LookupError):
    """The version does not exist, is disabled, or this identity may not use it."""

    def __init__(self, version: str, detail: str = "") -> None:
        self.version = version
        super().__init__(f"key-encryption key version {version!r} is not available" + (f": {detail}" if detail else ""))


class UnwrapFailed(KeyWrapError):
    """The wrapped key does not verify under the version given (corrupt, or another key's)."""


def _check_dek(dek: bytes) -> bytes:
    if not isinstance(dek, bytes | bytearray) or len(dek) not in DEK_SIZES:
        raise ValueError(f"a data key is {', '.join(map(str, DEK_SIZES))} bytes")
    return bytes(dek)


# --- Azure Key Vault ---------------------------------------------------------------------------

_KEY_PATH = re.compile(r"/keys/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Za-z]{1,64}))?/?")
_VAULT_VERSION = re.compile(r"[0-9A-Za-z]{1,64}")


def split_key_url(key_id_or_url: str) -> tuple[str, str, str | None]:
    """`https://<vault>/keys/<name>[/<version>]` as (vault URL, key name, version or None)."""
    from urllib.parse import urlsplit

    parts = urlsplit(key_id_or_url)
    match = _KEY_PATH.fullmatch(parts.path)
    if parts.scheme != "https" or not parts.netloc or not match or parts.query or parts.fragment:
        raise ValueError("the key must be given as https://<vault>/keys/<name>[/<version>]")
    return f"https://{parts.netloc}", match["name"], match["version"]


class KeyVaultKeyWrapper:
    """A Key Vault RSA key wraps data keys with RSA-OAEP-256.

    `key_id_or_url`: `https://<vault>.vault.azure.net/keys/<name>` follows the latest version;
    with `/<version>` appended, that version stays current (pinned) until reconfigured.
    `client_options` go to the KeyClient and CryptographyClients (azure-core options such as
    `connection_verify`; `verify_challenge_resource` only for tests against a local vault).
    """

    algorithm = "RSA-OAEP-256"

    def __init__(
        self,
        key_id_or_url: str,
        credential: TokenCredential,
        *,
        version_cache_seconds: float = 300.0,
        **client_options: Any,
    ) -> None:
        from azure.keyvault.keys import KeyClient

        self._vault_url, self._name, self._pinned = split_key_url(key_id_or_url)
        self._credential = credential
        self._options = client_options
        self._cache_seconds = version_cache_seconds
        self._keys = KeyClient(vault_url=self._vault_url, credential=credential, **client_options)
        self._lock = threading.Lock()
        self._current: tuple[float, KeyVaultKey] | None = None
        self._clients: dict[str, CryptographyClient] = {}

    @property
    def key_url(self) -> str:
        return f"{self._vault_url}/keys/{self._name}"

    def _current_key(self) -> KeyVaultKey:
        now = time.monotonic()
        with self._lock:
            if self._current and now - self._current[0] < self._cache_seconds:
                return self._current[1]
        key = self._call(lambda: self._keys.get_key(self._name, self._pinned), self._pinned or "latest")
        with self._lock:
            self._current = (now, key)
        return key

    def current_version(self) -> str:
        if self._pinned:
            return self._pinned
        version = self._current_key().properties.version
        if not version:
            raise KeyWrapError(f"Key Vault returned key {self._name!r} without a version")
        return version

    def _crypto(self, version: str, key: KeyVaultKey | None = None) -> CryptographyClient:
        from azure.keyvault.keys.crypto import CryptographyClient

        with self._lock:
            client = self._clients.get(version)
            if client is None:
                source: KeyVaultKey | str = key if key is not None else f"{self.key_url}/{version}"
                client = CryptographyClient(source, self._credential, **self._options)
                self._clients[version] = client
            return client

    def _call(self, operation: Any, version: str) -> Any:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )

        try:
            return operation()
        except ResourceNotFoundError:
            raise UnknownKeyVersion(version, f"no such key version of {self.key_url}") from None
        except ClientAuthenticationError as exc:
            raise KeyWrapError(f"could not authenticate to {self._vault_url}: {type(exc).__name__}") from exc
        except HttpResponseError as exc:
            code = exc.error.code if exc.error else None
            detail = f"HTTP {exc.status_code}" + (f" {code}" if code else "")
            if exc.status_code == 403:
                raise UnknownKeyVersion(version, f"Key Vault refused it (disabled, or not permitted): {detail}") from exc
            if exc.status_code == 400:
                raise UnwrapFailed(f"Key Vault rejected the operation under version {version!r}: {detail}") from exc
            raise KeyWrapError(f"Key Vault operation under version {version!r} failed: {detail}") from exc
        except ServiceRequestError as exc:
            raise KeyWrapError(f"Key Vault {self._vault_url} is unreachable: {type(exc).__name__}") from exc
        except ValueError as exc:
            # The SDK's own checks, e.g. a challenge whose resource does not match the vault's host.
            raise KeyWrapError(f"Key Vault {self._vault_url} was refused: {exc}") from exc

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        dek = _check_dek(dek)
        key = self._current_key()
        version = key.properties.version or ""
        if key.properties.enabled is False:
            raise UnknownKeyVersion(version, "the current key version is disabled")
        client = self._crypto(version, key)
        result = self._call(lambda: client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek), version)
        return version, result.encrypted_key

    def unwrap(self, version: str, wrapped: bytes) -> bytes:
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        if not isinstance(version, str) or not _VAULT_VERSION.fullmatch(version):
            raise UnknownKeyVersion(str(version)[:64], "not a Key Vault key version")
        client = self._crypto(version)
        result = self._call(lambda: client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(wrapped)), version)
        return result.key

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        self._keys.close()

    def __repr__(self) -> str:
        return f"KeyVaultKeyWrapper({self.key_url!r})"


# --- local files (on-prem) ---------------------------------------------------------------------

_KEK_FILE = re.compile(r"kek-(?P<version>[1-9][0-9]{0,8})\.key")
KEK_BYTES = 32


class LocalKeyWrapper:
    """AES-256 key-encryption keys in `directory/kek-<n>.key` (32 raw bytes, owner-only); highest n is current.

    The directory is listed on each `current_version()`, so a version added by
    `palisade keys rotate` is used without a restart. With several hosts, copy the new file to
    every host before any of them wraps with it (Ansible's `copy` does this in one play); a host
    without it cannot unwrap data keys wrapped under it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._shown = Path(directory)
        check_directory(self._shown)

    @property
    def directory(self) -> Path:
        return self._shown

    def versions(self) -> list[str]:
        """The versions present, oldest first."""
        real = check_directory(self._shown)
        with os.scandir(real) as entries:
            names = [entry.name for entry in entries]
        found: list[int] = []
        for name in names:
            if name.startswith("kek-") and name.endswith(".key"):
                match = _KEK_FILE.fullmatch(name)
                if not match:
                    raise UnsafeSecretFile(self._shown / name, "not a key file name: expected kek-<n>.key, n = 1, 2, ...")
                found.append(int(match["version"]))
        return [str(v) for v in sorted(found)]

    def current_version(self) -> str:
        versions = self.versions()
        if not versions:
            raise KeyWrapError(f"no key-encryption key in {self._shown}: create one with `palisade keys rotate`")
        return versions[-1]

    def _key(self, version: str) -> bytes:
        if not isinstance(version, str) or not _KEK_FILE.fullmatch(f"kek-{version}.key"):
            raise UnknownKeyVersion(str(version)[:64], "not a local key version")
        name = f"kek-{version}.key"
        data = read_private_file(check_directory(self._shown), name, max_bytes=KEK_BYTES)
        if data is None:
            raise UnknownKeyVersion(version, f"no file {name} in {self._shown}")
        if len(data) != KEK_BYTES:
            raise UnsafeSecretFile(self._shown / name, f"a key file holds exactly {KEK_BYTES} random bytes")
        return data

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        dek = _check_dek(dek)
        version = self.current_version()
        return version, aes_key_wrap_with_padding(self._key(version), dek)

    def unwrap(self, version: str, wrapped: bytes) -> bytes:
        key = self._key(version)
        try:
            return aes_key_unwrap_with_padding(key, bytes(wrapped))
        except InvalidUnwrap:
            raise UnwrapFailed(f"the wrapped key does not verify under local version {version!r}") from None

    @staticmethod
    def create_version(directory: str | os.PathLike[str]) -> str:
        """Write the next version (`kek-<n+1>.key`, 32 random bytes, mode 0600) and return it."""
        shown = Path(directory)
        real = check_directory(shown)
        wrapper = LocalKeyWrapper(shown)
        versions = wrapper.versions()
        version = int(versions[-1]) + 1 if versions else 1
        while True:
            path = real / f"kek-{version}.key"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                version += 1  # another rotation won the race: take the next number
                continue
            break
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            key = os.urandom(KEK_BYTES)
            written = 0
            while written < KEK_BYTES:
                written += os.write(fd, key[written:])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        try:
            dir_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:  # pragma: no cover - platform without directory fds
            if exc.errno not in (errno.EINVAL, errno.EACCES):
                raise
        else:
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return str(version)

    def __repr__(self) -> str:
        return f"LocalKeyWrapper({str(self._shown)!r})"


def key_wrapper_from_settings(settings: Any) -> KeyWrapper | None:
    """The configured key-encryption key, or None when none is configured (credentials then 503)."""
    if settings.kek_provider == "keyvault":
        if not settings.kek_key_url:
            return None
        from app.crypto.secrets import credential_from_settings

        return KeyVaultKeyWrapper(settings.kek_key_url, credential_from_settings(settings))
    return LocalKeyWrapper(settings.kek_dir) if settings.kek_dir else None
