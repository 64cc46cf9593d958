"""The envelope format on its own: a ciphertext opens only where it was sealed, never twice the same nonce,
and any altered byte is detected. (Swaps inside the real database: tests/credentials/test_crypto_db.py.)"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from app.crypto import envelope
from app.crypto.envelope import DecryptionFailed, EnvelopeContext, MalformedCiphertext

PLAINTEXT = b"sk-envelope-unit-test-9f8e7d6c5b4a"
TENANT = uuid.UUID("11111111-1111-4111-8111-111111111111")


def context(**changes: object) -> EnvelopeContext:
    base = EnvelopeContext(
        tenant_id=TENANT,
        workspace_id=uuid.UUID("22222222-2222-4222-8222-222222222222"),
        table="provider_credentials",
        column="ciphertext",
        row_id=uuid.UUID("33333333-3333-4333-8333-333333333333"),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def seed() -> bytes:
    return envelope.new_seed()


@pytest.fixture(scope="module")
def cipher(seed: bytes):
    return envelope.cipher_for(seed, tenant_id=TENANT, dek_version=1)


class TestRoundTrip:
    def test_opens_where_sealed(self, cipher):
        blob = envelope.encrypt(cipher, context(), 1, PLAINTEXT)
        assert envelope.decrypt(cipher, context(), blob) == PLAINTEXT
        assert PLAINTEXT not in blob

    def test_format_header(self, cipher):
        blob = envelope.encrypt(cipher, context(), 7, PLAINTEXT)
        assert blob[0] == envelope.FORMAT_V1
        assert envelope.key_version(blob) == 7
        # header (5) + nonce (12) + ciphertext (same length as plaintext) + tag (16)
        assert len(blob) == 5 + 12 + len(PLAINTEXT) + 16

    def test_empty_plaintext(self, cipher):
        assert envelope.decrypt(cipher, context(), envelope.encrypt(cipher, context(), 1, b"")) == b""


class TestBoundToItsPlace:
    @pytest.mark.parametrize(
        "changes",
        [
            {"tenant_id": uuid.uuid4()},
            {"workspace_id": uuid.uuid4()},
            {"workspace_id": None},
            {"table": "documents"},
            {"column": "label"},
            {"row_id": uuid.uuid4()},
        ],
        ids=["tenant", "workspace", "no-workspace", "table", "column", "row"],
    )
    def test_other_context_fails_with_a_clear_error(self, cipher, changes):
        blob = envelope.encrypt(cipher, context(), 1, PLAINTEXT)
        elsewhere = context(**changes)
        with pytest.raises(DecryptionFailed) as err:
            envelope.decrypt(cipher, elsewhere, blob)
        message = str(err.value)
        assert "does not authenticate" in message and str(elsewhere.row_id) in message
        assert PLAINTEXT.decode() not in message

    def test_relabelled_key_version_fails(self, cipher):
        blob = bytearray(envelope.encrypt(cipher, context(), 1, PLAINTEXT))
        blob[1:5] = (2).to_bytes(4, "big")
        with pytest.raises(DecryptionFailed):
            envelope.decrypt(cipher, context(), bytes(blob))

    def test_encoding_is_unambiguous(self):
        # Length prefixes: moving a character from the table name into the column name changes the AAD.
        a = envelope.associated_data(context(table="ab", column="c"), 1)
        b = envelope.associated_data(context(table="a", column="bc"), 1)
        assert a != b

    def test_keys_differ_per_tenant_and_version_from_one_seed(self, seed):
        blob = envelope.encrypt(envelope.cipher_for(seed, tenant_id=TENANT, dek_version=1), context(), 1, PLAINTEXT)
        # The same wrapped seed under another tenant's key row opens nothing of this tenant's.
        other = envelope.cipher_for(seed, tenant_id=uuid.uuid4(), dek_version=1)
        with pytest.raises(DecryptionFailed):
            envelope.decrypt(other, context(), blob)
        keys = {envelope.derive(seed, purpose=p, tenant_id=t, dek_version=v)
                for p in (b"dek", b"fingerprint") for t in (TENANT, uuid.uuid4()) for v in (1, 2)}
        assert len(keys) == 8


class TestNonces:
    def test_all_distinct_over_many_encryptions(self, cipher):
        blobs = [envelope.encrypt(cipher, context(), 1, PLAINTEXT) for _ in range(20_000)]
        nonces = {envelope.nonce_of(b) for b in blobs}
        assert len(nonces) == len(blobs)
        # and so every ciphertext of the same plaintext differs
        assert len(set(blobs)) == len(blobs)


class TestTamper:
    def test_every_flipped_byte_is_detected(self, cipher):
        blob = envelope.encrypt(cipher, context(), 1, PLAINTEXT)
        for i in range(len(blob)):
            broken = bytearray(blob)
            broken[i] ^= 0x01
            with pytest.raises(envelope.EnvelopeError):
                envelope.decrypt(cipher, context(), bytes(broken))

    def test_truncated(self, cipher):
        blob = envelope.encrypt(cipher, context(), 1, PLAINTEXT)
        with pytest.raises(MalformedCiphertext):
            envelope.decrypt(cipher, context(), blob[:20])
        with pytest.raises(DecryptionFailed):
            envelope.decrypt(cipher, context(), blob[:-1])

    def test_unknown_format(self, cipher):
        blob = bytearray(envelope.encrypt(cipher, context(), 1, PLAINTEXT))
        blob[0] = 0x02
        with pytest.raises(MalformedCiphertext, match="format 2"):
            envelope.decrypt(cipher, context(), bytes(blob))
