"""Someone with write access to the tables (a superuser, a restored dump, a bad migration) moves or alters
ciphertexts: the credential no longer decrypts, with an error that says so, and no plaintext anywhere."""

from __future__ import annotations

import pytest

from app.crypto.envelope import DecryptionFailed, EnvelopeError
from tests.credentials.helpers import Api, new_secret, reveal, rows, superuser_exec


def copy_ciphertext(superuser, source: Api, source_id: str, target: Api, target_id: str, *, with_version: bool = True) -> None:
    """Overwrite the target row's ciphertext (and key version) with the source row's, past RLS."""
    superuser_exec(
        superuser,
        "update provider_credentials t set ciphertext = s.ciphertext"
        + (", dek_version = s.dek_version" if with_version else "")
        + " from provider_credentials s where s.tenant_id = :st and s.id = :si and t.tenant_id = :tt and t.id = :ti",
        st=source.world.tenant_id, si=source_id, tt=target.world.tenant_id, ti=target_id,
    )


def assert_refused(sessions, api: Api, ws: int, credential_id: str, *secrets_: str) -> str:
    with pytest.raises(DecryptionFailed) as err:
        reveal(sessions, api.world.tenant_id, api.world.workspaces[ws], credential_id)
    message = str(err.value)
    assert "does not authenticate" in message and credential_id in message
    for secret in secrets_:
        assert secret not in message and secret not in repr(err.value.args)
    return message


class TestCopiedCiphertext:
    def test_to_another_row_of_the_workspace(self, api: Api, sessions, superuser):
        secret, victim_secret = new_secret(), new_secret()
        source, target = api.add(secret=secret), api.add(secret=victim_secret)
        copy_ciphertext(superuser, api, source["id"], api, target["id"])
        assert_refused(sessions, api, 0, target["id"], secret, victim_secret)
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], source["id"]) == secret  # the original still opens

    def test_to_another_workspace(self, api: Api, sessions, superuser):
        secret = new_secret()
        source, target = api.add(0, secret=secret), api.add(1)
        copy_ciphertext(superuser, api, source["id"], api, target["id"])
        assert_refused(sessions, api, 1, target["id"], secret)

    def test_to_another_tenant(self, api: Api, other_api: Api, sessions, superuser):
        secret = new_secret()
        source, target = api.add(secret=secret), other_api.add()
        # Both tenants are on key version 1 here: only the AAD and the per-tenant key keep them apart.
        copy_ciphertext(superuser, api, source["id"], other_api, target["id"])
        assert_refused(sessions, other_api, 0, target["id"], secret)

    def test_whole_row_moved_to_another_workspace(self, api: Api, sessions, superuser):
        secret = new_secret()
        moved = api.add(0, secret=secret)
        superuser_exec(superuser, "update provider_credentials set workspace_id = :w where tenant_id = :t and id = :i",
                       w=api.world.workspaces[1], t=api.world.tenant_id, i=moved["id"])
        # Workspace B now lists it, but the ciphertext still names workspace A.
        assert moved["id"] in [c["id"] for c in api.admin.get(api.url(1)).json()["items"]]
        assert_refused(sessions, api, 1, moved["id"], secret)

    def test_relabelled_key_version(self, api: Api, sessions, superuser, data_keys):
        created = api.add()
        # A second key version for the tenant, so the foreign key accepts the relabelling.
        from app.crypto.datakeys import reencrypt

        reencrypt(sessions, data_keys.wrapper, tenant_ids=[api.world.tenant_id])
        [row] = rows(superuser, "select dek_version from provider_credentials where tenant_id = :t and id = :i",
                     t=api.world.tenant_id, i=created["id"])
        superuser_exec(superuser, "update provider_credentials set dek_version = :v where tenant_id = :t and id = :i",
                       v=row["dek_version"] - 1, t=api.world.tenant_id, i=created["id"])
        with pytest.raises(DecryptionFailed, match="key version does not match"):
            reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"])


class TestAlteredCiphertext:
    @pytest.mark.parametrize("offset", [0, 3, 10, 30, -1], ids=["format", "version", "nonce", "body", "tag"])
    def test_flipped_byte(self, api: Api, sessions, superuser, offset: int):
        secret = new_secret()
        created = api.add(secret=secret)
        _flip(superuser, api, created["id"], offset)
        with pytest.raises(EnvelopeError) as err:
            reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"])
        assert secret not in str(err.value)

    def test_truncated(self, api: Api, sessions, superuser):
        created = api.add()
        superuser_exec(superuser, "update provider_credentials set ciphertext = substring(ciphertext from 1 for 20) "
                       "where tenant_id = :t and id = :i", t=api.world.tenant_id, i=created["id"])
        with pytest.raises(EnvelopeError):
            reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"])


def _flip(superuser, api: Api, credential_id: str, offset: int) -> None:
    position = f"{offset}" if offset >= 0 else "length(ciphertext) - 1"
    superuser_exec(
        superuser,
        f"update provider_credentials set ciphertext = set_byte(ciphertext, {position}, get_byte(ciphertext, {position}) # 1) "
        "where tenant_id = :t and id = :i",
        t=api.world.tenant_id, i=credential_id,
    )
