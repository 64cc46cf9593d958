"""Key rotation and crypto-shredding, as the operator commands run them against the live database:
re-wrapping under a new KEK while requests decrypt, an interrupted re-encryption resumed, and a
tenant's keys destroyed so that even a full dump plus the KEK opens nothing of it."""

from __future__ import annotations

import shutil
import threading
import time
import uuid

import pytest

from app.crypto import envelope
from app.crypto.datakeys import Batch, DataKeys, destroy_tenant_keys, reencrypt, rewrap_all
from app.crypto.envelope import EnvelopeContext, KeyDestroyed
from app.crypto.kek import LocalKeyWrapper
from app.db.session import DbContext, apply_context
from tests.credentials.helpers import Api, new_secret, reveal, rows


def key_rows(superuser, tenant_id: uuid.UUID) -> list[dict]:
    return rows(superuser, "select version, kek_version, wrapped, state from tenant_data_keys where tenant_id = :t order by version",
                t=tenant_id)


def credential_rows(superuser, tenant_id: uuid.UUID) -> list[dict]:
    return rows(superuser, "select * from provider_credentials where tenant_id = :t order by id", t=tenant_id)


def audit_actions(superuser, tenant_id: uuid.UUID, prefix: str) -> list[str]:
    found = rows(superuser, "select action from audit_events where tenant_id = :t and action like :p order by seq",
                 t=tenant_id, p=f"{prefix}%")
    return [r["action"] for r in found]


def plant(api: Api, per_workspace: int = 3) -> dict[str, tuple[int, str]]:
    """Credentials in both workspaces: id -> (workspace index, secret)."""
    planted = {}
    for ws in (0, 1):
        for _ in range(per_workspace):
            secret = new_secret()
            planted[api.add(ws, secret=secret)["id"]] = (ws, secret)
    return planted


def assert_all_open(sessions, api: Api, planted: dict[str, tuple[int, str]], keys: DataKeys | None = None) -> None:
    for credential_id, (ws, secret) in planted.items():
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[ws], credential_id, keys=keys) == secret


class TestRewrap:
    def test_rewrap_while_requests_decrypt_and_write(self, api: Api, sessions, superuser, wrapper, kek_dir):
        planted = plant(api, per_workspace=2)
        target_id, (target_ws, target_secret) = next(iter(planted.items()))
        writable = api.add(1)
        uncached = DataKeys(wrapper, ttl_seconds=0)  # every read unwraps from the table, mid-rotation
        stop = threading.Event()
        failures: list[str] = []
        reads, writes = [0], [0]

        def reader() -> None:
            while not stop.is_set():
                try:
                    value = reveal(sessions, api.world.tenant_id, api.world.workspaces[target_ws], target_id, keys=uncached)
                    assert value == target_secret
                    reads[0] += 1
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    failures.append(f"read: {exc!r}")

        def writer() -> None:
            while not stop.is_set():
                r = api.admin.put(api.url(1, writable["id"]), json={"secret": new_secret()})
                if r.status_code != 200:
                    failures.append(f"write: {r.status_code} {r.text}")
                writes[0] += 1

        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                time.sleep(0.1)
                new_version = LocalKeyWrapper.create_version(kek_dir)
                [done] = rewrap_all(sessions, wrapper, tenant_ids=[api.world.tenant_id])
                assert done.kek_version == new_version and done.dek_versions == [1]
            time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        assert reads[0] > 10 and writes[0] > 3
        assert {k["kek_version"] for k in key_rows(superuser, api.world.tenant_id)} == {wrapper.current_version()}
        assert audit_actions(superuser, api.world.tenant_id, "data_keys.") == ["data_keys.rewrap"] * 3
        assert_all_open(sessions, api, planted, keys=DataKeys(wrapper, ttl_seconds=0))

    def test_old_kek_versions_can_go_after_rewrap(self, api: Api, sessions, superuser, wrapper, kek_dir, tmp_path):
        planted = plant(api, per_workspace=1)
        LocalKeyWrapper.create_version(kek_dir)
        rewrap_all(sessions, wrapper)  # every tenant: then nothing needs the older versions
        current = wrapper.current_version()
        aside = tmp_path / "old-keks"
        aside.mkdir()
        moved = [p for p in kek_dir.iterdir() if p.name != f"kek-{current}.key"]
        try:
            for p in moved:
                shutil.move(p, aside / p.name)
            assert wrapper.versions() == [current]
            assert_all_open(sessions, api, planted, keys=DataKeys(wrapper, ttl_seconds=0))
        finally:
            for p in moved:
                shutil.move(aside / p.name, p)

    def test_rerun_does_nothing(self, api: Api, sessions, wrapper):
        api.add()
        rewrap_all(sessions, wrapper, tenant_ids=[api.world.tenant_id])
        assert rewrap_all(sessions, wrapper, tenant_ids=[api.world.tenant_id]) == []


class Interrupted(Exception):
    pass


class TestReencrypt:
    def test_interrupted_then_resumed(self, api: Api, sessions, superuser, wrapper):
        planted = plant(api, per_workspace=3)
        tenant = api.world.tenant_id
        before = {str(r["id"]): r for r in credential_rows(superuser, tenant)}
        assert {r["dek_version"] for r in before.values()} == {1}
        batches: list[Batch] = []

        def stop_after_first(batch: Batch) -> None:
            batches.append(batch)
            raise Interrupted

        with pytest.raises(Interrupted):
            reencrypt(sessions, wrapper, batch_size=2, on_batch=stop_after_first, tenant_ids=[tenant])
        # One batch committed: two rows on the new version, the rest still on the old, all readable.
        assert [(b.rows, b.dek_version) for b in batches] == [(2, 2)]
        middle = credential_rows(superuser, tenant)
        assert sorted(r["dek_version"] for r in middle) == [1, 1, 1, 1, 2, 2]
        assert [(k["version"], k["state"]) for k in key_rows(superuser, tenant)] == [(1, "active"), (2, "active")]
        assert_all_open(sessions, api, planted, keys=DataKeys(wrapper, ttl_seconds=0))
        assert_all_open(sessions, api, planted)  # the server's cached keys too
        # New writes during the rotation go to the new version.
        during = api.add(0)
        assert {str(r["id"]): r["dek_version"] for r in credential_rows(superuser, tenant)}[during["id"]] == 2

        seen: list[Batch] = []
        [rotation] = reencrypt(sessions, wrapper, batch_size=2, on_batch=seen.append, tenant_ids=[tenant])
        assert rotation.dek_version == 2  # continued, no third version
        assert rotation.reencrypted == 4 and rotation.retired == [1]
        assert sum(b.rows for b in seen) == 4
        after = {str(r["id"]): r for r in credential_rows(superuser, tenant)}
        assert {r["dek_version"] for r in after.values()} == {2}
        assert [(k["version"], k["state"]) for k in key_rows(superuser, tenant)] == [(1, "retired"), (2, "active")]
        assert_all_open(sessions, api, planted, keys=DataKeys(wrapper, ttl_seconds=0))
        # Fingerprints follow the key; what people see otherwise stays as it was.
        listed = {c["id"]: c for ws in (0, 1) for c in api.admin.get(api.url(ws)).json()["items"]}
        for credential_id in planted:
            assert after[credential_id]["fingerprint"] == listed[credential_id]["fingerprint"]
            assert after[credential_id]["updated_at"] == before[credential_id]["updated_at"]
            assert after[credential_id]["ciphertext"] != before[credential_id]["ciphertext"]
        assert audit_actions(superuser, tenant, "data_keys.") == ["data_keys.rotate", "data_keys.retire"]

    def test_each_completed_run_rotates_again(self, api: Api, sessions, superuser, wrapper):
        planted = plant(api, per_workspace=1)
        tenant = api.world.tenant_id
        reencrypt(sessions, wrapper, tenant_ids=[tenant])
        [rotation] = reencrypt(sessions, wrapper, tenant_ids=[tenant])
        assert rotation.dek_version == 3 and rotation.retired == [2]
        assert [(k["version"], k["state"]) for k in key_rows(superuser, tenant)] == [(1, "retired"), (2, "retired"), (3, "active")]
        assert_all_open(sessions, api, planted, keys=DataKeys(wrapper, ttl_seconds=0))

    def test_retired_version_still_opens_a_straggler(self, api: Api, sessions, superuser, wrapper, data_keys):
        """A writer that sealed with the old version just before the rotation: still readable, moved next run."""
        from app.credentials.models import SECRET
        from tests.credentials.helpers import superuser_exec

        tenant = api.world.tenant_id
        created = api.add(0)
        secret = new_secret()
        # Seal under version 1 as that writer did, then rotate and let the row arrive late.
        with sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant, workspace_id=api.world.workspaces[0]))
            context = SECRET.context(tenant_id=tenant, workspace_id=api.world.workspaces[0], row_id=uuid.UUID(created["id"]))
            late = data_keys.seal(session, context, secret.encode(), version=1)
        reencrypt(sessions, wrapper, tenant_ids=[tenant])
        superuser_exec(superuser, "update provider_credentials set ciphertext = :c, dek_version = 1 where tenant_id = :t and id = :i",
                       c=late.ciphertext, t=tenant, i=created["id"])
        assert reveal(sessions, tenant, api.world.workspaces[0], created["id"], keys=DataKeys(wrapper, ttl_seconds=0)) == secret
        reencrypt(sessions, wrapper, tenant_ids=[tenant])
        assert {r["dek_version"] for r in credential_rows(superuser, tenant)} == {3}
        assert reveal(sessions, tenant, api.world.workspaces[0], created["id"], keys=DataKeys(wrapper, ttl_seconds=0)) == secret

    def test_tenant_without_keys_is_skipped(self, api: Api, sessions, superuser, wrapper):
        assert reencrypt(sessions, wrapper, tenant_ids=[api.world.tenant_id]) == []
        assert key_rows(superuser, api.world.tenant_id) == []


class TestCryptoShredding:
    def test_destroyed_keys_leave_nothing_recoverable(self, api: Api, other_api: Api, sessions, superuser, wrapper, data_keys):
        planted = plant(api, per_workspace=2)
        reencrypt(sessions, wrapper, tenant_ids=[api.world.tenant_id])  # two key versions, one retired
        planted.update({api.add(0, secret=(s := new_secret()))["id"]: (0, s)})
        kept = {other_api.add(0, secret=(s := new_secret()))["id"]: (0, s)}
        assert_all_open(sessions, api, planted)  # also fills the server's key cache

        with sessions() as session, session.begin():
            destroyed = destroy_tenant_keys(session, api.world.tenant_id, keys=data_keys)
        assert destroyed == [1, 2]

        # Through the application: refused with a clear error, the cache no help.
        for credential_id, (ws, secret) in planted.items():
            with pytest.raises(KeyDestroyed, match="destroyed: its ciphertexts are unrecoverable") as err:
                reveal(sessions, api.world.tenant_id, api.world.workspaces[ws], credential_id)
            assert secret not in str(err.value)
        # Metadata stays listable, so an operator can see what was lost.
        assert len(api.admin.get(api.url(0)).json()["items"]) == 3

        # A full dump of both tables, read past RLS, and the KEK with every version it ever had.
        dump_keys = rows(superuser, "select * from tenant_data_keys order by tenant_id, version")
        dump_rows = rows(superuser, "select * from provider_credentials where tenant_id = :t", t=api.world.tenant_id)
        mine = [k for k in dump_keys if k["tenant_id"] == api.world.tenant_id]
        assert [(k["version"], k["state"], k["wrapped"]) for k in mine] == [(1, "destroyed", None), (2, "destroyed", None)]
        seeds = []
        for k in dump_keys:
            if k["wrapped"] is not None:
                seeds.append(wrapper.unwrap(k["kek_version"], bytes(k["wrapped"])))
        assert seeds  # other tenants' keys are still there to try
        for row in dump_rows:
            blob = bytes(row["ciphertext"])
            secret = planted[str(row["id"])][1]
            assert secret.encode() not in blob
            context = EnvelopeContext(api.world.tenant_id, row["workspace_id"], "provider_credentials", "ciphertext", row["id"])
            for seed in seeds:
                for version in (1, 2, row["dek_version"]):
                    cipher = envelope.cipher_for(seed, tenant_id=api.world.tenant_id, dek_version=version)
                    with pytest.raises(envelope.DecryptionFailed):
                        envelope.decrypt(cipher, context, blob)

        # The neighbour is untouched; the audit trail records the shredding.
        assert_all_open(sessions, other_api, kept)
        assert audit_actions(superuser, api.world.tenant_id, "data_keys.destroy") == ["data_keys.destroy"]
        [event] = rows(superuser, "select details from audit_events where tenant_id = :t and action = 'data_keys.destroy'",
                       t=api.world.tenant_id)
        assert event["details"] == {"dek_versions": [1, 2]}

    def test_new_credentials_after_shredding_use_a_new_version(self, api: Api, sessions, superuser, data_keys):
        old = api.add(0)
        with sessions() as session, session.begin():
            destroy_tenant_keys(session, api.world.tenant_id)
        secret = new_secret()
        fresh = api.add(0, secret=secret)
        versions = {r["id"]: r["dek_version"] for r in credential_rows(superuser, api.world.tenant_id)}
        assert versions[uuid.UUID(old["id"])] == 1 and versions[uuid.UUID(fresh["id"])] == 2  # never reused
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], fresh["id"]) == secret
        with pytest.raises(KeyDestroyed):
            reveal(sessions, api.world.tenant_id, api.world.workspaces[0], old["id"])

    def test_rotation_skips_what_was_shredded(self, api: Api, sessions, superuser, wrapper):
        api.add(0)
        with sessions() as session, session.begin():
            destroy_tenant_keys(session, api.world.tenant_id)
        assert reencrypt(sessions, wrapper, tenant_ids=[api.world.tenant_id]) == []  # no live key: nothing to rotate
        api.add(0)  # version 2, alongside a row on destroyed version 1
        [rotation] = reencrypt(sessions, wrapper, tenant_ids=[api.world.tenant_id])
        assert rotation.dek_version == 3 and rotation.reencrypted == 1 and rotation.retired == [2]
        assert sorted(r["dek_version"] for r in credential_rows(superuser, api.world.tenant_id)) == [1, 3]
