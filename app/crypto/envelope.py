"""Envelope encryption of one field value: AES-256-GCM under a tenant's data key, bound to its row.

Ciphertext format (version 1), all integers big-endian:

    0x01 | dek_version (uint32) | nonce (12 random bytes) | AES-GCM ciphertext + 16-byte tag

The associated data (authenticated, not stored) binds the ciphertext to where it belongs:

    0x01 | field("palisade/envelope") | field(tenant_id, 16 bytes) | field(workspace_id, 16 bytes
         or empty) | field(table) | field(column) | field(row id, 16 bytes) | field(dek_version, 4 bytes)

with `field(x) = uint32 length || x`, so no two different contexts encode alike. A ciphertext copied
to another row, column, table, workspace or tenant, or relabelled with another key version, fails
authentication; so does any flipped bit. The format byte and key version sit both in the header
(to find the key) and in the associated data (so neither can be changed without detection).

A fresh random 96-bit nonce per encryption: safe up to 2**32 encryptions per key (NIST SP 800-38D
§8.3), far above what one tenant's credentials need, and `reencrypt` moves rows to a new key anyway.

The AES key is not the wrapped key itself: the wrapped 32 random bytes are a seed, and each key is
derived from it with HKDF-SHA256 whose info names the purpose, the tenant and the version. A wrapped
seed copied into another tenant's key table therefore yields other keys there: nothing encrypted
for one tenant ever opens under another tenant's key row (which also keeps crypto-shredding honest).
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 0x01
NONCE_BYTES = 12
TAG_BYTES = 16
SEED_BYTES = 32
_HEADER = struct.Struct(">BI")  # format byte, dek version
_PREFIX = _HEADER.size + NONCE_BYTES
_LABEL = b"palisade/envelope"


class EnvelopeError(Exception):
    """A ciphertext could not be opened. Messages name the row, never any content."""


class MalformedCiphertext(EnvelopeError):
    pass


class DecryptionFailed(EnvelopeError):
    """Authentication failed: the bytes were altered, or belong to another row, workspace or tenant."""


class KeyMissing(EnvelopeError):
    """The tenant has no data key of the version the ciphertext names."""


class KeyDestroyed(EnvelopeError):
    """The tenant's data key was destroyed (crypto-shredding): the ciphertext is unrecoverable."""


@dataclass(frozen=True)
class EnvelopeContext:
    """Where a ciphertext lives; every part is authenticated with it."""

    tenant_id: uuid.UUID
    workspace_id: uuid.UUID | None
    table: str
    column: str
    row_id: uuid.UUID

    def describe(self) -> str:
        return f"{self.table}.{self.column} row {self.row_id}"


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def associated_data(context: EnvelopeContext, dek_version: int) -> bytes:
    """The canonical, unambiguous encoding of the context (see the module docstring)."""
    return bytes([FORMAT_V1]) + b"".join(
        _field(part)
        for part in (
            _LABEL,
            context.tenant_id.bytes,
            context.workspace_id.bytes if context.workspace_id is not None else b"",
            context.table.encode(),
            context.column.encode(),
            context.row_id.bytes,
            struct.pack(">I", dek_version),
        )
    )


def derive(seed: bytes, *, purpose: bytes, tenant_id: uuid.UUID, dek_version: int) -> bytes:
    """A 32-byte key for one purpose of one tenant's key version (HKDF-SHA256 over the seed)."""
    if len(seed) != SEED_BYTES:
        raise ValueError("a data key seed is 32 bytes")
    info = b"palisade/" + purpose + b"/v1" + tenant_id.bytes + struct.pack(">I", dek_version)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)


def cipher_for(seed: bytes, *, tenant_id: uuid.UUID, dek_version: int) -> AESGCM:
    return AESGCM(derive(seed, purpose=b"dek", tenant_id=tenant_id, dek_version=dek_version))


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def encrypt(cipher: AESGCM, context: EnvelopeContext, dek_version: int, plaintext: bytes) -> bytes:
    """Seal `plaintext` for `context` under the key `cipher` of `dek_version`."""
    if not 0 < dek_version < 2**32:
        raise ValueError("the data key version must fit in 32 bits")
    nonce = os.urandom(NONCE_BYTES)
    sealed = cipher.encrypt(nonce, plaintext, associated_data(context, dek_version))
    return _HEADER.pack(FORMAT_V1, dek_version) + nonce + sealed


def key_version(blob: bytes) -> int:
    """The data key version a ciphertext names (not yet authenticated: `decrypt` checks it)."""
    if len(blob) < _PREFIX + TAG_BYTES:
        raise MalformedCiphertext("the ciphertext is too short")
    fmt, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1:
        raise MalformedCiphertext(f"unknown ciphertext format {fmt}")
    return int(version)


def nonce_of(blob: bytes) -> bytes:
    key_version(blob)
    return blob[_HEADER.size:_PREFIX]


def decrypt(cipher: AESGCM, context: EnvelopeContext, blob: bytes) -> bytes:
    """Open a ciphertext made by `encrypt` for exactly this context; raise `DecryptionFailed` otherwise."""
    version = key_version(blob)
    try:
        return cipher.decrypt(blob[_HEADER.size:_PREFIX], blob[_PREFIX:], associated_data(context, version))
    except InvalidTag:
        raise DecryptionFailed(
            f"{context.describe()}: the ciphertext does not authenticate (altered, or copied from another "
            f"row, workspace or tenant)"
        ) from None
