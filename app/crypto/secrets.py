"""Secret providers: one interface, chosen by configuration.

    provider.get("database-url") -> SecretValue        # .reveal() at the moment of use

| kind       | class             | where the value lives                                                  |
| ---------- | ----------------- | ---------------------------------------------------------------------- |
| `keyvault` | `KeyVaultSecrets` | Azure Key Vault, reached with workload identity or managed identity    |
| `files`    | `FileSecrets`     | a directory of owner-only files named after the secret (on-prem)       |
| `systemd`  | `FileSecrets`     | `$CREDENTIALS_DIRECTORY` (`LoadCredential=` / `LoadCredentialEncrypted=`) |
| `env`      | `EnvSecrets`      | `PALISADE_SECRET_<NAME>` variables; development only, refused in production |

Names are the application's (`database-url`, `turnstile-secret`, `alert_webhook_secret`): letters,
digits, `-`, `_`, `.`, starting with a letter or digit, at most 127 characters. Each provider maps
them to its own namespace (Key Vault allows only alphanumerics and dashes, so `_` and `.` become
`-`; files keep the name; variables upper-case it with `_`).

Errors name the secret (and, for files, the path), never a value. Nothing here caches a value:
callers hold a `SecretValue` only as long as they need it.

File rules (`FileSecrets`, and the key files of `app.crypto.kek.LocalKeyWrapper`):

- the directory must be a directory, owned by this process's user or root, not writable by
  group or others;
- a file must be a regular file (no FIFO, device, directory), at most 64 KiB;
- a symlink is followed only when it resolves inside the directory (Kubernetes secret volumes link
  `name -> ..data/name`); one pointing outside is refused;
- the owner must be this process's user or root. Root-owned files are accepted deliberately: root
  can read and replace any file anyway, so trusting it adds no one, and systemd writes credentials
  root-owned with a POSIX ACL that lets the service's user read them. Any other owner is refused;
- nobody but the owner (and this process's user, through an ACL) may read or write it: without an
  ACL that is `mode & 0o077 == 0` (0600 / 0400); with an ACL, no group, other or foreign-user entry
  may grant anything. (An ACL's mask shows in the group bits, which is why a systemd credential
  reads as mode 0440 although no group can read it.)
- one trailing newline (`\\n` or `\\r\\n`) is stripped; an empty value counts as missing.
"""

from __future__ import annotations

import errno
import hmac
import os
import re
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

from app.config import Mode

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "EnvSecrets",
    "FileSecrets",
    "KeyVaultSecrets",
    "MissingSecret",
    "SecretError",
    "SecretProvider",
    "SecretProviderError",
    "SecretValue",
    "UnsafeSecretFile",
    "azure_credential",
    "check_directory",
    "key_vault_secret_name",
    "provider_for",
    "provider_from_settings",
    "read_private_file",
    "systemd_credentials",
]

MASK = "**********"
MAX_SECRET_FILE_BYTES = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,126}")
_VAULT_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")


# --- values and errors ------------------------------------------------------------------------


class SecretValue:
    """A secret that never renders: `repr`, `str`, `format`, logging and tracebacks show a mask.

    `.reveal()` returns the value; call it where the value is used, not earlier. Pickling is refused
    (a pickle would carry the value to wherever the bytes go); copies are the same object.
    Comparison with another SecretValue is constant-time. The name, if given, is not secret and
    appears in `repr` to help debugging.
    """

    __slots__ = ("_value", "_name")

    _value: str
    _name: str | None

    def __init__(self, value: str, *, name: str | None = None) -> None:
        if not isinstance(value, str):
            raise TypeError("a SecretValue holds a str")
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_name", name)

    def reveal(self) -> str:
        return self._value

    @property
    def name(self) -> str | None:
        return self._name

    def __repr__(self) -> str:
        return f"SecretValue(name={self._name!r}, value='{MASK}')" if self._name else f"SecretValue('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return MASK

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]  # equal values must not be findable by hash probing

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a SecretValue cannot be pickled")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: object) -> SecretValue:
        return self


class SecretError(Exception):
    """Base class of everything a secret provider raises. Messages never contain a value."""


class MissingSecret(SecretError, LookupError):
    """The secret does not exist (or is empty) in the configured provider."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.secret_name = name
        super().__init__(f"secret {name!r} is not available" + (f": {detail}" if detail else ""))


class UnsafeSecretFile(SecretError):
    """A secret file or its directory fails the ownership / permission / type checks."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"refusing secret file {self.path}: {reason}")


class SecretProviderError(SecretError):
    """The provider is misconfigured, unreachable or refuses access."""


@runtime_checkable
class SecretProvider(Protocol):
    def get(self, name: str) -> SecretValue:
        """The secret called `name`; raises `MissingSecret(name)` when there is none."""
        ...


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        # Not echoed: a value passed where a name belongs must not end up in a log line.
        raise ValueError(
            "invalid secret name: letters, digits, '-', '_' and '.', starting with a letter or digit, at most 127"
        )
    return name


def _strip_newline(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


# --- files ------------------------------------------------------------------------------------

# POSIX ACL xattr layout (linux/posix_acl_xattr.h): u32 version (2), then (u16 tag, u16 perm, u32 id).
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ACL_ERRNOS = {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _acl_entries(fd: int) -> list[tuple[int, int, int]] | None:
    """The file's access ACL as (tag, perm, id) entries, or None when it has only mode bits."""
    if not hasattr(os, "getxattr"):
        return None
    try:
        raw = os.getxattr(fd, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in _NO_ACL_ERRNOS:
            return None
        raise
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != 2:
        return [(-1, 7, 0)]  # unparseable: reported as exposed
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]


def _exposure(fd: int, st: os.stat_result) -> str | None:
    """Why someone other than the owner (or this process's user) can read or write the file, if so."""
    entries = _acl_entries(fd)
    if entries is None:
        if st.st_mode & 0o077:
            return f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others access it (use 0600 or 0400)"
        return None
    if st.st_mode & 0o007:
        return f"mode {stat.S_IMODE(st.st_mode):04o} lets others access it"
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0o7)
    me = os.geteuid()
    for tag, perm, ident in entries:
        if tag == -1:
            return "it carries an ACL that cannot be parsed"
        if tag in (_ACL_GROUP_OBJ, _ACL_GROUP) and perm & mask:
            return "an ACL entry lets a group access it"
        if tag == _ACL_USER and perm & mask and ident not in (me, st.st_uid):
            return f"an ACL entry lets uid {ident} access it"
        if tag == _ACL_OTHER and perm:
            return "an ACL entry lets others access it"
    return None


def _check_owner(path: str, st: os.stat_result, what: str) -> None:
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UnsafeSecretFile(path, f"{what} is owned by uid {st.st_uid}, not by this process (uid {me}) or root")


def check_directory(directory: str | os.PathLike[str]) -> Path:
    """The directory's real path, after checking it is a directory only its owner can change."""
    path = Path(directory)
    try:
        real = Path(os.path.realpath(path, strict=True))
        st = os.stat(real)
    except FileNotFoundError:
        raise UnsafeSecretFile(path, "the directory does not exist") from None
    except OSError as exc:
        raise UnsafeSecretFile(path, f"cannot inspect the directory ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSecretFile(path, "it is not a directory")
    _check_owner(str(path), st, "the directory")
    if st.st_mode & 0o022:
        raise UnsafeSecretFile(path, f"the directory's mode {stat.S_IMODE(st.st_mode):04o} lets group or others change it")
    return real


def read_private_file(directory: Path, filename: str, *, max_bytes: int = MAX_SECRET_FILE_BYTES) -> bytes | None:
    """Read `directory/filename` after the checks in the module docstring; None if it does not exist.

    `directory` is the real path returned by `check_directory`. The checks run on the opened file
    descriptor (O_NOFOLLOW, fstat), so the file cannot be swapped between check and read.
    """
    shown = directory / filename
    try:
        lst = os.lstat(shown)
    except FileNotFoundError:
        return None
    target = shown
    if stat.S_ISLNK(lst.st_mode):
        resolved = Path(os.path.realpath(shown))
        if os.path.commonpath([resolved, directory]) != str(directory):
            raise UnsafeSecretFile(shown, "it is a symlink pointing outside the directory")
        target = resolved
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(target, flags)
    except FileNotFoundError:
        return None  # a dangling link inside the directory: the secret is not there
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeSecretFile(shown, "it was replaced by a symlink while being opened") from None
        raise UnsafeSecretFile(shown, f"cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeSecretFile(shown, "it is not a regular file")
        _check_owner(str(shown), st, "the file")
        reason = _exposure(fd, st)
        if reason:
            raise UnsafeSecretFile(shown, reason)
        if st.st_size > max_bytes:
            raise UnsafeSecretFile(shown, f"it is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > max_bytes:
                raise UnsafeSecretFile(shown, f"it is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class FileSecrets:
    """On-prem secrets: one owner-only file per secret, named exactly like the secret."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._shown = Path(directory)
        check_directory(directory)  # fail at start-up rather than at the first read

    @property
    def directory(self) -> Path:
        return self._shown

    def get(self, name: str) -> SecretValue:
        _check_name(name)
        # Re-checked on each read: the directory (or where its link points) may have changed since start.
        data = read_private_file(check_directory(self._shown), name)
        if data is None:
            raise MissingSecret(name, f"no file {name!r} in {self._shown}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeSecretFile(self._shown / name, "it is not UTF-8 text") from None
        value = _strip_newline(text)
        if not value:
            raise MissingSecret(name, f"the file {self._shown / name} is empty")
        return SecretValue(value, name=name)

    def __repr__(self) -> str:
        return f"FileSecrets({str(self._shown)!r})"


def systemd_credentials(environ: Mapping[str, str] | None = None) -> FileSecrets:
    """The unit's credentials (`LoadCredential=name:/path`, `LoadCredentialEncrypted=`), read from
    `$CREDENTIALS_DIRECTORY` with the same checks as any secret file."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretProviderError(
            "CREDENTIALS_DIRECTORY is not set: run the service under systemd with LoadCredential= or "
            "LoadCredentialEncrypted= for each secret"
        )
    return FileSecrets(directory)


# --- environment (development only) ------------------------------------------------------------


class EnvSecrets:
    """Development only: `database-url` is read from `PALISADE_SECRET_DATABASE_URL`.

    Environment variables are inherited by every child process and end up in crash reports, so
    constructing this provider in production mode raises.
    """

    def __init__(
        self,
        prefix: str = "PALISADE_SECRET_",
        *,
        mode: Mode | str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if mode is None:
            from app.config import get_settings

            mode = get_settings().mode
        if Mode(mode) is Mode.production:
            raise SecretProviderError(
                "environment-variable secrets are for development only; production mode needs the "
                "keyvault, files or systemd secret provider"
            )
        self._prefix = prefix
        self._environ = os.environ if environ is None else environ

    def variable(self, name: str) -> str:
        return self._prefix + _check_name(name).upper().replace("-", "_").replace(".", "_")

    def get(self, name: str) -> SecretValue:
        variable = self.variable(name)
        value = self._environ.get(variable)
        if not value:
            raise MissingSecret(name, f"environment variable {variable} is not set")
        return SecretValue(value, name=name)

    def __repr__(self) -> str:
        return f"EnvSecrets(prefix={self._prefix!r})"


# --- Azure Key Vault -------------------------------------------------------------------------


def key_vault_secret_name(name: str, prefix: str = "") -> str:
    """The Key Vault secret name for an application name: `alert_webhook_secret` -> `alert-webhook-secret`."""
    mapped = prefix + _check_name(name).lower().replace("_", "-").replace(".", "-")
    if not _VAULT_NAME.fullmatch(mapped):
        raise ValueError(f"secret name {name!r} (with prefix {prefix!r}) does not fit Key Vault's naming rules")
    return mapped


def azure_credential(
    kind: str = "default",
    *,
    mode: Mode | str = Mode.production,
    managed_identity_client_id: str | None = None,
    **kwargs: Any,
) -> TokenCredential:
    """The Azure credential: workload identity or managed identity, never a client secret.

    - `default`: `DefaultAzureCredential` without the interactive browser, the environment
      credential (AZURE_CLIENT_SECRET / certificate paths are client secrets in configuration), the
      shared token cache and the broker. In production mode the developer tools (Azure CLI, azd,
      PowerShell, VS Code) are excluded too, leaving workload identity, then managed identity.
    - `workload`: `WorkloadIdentityCredential` (AZURE_TENANT_ID, AZURE_CLIENT_ID,
      AZURE_FEDERATED_TOKEN_FILE as set by the AKS / Container Apps workload identity webhook).
    - `managed`: `ManagedIdentityCredential` (system-assigned, or the user-assigned client id given).

    `kwargs` go to the credential (azure-core transport options such as `connection_verify`,
    `authority`).
    """
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential, WorkloadIdentityCredential

    if kind == "default":
        production = Mode(mode) is Mode.production
        excludes = {
            "exclude_interactive_browser_credential": True,
            "exclude_environment_credential": True,
            "exclude_shared_token_cache_credential": True,
            "exclude_broker_credential": True,
        }
        if production:
            excludes |= {
                "exclude_cli_credential": True,
                "exclude_developer_cli_credential": True,
                "exclude_powershell_credential": True,
                "exclude_visual_studio_code_credential": True,
            }
        if managed_identity_client_id:
            kwargs["managed_identity_client_id"] = managed_identity_client_id
        return DefaultAzureCredential(**excludes, **kwargs)
    if kind == "workload":
        return WorkloadIdentityCredential(**kwargs)
    if kind == "managed":
        return ManagedIdentityCredential(client_id=managed_identity_client_id, **kwargs)
    raise ValueError(f"unknown Azure credential kind {kind!r} (default, workload or managed)")


def credential_from_settings(settings: Any) -> TokenCredential:
    """The app's own Azure credential, as its settings name it: what Key Vault, the KEK, PostgreSQL
    (Entra sign-in) and the audit checkpoint blobs are all reached with."""
    return azure_credential("default", mode=settings.mode,
                            managed_identity_client_id=settings.azure_managed_identity_client_id)


class KeyVaultSecrets:
    """Secrets from Azure Key Vault (`azure.keyvault.secrets.SecretClient`).

    `client_options` go to the SecretClient (azure-core options: `connection_verify`, timeouts,
    `retry_total`; `verify_challenge_resource` only for tests against a local vault).
    """

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        *,
        name_prefix: str = "",
        **client_options: Any,
    ) -> None:
        from azure.keyvault.secrets import SecretClient

        if not vault_url.lower().startswith("https://"):
            raise SecretProviderError("the Key Vault URL must use https")
        if name_prefix and not _VAULT_NAME.fullmatch(name_prefix):
            raise ValueError("the Key Vault secret name prefix allows only letters, digits and dashes")
        self._vault_url = vault_url.rstrip("/")
        self._prefix = name_prefix
        self._client = SecretClient(vault_url=self._vault_url, credential=credential, **client_options)

    @property
    def vault_url(self) -> str:
        return self._vault_url

    def vault_name(self, name: str) -> str:
        return key_vault_secret_name(name, self._prefix)

    def get(self, name: str) -> SecretValue:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )

        vault_name = self.vault_name(name)
        try:
            secret = self._client.get_secret(vault_name)
        except ResourceNotFoundError:
            raise MissingSecret(name, f"no secret {vault_name!r} in {self._vault_url}") from None
        except ClientAuthenticationError as exc:
            # Raised by the credential (token request) and for 401s the challenge flow cannot resolve.
            raise SecretProviderError(
                f"could not authenticate to {self._vault_url} for secret {name!r}: {type(exc).__name__}"
            ) from exc
        except HttpResponseError as exc:
            code = exc.error.code if exc.error else None
            raise SecretProviderError(
                f"Key Vault refused secret {name!r} ({vault_name!r}): HTTP {exc.status_code}" + (f" {code}" if code else "")
            ) from exc
        except ServiceRequestError as exc:
            raise SecretProviderError(f"Key Vault {self._vault_url} is unreachable: {type(exc).__name__}") from exc
        except ValueError as exc:
            # The SDK's challenge checks: e.g. a challenge whose resource does not match the vault's host.
            raise SecretProviderError(f"Key Vault {self._vault_url} was refused for secret {name!r}: {exc}") from exc
        if not secret.value:
            raise MissingSecret(name, f"the secret {vault_name!r} in {self._vault_url} is empty")
        return SecretValue(secret.value, name=name)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"KeyVaultSecrets({self._vault_url!r})"


# --- configuration -------------------------------------------------------------------------


PROVIDER_KINDS = ("keyvault", "files", "systemd", "env")


def provider_from_settings(
    kind: str,
    *,
    mode: Mode | str = Mode.development,
    key_vault_url: str | None = None,
    secrets_dir: str | os.PathLike[str] | None = None,
    env_prefix: str = "PALISADE_SECRET_",
    credential: TokenCredential | None = None,
    azure_credential_kind: str = "default",
    managed_identity_client_id: str | None = None,
    key_vault_name_prefix: str = "",
    client_options: Mapping[str, Any] | None = None,
) -> SecretProvider:
    """The configured provider: `keyvault` | `files` | `systemd` | `env` (development only).

    Typical wiring: `provider_from_settings(s.secret_provider, mode=s.mode,
    key_vault_url=s.key_vault_url, secrets_dir=s.secrets_dir)`. Unknown keywords raise TypeError,
    so a misspelt setting cannot be silently ignored.
    """
    mode = Mode(mode)
    if kind == "keyvault":
        if not key_vault_url:
            raise SecretProviderError("the keyvault secret provider needs PALISADE_KEY_VAULT_URL")
        if credential is None:
            credential = azure_credential(
                azure_credential_kind, mode=mode, managed_identity_client_id=managed_identity_client_id
            )
        return KeyVaultSecrets(key_vault_url, credential, name_prefix=key_vault_name_prefix, **dict(client_options or {}))
    if kind == "files":
        if not secrets_dir:
            raise SecretProviderError("the files secret provider needs PALISADE_SECRETS_DIR")
        return FileSecrets(secrets_dir)
    if kind == "systemd":
        return systemd_credentials()
    if kind == "env":
        return EnvSecrets(env_prefix, mode=mode)
    raise SecretProviderError(f"unknown secret provider {kind!r}: expected one of {', '.join(PROVIDER_KINDS)}")


def provider_for(settings: Any) -> SecretProvider:
    """`provider_from_settings` fed from a Settings object (fields `secret_provider`,
    `key_vault_url`, `secrets_dir`, `azure_managed_identity_client_id`, `mode`)."""
    return provider_from_settings(
        getattr(settings, "secret_provider", "env"),
        mode=settings.mode,
        key_vault_url=getattr(settings, "key_vault_url", None),
        secrets_dir=getattr(settings, "secrets_dir", None),
        managed_identity_client_id=getattr(settings, "azure_managed_identity_client_id", None),
    )
