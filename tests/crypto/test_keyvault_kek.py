"""KeyVaultKeyWrapper with the real KeyClient / CryptographyClient against the local vault (RSA-OAEP-256)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from app.crypto.kek import KeyVaultKeyWrapper, KeyWrapper, UnknownKeyVersion, UnwrapFailed
from tests.crypto.conftest import Workload
from tests.crypto.keyvault_server import FakeKeyVault, b64url

KEY = "palisade-kek"
PRIVATE_FIELDS = {"d", "p", "q", "dp", "dq", "qi", "k"}


@pytest.fixture
def wrapper(vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]) -> Iterator[KeyVaultKeyWrapper]:
    vault.create_key(KEY)
    kek = KeyVaultKeyWrapper(f"{vault.url}/keys/{KEY}", workload.credential(), version_cache_seconds=0, **client_options)
    yield kek
    kek.close()


def operations(vault: FakeKeyVault) -> list[tuple[str, str, int]]:
    return [(e.method, e.path.rsplit("/", 1)[-1], e.status) for e in vault.exchanges]


def test_wrap_unwrap_round_trip(vault: FakeKeyVault, wrapper: KeyVaultKeyWrapper) -> None:
    assert isinstance(wrapper, KeyWrapper)
    [version] = [kv.version for kv in vault.keys[KEY]]
    assert wrapper.current_version() == version

    dek = os.urandom(32)
    wrapped_version, wrapped = wrapper.wrap(dek)
    assert wrapped_version == version
    assert len(wrapped) == 256 and dek not in wrapped  # RSA-2048 OAEP output
    # It is RSA-OAEP-256 under the vault's key: the vault's private key (held only there) opens it.
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert vault.keys[KEY][0].private_key.decrypt(wrapped, oaep) == dek

    assert wrapper.unwrap(version, wrapped) == dek
    # Unwrapping happened in the vault (the only place the private key exists).
    assert ("POST", "unwrapkey", 200) in operations(vault)


def test_old_versions_still_unwrap_after_rotation(
    vault: FakeKeyVault, wrapper: KeyVaultKeyWrapper, workload: Workload, client_options: dict[str, Any]
) -> None:
    first_dek = os.urandom(32)
    v1, w1 = wrapper.wrap(first_dek)

    # A new key version, created through the SDK (POST /keys/{name}/create) as rotation tooling does.
    admin = KeyClient(vault.url, workload.credential(), **client_options)
    v2 = admin.create_rsa_key(KEY, size=2048).properties.version
    assert v2 and v2 != v1
    assert ("POST", "create", 200) in operations(vault)

    assert wrapper.current_version() == v2
    second_dek = os.urandom(32)
    version, w2 = wrapper.wrap(second_dek)
    assert version == v2  # new data keys go under the new version
    assert wrapper.unwrap(v1, w1) == first_dek  # the older version still unwraps
    assert wrapper.unwrap(v2, w2) == second_dek

    # Once the old version is disabled (after every data key was rewrapped), it no longer unwraps.
    vault.disable_key_version(KEY, v1)
    with pytest.raises(UnknownKeyVersion, match=v1):
        wrapper.unwrap(v1, w1)
    assert wrapper.unwrap(v2, w2) == second_dek


def test_the_version_cache_delays_rotation_pickup(
    vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]
) -> None:
    v1 = vault.create_key(KEY)
    kek = KeyVaultKeyWrapper(f"{vault.url}/keys/{KEY}", workload.credential(), version_cache_seconds=3600, **client_options)
    assert kek.current_version() == v1
    vault.create_key(KEY)
    assert kek.current_version() == v1  # cached: one GET per interval, not one per wrap
    gets = [e for e in vault.exchanges if e.method == "GET" and e.status == 200]
    assert len(gets) == 1


def test_a_pinned_version_stays_current(vault: FakeKeyVault, workload: Workload, client_options: dict[str, Any]) -> None:
    v1 = vault.create_key(KEY)
    vault.create_key(KEY)
    kek = KeyVaultKeyWrapper(f"{vault.url}/keys/{KEY}/{v1}", workload.credential(), **client_options)
    assert kek.current_version() == v1
    dek = os.urandom(32)
    version, wrapped = kek.wrap(dek)
    assert version == v1 and kek.unwrap(version, wrapped) == dek


def test_the_server_never_returned_private_key_material(
    vault: FakeKeyVault, wrapper: KeyVaultKeyWrapper, workload: Workload, client_options: dict[str, Any]
) -> None:
    dek = os.urandom(32)
    v1, w1 = wrapper.wrap(dek)
    KeyClient(vault.url, workload.credential(), **client_options).create_rsa_key(KEY)
    v2, w2 = wrapper.wrap(dek)
    assert wrapper.unwrap(v1, w1) == wrapper.unwrap(v2, w2) == dek

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    secrets = [b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))
               for numbers in vault.private_numbers() for n in (numbers.d, numbers.p, numbers.q)]
    assert len(secrets) == 6
    assert vault.exchanges
    for exchange in vault.exchanges:
        body = exchange.response.decode()
        assert not PRIVATE_FIELDS & set(walk(json.loads(body))), exchange.path
        for secret in secrets:
            assert secret not in body and secret[:40] not in body


def test_vault_side_wrap_interoperates(
    vault: FakeKeyVault,
    wrapper: KeyVaultKeyWrapper,
    make_workload: Callable[..., Workload],
    client_options: dict[str, Any],
) -> None:
    # An identity that may use the key but not read it (no keys/read): the SDK cannot fetch the
    # public key, so it calls the vault's wrapKey operation; the wrapper unwraps the result.
    restricted = make_workload("palisade-worker")
    vault.permissions[restricted.client_id] = {"keys/wrapKey/action", "keys/unwrapKey/action"}
    version = wrapper.current_version()
    client = CryptographyClient(f"{vault.url}/keys/{KEY}/{version}", restricted.credential(), **client_options)
    dek = os.urandom(32)
    result = client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek)
    ops = operations(vault)
    assert ("GET", version, 403) in ops and ("POST", "wrapkey", 200) in ops
    assert wrapper.unwrap(version, result.encrypted_key) == dek


def test_tampered_unknown_and_malformed(vault: FakeKeyVault, wrapper: KeyVaultKeyWrapper) -> None:
    version, wrapped = wrapper.wrap(os.urandom(32))
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(UnwrapFailed):
        wrapper.unwrap(version, tampered)
    with pytest.raises(UnknownKeyVersion, match="0123456789abcdef0123456789abcdef"):
        wrapper.unwrap("0123456789abcdef0123456789abcdef", wrapped)
    with pytest.raises(UnknownKeyVersion):
        wrapper.unwrap("../../secrets/x", wrapped)
    with pytest.raises(ValueError):
        wrapper.wrap(b"short")


def test_key_urls_are_validated(workload: Workload) -> None:
    for bad in ("http://kv.vault.azure.net/keys/k", "https://kv.vault.azure.net/secrets/k", "https://kv.vault.azure.net/keys/",
                "https://kv.vault.azure.net/keys/k/v/extra", "https://kv.vault.azure.net/keys/k?x=1"):
        with pytest.raises(ValueError):
            KeyVaultKeyWrapper(bad, workload.credential())
