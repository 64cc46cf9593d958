"""Signed checkpoints of the audit chains, written outside PostgreSQL: what anchors the chains.

Why (issue 16): the hash chain proves that nobody edited an event without re-chaining the ones
after it, but whoever holds the schema owner's credentials can do exactly that, head included, and
the chain verifies again. A checkpoint records, per chain, the last `seq`, its `hash` and the time,
signed with a key that no database role can read (an Ed25519 key file, or an EC key in Key Vault),
in a sink the database roles cannot write. `palisade audit verify` then checks each chain against every checkpoint it reads: an event
at or before a checkpointed `seq` that was rewritten (and re-chained) no longer hashes to the
checkpoint's value, and a chain cut back below it is shorter than the checkpoint says.

- The record, one JSON line: `{"v":1,"tenant_id":…,"seq":…,"hash":…,"at":…,"key":…,"sig":…}`.
  `sig` is the signature (base64: Ed25519, or ES256 as raw r || s) over `DOMAIN` followed by the
  line's other fields as sorted compact JSON; `key` names the public key (the first 16 bytes of
  SHA-256, hex, over an Ed25519 key's raw form or an EC key's SubjectPublicKeyInfo), so a verifier
  with several public keys (rotation) knows which one to use.
- The signing key (`Signer`): a PEM (PKCS#8) Ed25519 private key in a file only the service's user
  can read, refused otherwise, with the same checks as the KEK files (`app.crypto.secrets`); or
  (`KeyVaultSigner`) an EC P-256 key in Azure Key Vault that signs in the vault, so the private key
  never reaches this process. The verifier needs only the public key(s).
- Sinks are pluggable (`CheckpointSink`): `FileSink` appends to one file per UTC day in a
  directory (O_APPEND, one write per batch, fsync); forwarding it off-host is the operator's part.
  `AzureBlobSink` appends to one append blob per UTC day in a container (`append_block`, one
  block per batch), signed in with the app's Azure credential (workload or managed identity);
  the container's immutability policy, not this code, is what stops anyone rewriting it on Azure.
- `Checkpointer` takes checkpoints every `interval` seconds in a background thread of the app, and
  once more when it stops; `palisade audit checkpoint` takes them on demand. A chain whose head has
  not moved since this process last checkpointed it is skipped.

What is anchored is what was checkpointed: events appended after the last checkpoint are not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from sqlalchemy.orm import Session, sessionmaker

from app.audit import repository as repo
from app.crypto.secrets import UnsafeSecretFile, check_directory, read_private_file
from app.db.session import DbContext, apply_context

log = logging.getLogger("palisade.audit")

DOMAIN = b"palisade audit checkpoint v1\n"
VERSION = 1
_HASH = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")
MAX_KEY_FILE_BYTES = 4096
T = TypeVar("T")


class CheckpointError(Exception):
    """A key or sink problem; messages name files and key ids, never key material."""


@dataclass(frozen=True)
class Checkpoint:
    tenant_id: uuid.UUID
    seq: int
    hash: str
    at: datetime
    key: str

    def body(self) -> dict[str, object]:
        return {"v": VERSION, "tenant_id": str(self.tenant_id), "seq": self.seq, "hash": self.hash,
                "at": self.at.astimezone(UTC).isoformat(timespec="microseconds"), "key": self.key}


@dataclass(frozen=True)
class BadLine:
    """A line of the sink that is not a checkpoint signed by a known key: someone else wrote it."""

    source: str
    line: int
    reason: str


def _signed_bytes(body: Mapping[str, object]) -> bytes:
    return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# Ed25519 (a key file) or ECDSA P-256 with SHA-256, ES256 (a Key Vault key).
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def key_id(public_key: PublicKey) -> str:
    """The first 16 bytes of SHA-256, hex, over the Ed25519 key's raw form or the EC key's SubjectPublicKeyInfo."""
    if isinstance(public_key, Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(raw).hexdigest()[:32]


def _checked_public_key(key: object, shown: object) -> PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise CheckpointError(f"{shown} holds a public key that is neither Ed25519 nor EC P-256")


def _verify_signature(public: PublicKey, signature: bytes, data: bytes) -> None:
    """Raises InvalidSignature unless `signature` is the key's over `data` (ES256: raw r || s, as JWS and Key Vault give it)."""
    if isinstance(public, Ed25519PublicKey):
        public.verify(signature, data)
        return
    if len(signature) != 64:
        raise InvalidSignature
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


class _LineSigner:
    """Turns a chain head into a signed checkpoint line; subclasses say how bytes are signed."""

    @property
    def key_id(self) -> str:
        raise NotImplementedError

    def sign(self, data: bytes) -> bytes:
        raise NotImplementedError

    def line(self, tenant_id: uuid.UUID, seq: int, hash_: str, at: datetime) -> tuple[Checkpoint, bytes]:
        checkpoint = Checkpoint(tenant_id, seq, hash_, at, self.key_id)
        body = checkpoint.body()
        signature = base64.b64encode(self.sign(_signed_bytes(body))).decode()
        return checkpoint, json.dumps({**body, "sig": signature}, sort_keys=True, separators=(",", ":")).encode() + b"\n"


class Signer(_LineSigner):
    """Signs checkpoints with an Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self._key_id = key_id(self.public_key)

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_keys(self) -> dict[str, PublicKey]:
        return {self.key_id: self.public_key}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Signer:
        """The key in `path`, after the owner-only checks of the secret files."""
        shown = Path(path)
        data = read_private_file(check_directory(shown.parent), shown.name, max_bytes=MAX_KEY_FILE_BYTES)
        if data is None:
            raise CheckpointError(f"no checkpoint signing key at {shown}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CheckpointError(f"{shown} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(f"{shown} is not an Ed25519 key")
        return cls(key)


class KeyVaultSigner(_LineSigner):
    """Signs checkpoints with an EC P-256 key in Azure Key Vault (ES256): the private key never leaves the vault.

    A versionless key URL is resolved to the key's current version when this process first signs,
    and that version signs until the process restarts; `public_keys` returns every version's, so
    lines signed before a rotation keep verifying. `client_options` go to the Key Vault clients
    (azure-core options; `verify_challenge_resource` only for tests against a local vault).
    """

    def __init__(self, key_url: str, credential: object, **client_options: object) -> None:
        from azure.keyvault.keys import KeyClient

        from app.crypto.kek import split_key_url

        try:
            vault_url, self._name, self._version = split_key_url(key_url)
        except ValueError as exc:
            raise CheckpointError(f"PALISADE_AUDIT_CHECKPOINT_KEY_URL: {exc}") from None
        self.key_url = f"{vault_url}/keys/{self._name}"
        self._credential, self._options = credential, client_options
        self._keys = KeyClient(vault_url=vault_url, credential=credential, **client_options)
        self._crypto: object | None = None
        self._key_id: str | None = None
        self._lock = threading.Lock()

    def _call(self, doing: str, operation: Callable[[], T]) -> T:
        from azure.core.exceptions import AzureError

        try:
            return operation()
        except AzureError as exc:
            status = getattr(exc, "status_code", None)
            error = getattr(exc, "error", None)
            code = getattr(error, "code", None)
            detail = f"HTTP {status}" + (f" {code}" if code else "") if status else type(exc).__name__
            raise CheckpointError(f"{doing} with {self.key_url} failed: {detail}") from None
        except ValueError as exc:  # the SDK's own checks, e.g. a challenge for another resource
            raise CheckpointError(f"{doing} with {self.key_url} was refused: {exc}") from None

    def _public_key(self, version: str | None) -> tuple[str, PublicKey]:
        key = self._call("reading the checkpoint key", lambda: self._keys.get_key(self._name, version))
        jwk = key.key
        if jwk.kty not in ("EC", "EC-HSM") or jwk.crv != "P-256" or not jwk.x or not jwk.y:
            raise CheckpointError(f"{self.key_url} is not an EC P-256 key (ES256)")
        numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1())
        return str(key.id), numbers.public_key()

    def _resolve(self) -> tuple[object, str]:
        from azure.keyvault.keys.crypto import CryptographyClient

        with self._lock:
            if self._crypto is None or self._key_id is None:
                kid, public = self._public_key(self._version)
                self._crypto = CryptographyClient(kid, self._credential, **self._options)
                self._key_id = key_id(public)
            return self._crypto, self._key_id

    @property
    def key_id(self) -> str:
        return self._resolve()[1]

    def sign(self, data: bytes) -> bytes:
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        client, _ = self._resolve()
        digest = hashlib.sha256(data).digest()
        result = self._call("signing a checkpoint", lambda: client.sign(SignatureAlgorithm.es256, digest))  # type: ignore[attr-defined]
        return bytes(result.signature)

    def public_keys(self) -> dict[str, PublicKey]:
        """Every version's public key, by key id (what verify checks lines against without a public key file)."""
        versions = self._call("listing the checkpoint key's versions",
                              lambda: [v.version for v in self._keys.list_properties_of_key_versions(self._name)])
        keys: dict[str, PublicKey] = {}
        for version in versions:
            if version:
                public = self._public_key(version)[1]
                keys[key_id(public)] = public
        return keys


_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def public_keys_from_file(path: str | os.PathLike[str]) -> dict[str, PublicKey]:
    """Every PEM public key in the file (one per key in use or retired), by key id."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint public key file {path}: {exc.strerror}") from None
    keys: dict[str, PublicKey] = {}
    for block in _PEM_PUBLIC.findall(data):
        key = _checked_public_key(serialization.load_pem_public_key(block), path)
        keys[key_id(key)] = key
    if not keys:
        raise CheckpointError(f"{path} holds no PEM public key")
    return keys


def parse_line(raw: bytes, keys: Mapping[str, PublicKey]) -> Checkpoint | str:
    """The checkpoint on this line, or why it is not a valid one."""
    try:
        record = json.loads(raw)
    except ValueError:
        return "not a JSON checkpoint record"
    if not isinstance(record, dict) or set(record) != {"v", "tenant_id", "seq", "hash", "at", "key", "sig"}:
        return "not a checkpoint record (unexpected fields)"
    sig = record.pop("sig")
    if record["v"] != VERSION or not isinstance(record["key"], str) or not _KEY_ID.fullmatch(record["key"]):
        return "unknown record version or key id"
    public = keys.get(record["key"])
    if public is None:
        return f"signed by key {record['key']}, which is not among the public keys given"
    try:
        _verify_signature(public, base64.b64decode(sig, validate=True), _signed_bytes(record))
    except (InvalidSignature, binascii.Error, TypeError, ValueError):
        return f"its signature does not verify under key {record['key']}"
    try:
        checkpoint = Checkpoint(uuid.UUID(record["tenant_id"]), int(record["seq"]), str(record["hash"]),
                                datetime.fromisoformat(record["at"]), record["key"])
    except (ValueError, TypeError):
        return "a signed record with malformed fields"
    if type(record["seq"]) is not int or checkpoint.seq < 1 or not _HASH.fullmatch(checkpoint.hash):
        return "a signed record with malformed fields"
    return checkpoint


# --- sinks ------------------------------------------------------------------------------------


class CheckpointSink(Protocol):
    """Where checkpoints go: append-only as far as this process is concerned, readable for verify."""

    def append(self, lines: Sequence[bytes]) -> None:
        """Append these lines (each ends with a newline) as one write."""
        ...

    def read(self) -> Iterator[tuple[str, int, bytes]]:
        """Every line written so far: (source, line number, bytes)."""
        ...


_DAY_FILE = re.compile(r"checkpoints-\d{4}-\d{2}-\d{2}\.jsonl")


class FileSink:
    """`directory/checkpoints-<UTC date>.jsonl`, appended to (O_APPEND), never rewritten by this process."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"the checkpoint directory {self.directory} does not exist")

    def append(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        path = self.directory / f"checkpoints-{datetime.now(UTC):%Y-%m-%d}.jsonl"
        data = b"".join(lines)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            written = os.write(fd, data)  # one write: concurrent writers' batches never interleave
            if written != len(data):
                raise CheckpointError(f"short write to {path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> Iterator[tuple[str, int, bytes]]:
        for path in sorted(p for p in self.directory.iterdir() if _DAY_FILE.fullmatch(p.name)):
            with path.open("rb") as f:
                for number, raw in enumerate(f, start=1):
                    if raw.strip():
                        yield str(path), number, raw


# One append_block carries at most 4 MiB (service versions before 2022-11-02 and Azurite); a
# larger batch goes in several blocks, split between lines, so no line is ever cut in two.
MAX_BLOCK_BYTES = 4 * 1024 * 1024


def _blocks(lines: Sequence[bytes]) -> Iterator[bytes]:
    block = b""
    for line in lines:
        if block and len(block) + len(line) > MAX_BLOCK_BYTES:
            yield block
            block = b""
        block += line
    if block:
        yield block


class AzureBlobSink:
    """`<container>/checkpoints-<UTC date>.jsonl` append blobs, only ever appended to (`append_block`).

    A day's blob is created only if no blob of that name exists (`If-None-Match: *`), so this
    process can never replace one; on Azure the container's time-based immutability policy (with
    protected append writes) refuses any overwrite or delete from anyone, this process included.
    """

    def __init__(self, account_url: str, container: str, credential: object, **client_options: object) -> None:
        from azure.storage.blob import ContainerClient

        if not account_url.lower().startswith("https://"):
            raise CheckpointError("the azure-blob checkpoint sink needs an https account URL")
        self._client = ContainerClient(account_url.rstrip("/"), container, credential=credential, **client_options)
        self.url = self._client.url

    def _failed(self, doing: str, exc: Exception) -> CheckpointError:
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "error_code", None)
        detail = f"HTTP {status}" + (f" {code}" if code else "") if status else type(exc).__name__
        return CheckpointError(f"{doing} in {self.url} failed: {detail}")

    def append(self, lines: Sequence[bytes]) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        if not lines:
            return
        name = f"checkpoints-{datetime.now(UTC):%Y-%m-%d}.jsonl"
        blob = self._client.get_blob_client(name)
        for block in _blocks(lines):
            try:
                try:
                    blob.append_block(block)  # one block: concurrent writers' batches never interleave
                except ResourceNotFoundError:
                    try:
                        blob.create_append_blob(if_none_match="*")  # never over an existing blob
                    except ResourceExistsError:
                        pass  # another replica created it first
                    blob.append_block(block)
            except AzureError as exc:
                raise self._failed(f"appending to {name}", exc) from None

    def read(self) -> Iterator[tuple[str, int, bytes]]:
        from azure.core.exceptions import AzureError

        try:
            names = sorted(b.name for b in self._client.list_blobs(name_starts_with="checkpoints-")
                           if _DAY_FILE.fullmatch(b.name))
            for name in names:
                data = self._client.get_blob_client(name).download_blob().readall()
                for number, raw in enumerate(data.splitlines(keepends=True), start=1):
                    if raw.strip():
                        yield f"{self.url}/{name}", number, raw
        except AzureError as exc:
            raise self._failed("reading the checkpoints", exc) from None


def sink_from_settings(settings: object) -> CheckpointSink | None:
    kind = getattr(settings, "audit_checkpoint_sink", "none")
    if kind == "file":
        directory = getattr(settings, "audit_checkpoint_dir", None)
        if not directory:
            raise CheckpointError("the file checkpoint sink needs PALISADE_AUDIT_CHECKPOINT_DIR")
        return FileSink(directory)
    if kind == "azure-blob":
        from app.crypto.secrets import credential_from_settings

        account_url = getattr(settings, "audit_checkpoint_blob_account_url", None)
        container = getattr(settings, "audit_checkpoint_blob_container", None)
        if not account_url or not container:
            raise CheckpointError("the azure-blob checkpoint sink needs PALISADE_AUDIT_CHECKPOINT_BLOB_ACCOUNT_URL "
                                  "and PALISADE_AUDIT_CHECKPOINT_BLOB_CONTAINER")
        return AzureBlobSink(account_url, container, credential_from_settings(settings))
    return None


def read_checkpoints(sink: CheckpointSink, keys: Mapping[str, PublicKey]) -> tuple[dict[uuid.UUID, list[Checkpoint]], list[BadLine]]:
    """Every valid checkpoint by chain (oldest seq first), and every line that is not one."""
    found: dict[uuid.UUID, list[Checkpoint]] = {}
    bad: list[BadLine] = []
    for source, number, raw in sink.read():
        parsed = parse_line(raw, keys)
        if isinstance(parsed, str):
            bad.append(BadLine(source, number, parsed))
        else:
            found.setdefault(parsed.tenant_id, []).append(parsed)
    for checkpoints in found.values():
        checkpoints.sort(key=lambda c: (c.seq, c.at))
    return found, bad


# --- taking checkpoints -----------------------------------------------------------------------


def read_heads(sessions: sessionmaker[Session], tenant_ids: Iterable[uuid.UUID]) -> list[tuple[uuid.UUID, int, str]]:
    """Each chain's committed head (seq, hash), as the app role, in one transaction."""
    heads = []
    with sessions() as session, session.begin():
        for tenant_id in tenant_ids:
            apply_context(session, DbContext(tenant_id=tenant_id))
            head = repo.head(session, tenant_id)
            if head is not None and head[0] > 0:
                heads.append((tenant_id, head[0], head[1]))
    return heads


def take_checkpoints(sessions: sessionmaker[Session], signer: _LineSigner, sink: CheckpointSink,
                     tenant_ids: Sequence[uuid.UUID] | None = None, *,
                     skip: Mapping[uuid.UUID, int] | None = None) -> list[Checkpoint]:
    """Sign and append a checkpoint of every chain (or those given) whose head is not at `skip`'s seq."""
    from app.audit.verify import all_chains

    heads = read_heads(sessions, tenant_ids or all_chains(sessions))
    now = datetime.now(UTC)
    signed = [signer.line(t, seq, hash_, now) for t, seq, hash_ in heads if (skip or {}).get(t) != seq]
    sink.append([line for _, line in signed])
    return [checkpoint for checkpoint, _ in signed]


class Checkpointer:
    """Takes checkpoints every `interval` seconds in a background thread, and once more on stop()."""

    def __init__(self, sessions: sessionmaker[Session], signer: _LineSigner, sink: CheckpointSink, *, interval: float) -> None:
        self._sessions, self._signer, self._sink, self._interval = sessions, signer, sink, interval
        self._last: dict[uuid.UUID, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run_once(self) -> list[Checkpoint]:
        """Checkpoint every chain whose head moved since this process last checkpointed it."""
        with self._lock:
            taken = take_checkpoints(self._sessions, self._signer, self._sink, skip=dict(self._last))
            for checkpoint in taken:
                self._last[checkpoint.tenant_id] = checkpoint.seq
            return taken

    def _tick(self) -> None:
        try:
            self.run_once()
        except Exception:  # the database or the sink is away: the next tick tries again
            log.exception("audit_checkpoint_failed")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def start(self) -> Checkpointer:
        self._thread = threading.Thread(target=self._run, name="audit-checkpointer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._tick()  # what was appended since the last tick is anchored too


def signer_from_settings(settings: object) -> Signer | KeyVaultSigner | None:
    """The Ed25519 key file's signer, or the Key Vault key's (ES256); never both."""
    path = getattr(settings, "audit_checkpoint_key_file", None)
    url = getattr(settings, "audit_checkpoint_key_url", None)
    if path and url:
        raise CheckpointError("set PALISADE_AUDIT_CHECKPOINT_KEY_FILE or PALISADE_AUDIT_CHECKPOINT_KEY_URL, not both")
    if url:
        from app.crypto.secrets import credential_from_settings

        return KeyVaultSigner(url, credential_from_settings(settings))
    return Signer.from_file(path) if path else None


def verifier_keys(settings: object) -> dict[str, PublicKey]:
    """The public keys verify checks signatures with: the public key file, else the signing key's own
    (every version's, for a Key Vault key)."""
    path = getattr(settings, "audit_checkpoint_public_key_file", None)
    if path:
        return public_keys_from_file(path)
    signer = signer_from_settings(settings)
    if signer is None:
        raise CheckpointError("verifying checkpoints needs PALISADE_AUDIT_CHECKPOINT_PUBLIC_KEY_FILE (or the signing key)")
    return signer.public_keys()


__all__ = ["AzureBlobSink", "BadLine", "Checkpoint", "CheckpointError", "CheckpointSink", "Checkpointer", "FileSink",
           "KeyVaultSigner", "Signer",
           "UnsafeSecretFile", "public_keys_from_file", "read_checkpoints", "take_checkpoints"]
