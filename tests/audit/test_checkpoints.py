"""Signed checkpoints outside PostgreSQL anchor the chains: a rewrite re-chained by the schema owner is found.

Issue 16: as the schema owner, one event's `action` was changed and every later event re-chained,
head included, and `palisade audit verify` reported no break. These tests run that probe exactly as
an attacker would (with the code in app/audit/chain.py), against the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, pool, text
from sqlalchemy.orm import Session, sessionmaker

from app.audit import repository as repo
from app.audit.anchor import (
    CheckpointSink,
    FileSink,
    KeyVaultSigner,
    Signer,
    key_id,
    read_checkpoints,
    take_checkpoints,
)
from app.audit.chain import event_hash
from app.audit.service import ANONYMOUS, Category, RequestMeta, record
from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from app.main import create_app
from tests.audit.test_chain import verify_cli
from tests.support.azurite import AzurePlatform, BlobStorage
from tests.support.database import ROOT, superuser_execute


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


@dataclass
class AnchorSetup:
    """A checkpoint sink and key as the app is configured (`env`), and the test's own handle on the sink."""

    env: dict[str, str]
    sink: CheckpointSink  # what an auditor (or an attacker with write access to the sink) reads and appends through


def _anchor(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AnchorSetup:
    """A signing key only this user can read, its public key, and a sink of `kind`: the settings as variables.

    `azure-blob`: a fresh container in Azurite; the app signs in as its managed identity through
    the platform's identity endpoint (the variables include that endpoint's).
    """
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = Ed25519PrivateKey.generate()
    _write_key(keys / "checkpoint.key", key)
    (tmp_path / "checkpoint.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    signing = {"PALISADE_AUDIT_CHECKPOINT_KEY_FILE": str(keys / "checkpoint.key"),
               "PALISADE_AUDIT_CHECKPOINT_PUBLIC_KEY_FILE": str(tmp_path / "checkpoint.pub")}
    if kind == "file":
        sink = tmp_path / "sink"
        sink.mkdir()
        return AnchorSetup({"PALISADE_AUDIT_CHECKPOINT_SINK": "file", "PALISADE_AUDIT_CHECKPOINT_DIR": str(sink), **signing},
                      FileSink(sink))
    storage: BlobStorage = request.getfixturevalue("blob_storage")
    container = storage.new_container()
    return AnchorSetup({"PALISADE_AUDIT_CHECKPOINT_SINK": "azure-blob",
                   "PALISADE_AUDIT_CHECKPOINT_BLOB_ACCOUNT_URL": storage.azurite.account_url,
                   "PALISADE_AUDIT_CHECKPOINT_BLOB_CONTAINER": container,
                   "PALISADE_AZURE_MANAGED_IDENTITY_CLIENT_ID": storage.client_id, **storage.platform, **signing},
                  storage.azurite.admin_sink(container))


@pytest.fixture(params=["file", "azure-blob"])
def anchor(request: pytest.FixtureRequest, tmp_path: Path) -> AnchorSetup:
    """Each sink in turn: every test of the checkpoints holds for both."""
    return _anchor(request.param, request, tmp_path)


@pytest.fixture
def blob_anchor(request: pytest.FixtureRequest, tmp_path: Path) -> AnchorSetup:
    return _anchor("azure-blob", request, tmp_path)


# What an auditor's machine has: the sink's copy and the public key, not the signing key.
def _verifier(anchor: AnchorSetup) -> dict[str, str]:
    return {k: v for k, v in anchor.env.items() if k != "PALISADE_AUDIT_CHECKPOINT_KEY_FILE"}


@pytest.fixture
def sessions(database) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database.app_url, pool_size=2)
    yield make_session_factory(engine)
    engine.dispose()


def _events(sessions: sessionmaker[Session], tenant_id: uuid.UUID, n: int) -> None:
    for i in range(n):
        with sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant_id))
            record(session, tenant_id=tenant_id, actor=ANONYMOUS, meta=RequestMeta(correlation_id=f"c{i}"),
                   category=Category.role_change, action="role.grant", details={"role": "viewer"})


def checkpoint_cli(database, anchor: AnchorSetup, *tenants: uuid.UUID) -> subprocess.CompletedProcess[str]:
    args = [arg for t in tenants for arg in ("--tenant", str(t))]
    return subprocess.run([sys.executable, "-m", "app.cli", "audit", "checkpoint", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PALISADE_DATABASE_URL": database.app_url, **anchor.env}, timeout=120)


def rechain(database, tenant_id: uuid.UUID, seq: int, *, action: str = "role.revoke", keep: int | None = None) -> None:
    """The probe, as the schema owner: rewrite one event, recompute its hash and every later one's, and the head.

    With `keep`, events after seq `keep` are deleted first and the head moved back to it.
    """
    engine = create_engine(database.admin_url, poolclass=pool.NullPool)
    with sessionmaker(engine)() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        conn = session.connection()
        if keep is not None:
            conn.execute(text("delete from audit_events where tenant_id = :t and seq > :k"), {"t": tenant_id, "k": keep})
        events = list(repo.chain_links(session, tenant_id))
        prev = None
        for event in events:
            if event["seq"] == seq:
                event["action"] = action
            if event["seq"] >= seq:
                event["prev_hash"] = prev if prev is not None else event["prev_hash"]
                event["hash"] = event_hash(event)
                conn.execute(text("update audit_events set action = :a, prev_hash = :p, hash = :h where tenant_id = :t and seq = :s"),
                             {"a": event["action"], "p": event["prev_hash"], "h": event["hash"], "t": tenant_id, "s": event["seq"]})
            prev = event["hash"]
        conn.execute(text("update audit_chain_heads set seq = :s, hash = :h where tenant_id = :t"),
                     {"s": events[-1]["seq"], "h": events[-1]["hash"], "t": tenant_id})
    engine.dispose()


def test_a_rewrite_rechained_by_the_schema_owner_is_found_against_an_earlier_checkpoint(sessions, database, anchor) -> None:
    tenant_id = uuid.uuid4()
    _events(sessions, tenant_id, 8)
    taken = checkpoint_cli(database, anchor, tenant_id)
    assert taken.returncode == 0, taken.stderr
    assert f"checkpoint {tenant_id}: seq 8 " in taken.stdout
    _events(sessions, tenant_id, 2)  # after the checkpoint: not anchored
    ok = verify_cli(database, tenant_id, env=_verifier(anchor))
    assert ok.returncode == 0, ok.stderr
    assert f"ok {tenant_id}: 10 events, anchored up to seq 8" in ok.stdout

    rechain(database, tenant_id, 3)
    # The chain proves itself again: without the checkpoint, nothing shows (the documented limit).
    assert verify_cli(database, tenant_id).returncode == 0
    found = verify_cli(database, tenant_id, env=_verifier(anchor))
    assert found.returncode == 1
    assert f"BROKEN {tenant_id}: rewritten: event seq 8 " in found.stderr
    assert "from seq 1 up to seq 8 was rewritten" in found.stderr


def test_checkpoints_narrow_down_where_the_rewrite_happened(sessions, database, anchor) -> None:
    tenant_id = uuid.uuid4()
    _events(sessions, tenant_id, 2)
    assert checkpoint_cli(database, anchor, tenant_id).returncode == 0  # seq 2
    _events(sessions, tenant_id, 4)
    assert checkpoint_cli(database, anchor, tenant_id).returncode == 0  # seq 6
    rechain(database, tenant_id, 4)
    found = verify_cli(database, tenant_id, env=_verifier(anchor))
    assert found.returncode == 1
    assert "event seq 6 " in found.stderr and "after seq 2 " in found.stderr and "up to seq 6 was rewritten" in found.stderr


def test_a_rewrite_after_the_last_checkpoint_is_not_anchored(sessions, database, anchor) -> None:
    tenant_id = uuid.uuid4()
    _events(sessions, tenant_id, 3)
    assert checkpoint_cli(database, anchor, tenant_id).returncode == 0
    _events(sessions, tenant_id, 3)
    rechain(database, tenant_id, 5)  # seq 4 to 6 were never checkpointed
    assert verify_cli(database, tenant_id, env=_verifier(anchor)).returncode == 0


def test_events_dropped_with_the_head_moved_back_are_found(sessions, database, anchor) -> None:
    tenant_id = uuid.uuid4()
    _events(sessions, tenant_id, 6)
    assert checkpoint_cli(database, anchor, tenant_id).returncode == 0
    rechain(database, tenant_id, 2, keep=4)  # and events 5, 6 deleted, head at 4
    assert verify_cli(database, tenant_id).returncode == 0
    found = verify_cli(database, tenant_id, env=_verifier(anchor))
    assert found.returncode == 1
    # Seq 4 was re-chained, so the first thing the checkpoint at seq 6 shows is that the chain is too short.
    assert f"BROKEN {tenant_id}: dropped: the checkpoint of " in found.stderr
    assert "records seq 6 but the chain ends at seq 4" in found.stderr


def test_a_checkpoint_line_the_key_did_not_sign_is_named(sessions, database, anchor) -> None:
    tenant_id = uuid.uuid4()
    _events(sessions, tenant_id, 2)
    assert checkpoint_cli(database, anchor, tenant_id).returncode == 0
    ((source, number, raw),) = anchor.sink.read()  # the day's file or blob, its first line
    forged = {**json.loads(raw), "seq": 1}  # the same signature over other values
    other = Signer(Ed25519PrivateKey.generate()).line(tenant_id, 2, "0" * 64, datetime.now(UTC))[1]  # another key
    anchor.sink.append([json.dumps(forged).encode() + b"\n", other])  # whoever else can write to the sink
    found = verify_cli(database, tenant_id, env=_verifier(anchor))
    assert found.returncode == 1
    assert f"BROKEN checkpoint {source}:2: its signature does not verify" in found.stderr
    assert f"BROKEN checkpoint {source}:3: signed by key " in found.stderr and "not among the public keys" in found.stderr
    assert f"ok {tenant_id}: 2 events, anchored up to seq 2" in found.stdout  # the genuine checkpoint still counts


def test_a_signing_key_others_can_read_is_refused(sessions, database, anchor) -> None:
    Path(anchor.env["PALISADE_AUDIT_CHECKPOINT_KEY_FILE"]).chmod(0o644)
    result = checkpoint_cli(database, anchor, uuid.uuid4())
    assert result.returncode == 1
    assert "refusing secret file" in result.stderr and "lets group or others access it" in result.stderr
    assert list(anchor.sink.read()) == []


def test_the_app_checkpoints_what_it_appended_when_it_stops(database, idp, anchor, monkeypatch) -> None:
    from tests.support.api import settings_for

    for name, value in anchor.env.items():
        if not name.startswith("PALISADE_"):
            monkeypatch.setenv(name, value)  # the platform's identity endpoint, as the app's host gives it
    configured = {name.removeprefix("PALISADE_").lower(): value for name, value in anchor.env.items()
                  if name.startswith("PALISADE_")}
    settings = settings_for(database, idp, audit_checkpoint_seconds=0, **configured)  # no timer: only the stop-time checkpoint
    tenant_id = uuid.uuid4()  # a listed tenant: the app checkpoints every chain it lists
    superuser_execute(database.superuser_db_url, f"insert into tenants (id, name, slug) values ('{tenant_id}', 'A', 'a-{tenant_id}')")
    app = create_app(settings)
    with TestClient(app):
        _events(app.state.sessions, tenant_id, 3)
    signer = Signer.from_file(anchor.env["PALISADE_AUDIT_CHECKPOINT_KEY_FILE"])
    found, bad = read_checkpoints(anchor.sink, {signer.key_id: signer.public_key})
    assert bad == []
    assert [(c.seq, c.hash) for c in found[tenant_id]] == [(3, _head_hash(database, tenant_id))]


def _head_hash(database, tenant_id: uuid.UUID) -> str:
    engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        value = conn.execute(text("select hash from audit_chain_heads where tenant_id = :t"), {"t": tenant_id}).scalar_one()
    engine.dispose()
    return value


def test_the_timer_checkpoints_only_chains_whose_head_moved(sessions, database, anchor) -> None:
    from app.audit.anchor import Checkpointer

    tenant_id = uuid.uuid4()
    superuser_execute(database.superuser_db_url, f"insert into tenants (id, name, slug) values ('{tenant_id}', 'B', 'b-{tenant_id}')")
    _events(sessions, tenant_id, 2)
    timer = Checkpointer(sessions, Signer.from_file(anchor.env["PALISADE_AUDIT_CHECKPOINT_KEY_FILE"]),
                         anchor.sink, interval=3600)  # ticks called here, not timed

    def mine(taken: list) -> list[int]:
        return [c.seq for c in taken if c.tenant_id == tenant_id]

    assert mine(timer.run_once()) == [2]
    assert mine(timer.run_once()) == []  # the head did not move: nothing written for it
    _events(sessions, tenant_id, 1)
    assert mine(timer.run_once()) == [3]


class TestTheAzureBlobSink:
    """What only the blob sink has to show: the app appends to the day's blob and never replaces one."""

    @staticmethod
    def _today() -> str:
        return f"checkpoints-{datetime.now(UTC):%Y-%m-%d}.jsonl"

    def test_checkpoints_are_appended_after_what_the_days_blob_holds(self, sessions, database, blob_anchor,
                                                                       blob_storage: BlobStorage) -> None:
        blob_anchor.sink.append([b'{"earlier":"batch"}\n'])  # what another replica wrote today
        tenant_id = uuid.uuid4()
        _events(sessions, tenant_id, 2)
        taken = checkpoint_cli(database, blob_anchor, tenant_id)
        assert taken.returncode == 0, taken.stderr
        container = blob_anchor.env["PALISADE_AUDIT_CHECKPOINT_BLOB_CONTAINER"]
        with blob_storage.azurite.admin(container) as admin:
            (blob,) = admin.list_blobs()
            content = admin.download_blob(blob.name).readall()
        assert (blob.name, blob.blob_type) == (self._today(), "AppendBlob")
        earlier, line = content.splitlines()
        assert earlier == b'{"earlier":"batch"}' and json.loads(line)["seq"] == 2

    def test_a_blob_in_the_way_is_never_overwritten(self, sessions, database, blob_anchor, blob_storage: BlobStorage) -> None:
        container = blob_anchor.env["PALISADE_AUDIT_CHECKPOINT_BLOB_CONTAINER"]
        with blob_storage.azurite.admin(container) as admin:
            admin.upload_blob(self._today(), b"someone else's block blob\n")  # not an append blob: appends are refused
        tenant_id = uuid.uuid4()
        _events(sessions, tenant_id, 2)
        result = checkpoint_cli(database, blob_anchor, tenant_id)
        assert result.returncode == 1
        assert f"appending to {self._today()} in " in result.stderr and container in result.stderr
        assert "HTTP 409" in result.stderr
        assert [raw for _, _, raw in blob_anchor.sink.read()] == [b"someone else's block blob\n"]


class TestKeyVaultSigning:
    """Checkpoints signed by an EC P-256 key in Key Vault (ES256): the private key never leaves the vault."""

    KEY = "audit-checkpoint"

    @pytest.fixture
    def vault_signer(self, key_vault, azure_platform: AzurePlatform, monkeypatch) -> Callable[[], KeyVaultSigner]:
        from app.crypto.secrets import azure_credential

        for name, value in azure_platform.environment.items():
            monkeypatch.setenv(name, value)  # the platform's identity endpoint, as on Container Apps
        key_vault.create_key(self.KEY, kty="EC")

        def signer() -> KeyVaultSigner:  # what one app process builds from PALISADE_AUDIT_CHECKPOINT_KEY_URL
            # verify_challenge_resource: a loopback vault can never be *.vault.azure.net (the deploy test's vault is).
            return KeyVaultSigner(f"{key_vault.url}/keys/{self.KEY}",
                                  azure_credential("managed", managed_identity_client_id=azure_platform.client_id),
                                  connection_verify=str(azure_platform.pki.ca_file), verify_challenge_resource=False)

        return signer

    def test_a_rewrite_is_found_against_checkpoints_signed_in_the_vault_across_a_rotation(
            self, sessions, database, key_vault, vault_signer, tmp_path: Path) -> None:
        sink = FileSink(tmp_path)
        tenant_id = uuid.uuid4()
        _events(sessions, tenant_id, 3)
        take_checkpoints(sessions, vault_signer(), sink, [tenant_id])  # seq 3, the key's first version
        key_vault.create_key(self.KEY, kty="EC")  # the key's rotation policy adds a version
        _events(sessions, tenant_id, 3)
        take_checkpoints(sessions, vault_signer(), sink, [tenant_id])  # seq 6, a new process: the new version
        assert any(ex.path.endswith("/sign") and ex.status == 200 for ex in key_vault.exchanges)

        keys = vault_signer().public_keys()  # every version's public key
        found, bad = read_checkpoints(sink, keys)
        assert bad == [] and len(keys) == 2
        assert [c.seq for c in found[tenant_id]] == [3, 6] and len({c.key for c in found[tenant_id]}) == 2

        # An auditor verifies with the exported public keys alone.
        public = tmp_path / "checkpoint.pub"
        public.write_bytes(b"".join(k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                                    for k in keys.values()))
        auditor = {"PALISADE_AUDIT_CHECKPOINT_SINK": "file", "PALISADE_AUDIT_CHECKPOINT_DIR": str(tmp_path),
                   "PALISADE_AUDIT_CHECKPOINT_PUBLIC_KEY_FILE": str(public)}
        ok = verify_cli(database, tenant_id, env=auditor)
        assert ok.returncode == 0, ok.stderr
        assert f"ok {tenant_id}: 6 events, anchored up to seq 6" in ok.stdout
        rechain(database, tenant_id, 2)
        found_cli = verify_cli(database, tenant_id, env=auditor)
        assert found_cli.returncode == 1
        assert f"BROKEN {tenant_id}: rewritten: event seq 3 " in found_cli.stderr

    def test_a_line_another_ec_key_signed_is_named(self, sessions, database, vault_signer, tmp_path: Path) -> None:
        sink = FileSink(tmp_path)
        signer = vault_signer()
        tenant_id = uuid.uuid4()
        _events(sessions, tenant_id, 1)
        take_checkpoints(sessions, signer, sink, [tenant_id])
        stranger = ec.generate_private_key(ec.SECP256R1())

        class Stranger(Signer):  # an ES256 key that is not the vault's
            key_id = key_id(stranger.public_key())

            def sign(self, data: bytes) -> bytes:
                r, s = decode_dss_signature(stranger.sign(data, ec.ECDSA(hashes.SHA256())))
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        sink.append([Stranger(Ed25519PrivateKey.generate()).line(tenant_id, 1, "0" * 64, datetime.now(UTC))[1]])
        _, bad = read_checkpoints(sink, signer.public_keys())
        assert [(b.line, b.reason.split(",")[0]) for b in bad] == [
            (2, f"signed by key {key_id(stranger.public_key())}")]
