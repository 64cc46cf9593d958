"""Per-tenant data keys (DEKs): wrapped at rest, unwrapped into a short-lived cache, rotated, shredded.

Each tenant has numbered data keys in `tenant_data_keys`, each stored only as wrapped by the KEK
(`app.crypto.kek`); a tenant's first key is made the first time something of it is encrypted. New
ciphertexts use the tenant's highest `active` version; every version that is not destroyed still
decrypts. Unwrapped keys stay in this process's memory for `ttl_seconds` at most (bounded LRU);
plaintexts are never cached.

Operator procedures (the `palisade keys …` commands call these):

- `rewrap_all`: after a new KEK version is created, re-wrap every DEK under it. DEKs do not change,
  so no ciphertext is touched and readers never wait: a reader sees the old or the new wrapping,
  and both unwrap while the old KEK version is kept.
- `reencrypt`: a new DEK version per tenant, rows moved to it in batches of their own transactions.
  Progress is the rows' `dek_version`, so an interrupted run is continued by running it again. The
  old version is retired once no row uses it (checked while holding its key row, so a writer that
  picked the old version before the rotation has committed by then).
- `destroy_tenant_keys`: crypto-shredding. The wrapped bytes are removed: with them go all of the
  tenant's ciphertexts, in the live table and in every later dump alike. PostgreSQL keeps the old
  row version on disk until vacuum, and backups taken before keep it until they expire; rotate the
  KEK and retire its old version to shorten that window.

Writers lock the key row they encrypt with (FOR SHARE) until their transaction ends, so the
retirement check and crypto-shredding wait for in-flight writes instead of racing them. Readers
take no lock. Another process's cache may hold a destroyed key until its TTL runs out.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Table, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.audit import service as audit
from app.crypto import envelope
from app.crypto.envelope import EnvelopeContext, KeyDestroyed, KeyMissing
from app.crypto.kek import KeyWrapper
from app.crypto.models import KeyState, TenantDataKey
from app.db.session import DbContext, apply_context, current_context
from app.tenancy import repository as tenancy_repo
from app.tenancy.models import Workspace

log = logging.getLogger("palisade.crypto")

FINGERPRINT_HEX = 16
_UNCOMMITTED_KEYS = "palisade.uncommitted_data_keys"
_INSERT_FIRST = text(
    "insert into tenant_data_keys (tenant_id, version, kek_version, wrapped, state) "
    "select :tenant_id, coalesce(max(version), 0) + 1, :kek_version, :wrapped, 'active' "
    "from tenant_data_keys where tenant_id = :tenant_id "
    "having count(*) filter (where state = 'active') = 0 "
    "on conflict (tenant_id, version) do nothing returning version"
)
# Who the operator commands act as in the tenants' audit trails.
OPERATOR = audit.Actor(issuer=None, subject="palisade-cli", user_id=None, role="operator", type="service")
# Modules that declare sealed columns (`register_sealed`), imported before a re-encryption.
SEALED_IN = ("app.credentials.models",)


class KeysUnavailable(RuntimeError):
    """No key-encryption key is configured in this process."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    dek_version: int
    # HMAC-SHA256 of the plaintext under a key derived from the same DEK, first 16 hex digits:
    # lets people compare values without revealing them, and means nothing without the KEK.
    fingerprint: str


@dataclass(frozen=True)
class _Entry:
    cipher: AESGCM
    fingerprint_key: bytes
    expires_at: float


class DataKeys:
    """Encrypts and decrypts field values under the tenant's data keys, caching unwrapped keys briefly.

    Every method reads and writes through the caller's session, whose tenant context RLS applies.
    """

    def __init__(self, wrapper: KeyWrapper, *, ttl_seconds: float = 300.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.wrapper = wrapper
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[tuple[uuid.UUID, int], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    # --- the cache of unwrapped keys --------------------------------------------------------------

    def _cached(self, tenant_id: uuid.UUID, version: int) -> _Entry | None:
        with self._lock:
            entry = self._cache.get((tenant_id, version))
            if entry is None:
                return None
            if entry.expires_at <= self._clock():
                del self._cache[(tenant_id, version)]
                return None
            self._cache.move_to_end((tenant_id, version))
            return entry

    def _unwrap(self, session: Session, tenant_id: uuid.UUID, version: int, kek_version: str, wrapped: bytes) -> _Entry:
        entry = self._cached(tenant_id, version)
        if entry is not None:
            return entry
        seed = self.wrapper.unwrap(kek_version, wrapped)
        entry = _Entry(
            cipher=envelope.cipher_for(seed, tenant_id=tenant_id, dek_version=version),
            fingerprint_key=envelope.derive(seed, purpose=b"fingerprint", tenant_id=tenant_id, dek_version=version),
            expires_at=self._clock() + self._ttl,
        )
        log.debug("data_key_unwrapped", extra={"tenant_id": str(tenant_id), "dek_version": version, "kek_version": kek_version})
        # A key this transaction made itself may yet be rolled back: never cached.
        if self._ttl > 0 and self._max > 0 and (tenant_id, version) not in session.info.get(_UNCOMMITTED_KEYS, ()):
            with self._lock:
                self._cache[(tenant_id, version)] = entry
                self._cache.move_to_end((tenant_id, version))
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return entry

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        """Drop cached keys: one tenant's, or all."""
        with self._lock:
            for key in [k for k in self._cache if tenant_id is None or k[0] == tenant_id]:
                del self._cache[key]

    # --- which key ----------------------------------------------------------------------------------

    def active_version(self, session: Session, tenant_id: uuid.UUID) -> tuple[int, _Entry]:
        """The tenant's current key (made on first use), locked FOR SHARE until the transaction ends."""
        query = (
            select(TenantDataKey.version, TenantDataKey.kek_version, TenantDataKey.wrapped)
            .where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.state == KeyState.active)
            .order_by(TenantDataKey.version.desc())
            .limit(1)
            .with_for_update(read=True)
        )
        for _ in range(3):
            row = session.execute(query).first()
            if row is not None:
                assert row.wrapped is not None
                return row.version, self._unwrap(session, tenant_id, row.version, row.kek_version, row.wrapped)
            self._create_first(session, tenant_id)
        raise KeyMissing("the tenant has no active data key and none could be made")

    def _create_first(self, session: Session, tenant_id: uuid.UUID) -> None:
        # Committed in a transaction of its own: a key row the request's rollback could take away
        # would already have encrypted (and been cached for) data that then points at nothing.
        bind = session.get_bind()
        engine = bind.engine if isinstance(bind, Connection) else bind
        try:
            with Session(engine) as own, own.begin():
                apply_context(own, DbContext(tenant_id=tenant_id))
                self._insert_first(own, tenant_id)
            return
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != "23503":
                raise
        # The tenant itself is not committed yet (it is being made in the caller's transaction):
        # the key row joins that transaction and stays out of the cache.
        version = self._insert_first(session, tenant_id)
        if version is not None:
            session.info.setdefault(_UNCOMMITTED_KEYS, set()).add((tenant_id, version))

    def _insert_first(self, session: Session, tenant_id: uuid.UUID) -> int | None:
        kek_version, wrapped = self.wrapper.wrap(envelope.new_seed())
        # One statement, one snapshot: racing first writers all compute the same version and the
        # conflict leaves exactly one (a later snapshot sees it active and inserts nothing).
        # Versions are never reused, not even a destroyed one's: the AAD names the version.
        version = session.scalar(_INSERT_FIRST, {"tenant_id": tenant_id, "kek_version": kek_version, "wrapped": wrapped})
        if version is not None:
            log.info("data_key_created", extra={"tenant_id": str(tenant_id), "dek_version": version, "kek_version": kek_version})
        return version

    def version(self, session: Session, tenant_id: uuid.UUID, version: int) -> _Entry:
        """A given key version of the tenant, for decryption (or re-encryption to it)."""
        entry = self._cached(tenant_id, version)
        if entry is not None:
            return entry
        row = session.execute(
            select(TenantDataKey.kek_version, TenantDataKey.wrapped, TenantDataKey.state)
            .where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.version == version)
        ).first()
        if row is None:
            raise KeyMissing(f"the tenant has no data key version {version}")
        if row.state == KeyState.destroyed or row.wrapped is None:
            raise KeyDestroyed(f"data key version {version} of the tenant was destroyed: its ciphertexts are unrecoverable")
        return self._unwrap(session, tenant_id, version, row.kek_version, row.wrapped)

    # --- sealing and opening ---------------------------------------------------------------------

    def seal(self, session: Session, context: EnvelopeContext, plaintext: bytes, *, version: int | None = None) -> Sealed:
        """Encrypt for `context` under the tenant's active key (or the given version)."""
        if version is None:
            version, entry = self.active_version(session, context.tenant_id)
        else:
            entry = self.version(session, context.tenant_id, version)
        return Sealed(
            ciphertext=envelope.encrypt(entry.cipher, context, version, plaintext),
            dek_version=version,
            fingerprint=hmac.new(entry.fingerprint_key, plaintext, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX],
        )

    def open(self, session: Session, context: EnvelopeContext, ciphertext: bytes, *, dek_version: int | None = None) -> bytes:
        """Decrypt a ciphertext sealed for exactly `context`; an `EnvelopeError` otherwise."""
        version = envelope.key_version(ciphertext)
        if dek_version is not None and dek_version != version:
            raise envelope.DecryptionFailed(f"{context.describe()}: the row's key version does not match its ciphertext")
        return envelope.decrypt(self.version(session, context.tenant_id, version).cipher, context, ciphertext)


_installed: DataKeys | None = None


def install(keys: DataKeys | None) -> None:
    """Make `keys` the process's data keys (the app's lifespan does this; None uninstalls)."""
    global _installed
    _installed = keys


def current() -> DataKeys | None:
    return _installed


def installed() -> DataKeys:
    if _installed is None:
        raise KeysUnavailable("no key-encryption key is configured")
    return _installed


# --- where ciphertexts live ----------------------------------------------------------------------


@dataclass(frozen=True)
class SealedColumn:
    """A column of envelope ciphertexts, with its key-version column (and an optional fingerprint)."""

    table: Table
    column: str = "ciphertext"
    version_column: str = "dek_version"
    fingerprint_column: str | None = None
    workspace_column: str | None = "workspace_id"
    id_column: str = "id"

    def context(self, *, tenant_id: uuid.UUID, workspace_id: uuid.UUID | None, row_id: uuid.UUID) -> EnvelopeContext:
        return EnvelopeContext(tenant_id=tenant_id, workspace_id=workspace_id, table=self.table.name, column=self.column,
                               row_id=row_id)


_sealed: dict[tuple[str, str], SealedColumn] = {}


def register_sealed(column: SealedColumn) -> SealedColumn:
    _sealed[(column.table.name, column.column)] = column
    return column


def sealed_columns() -> list[SealedColumn]:
    for module in SEALED_IN:
        importlib.import_module(module)
    return list(_sealed.values())


# --- operator procedures ---------------------------------------------------------------------------


# The platform role of `palisade keys rotate` while it re-encrypts a workspace's sealed columns: the
# provider_credentials policy admits it (no user is a member of every workspace); the API never sets it.
KEY_CUSTODIAN = "key_custodian"


def _tenant_ids(sessions: sessionmaker[Session], only: Sequence[uuid.UUID] | None = None) -> list[uuid.UUID]:
    if only is not None:
        return list(only)
    with sessions() as session, session.begin():
        apply_context(session, DbContext(platform_role="internal_admin"))
        return [t.id for t in tenancy_repo.list_tenants(session)]


def _workspace_ids(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(Workspace.id).order_by(Workspace.id)))


def _record(session: Session, tenant_id: uuid.UUID, actor: audit.Actor, action: str, details: dict[str, object]) -> None:
    audit.record(session, tenant_id=tenant_id, actor=actor, meta=audit.RequestMeta(), category=audit.Category.secret_change,
                 action=action, target_type="tenant_data_key", details=details)


@dataclass(frozen=True)
class Rewrapped:
    tenant_id: uuid.UUID
    dek_versions: list[int]
    kek_version: str


def rewrap_all(sessions: sessionmaker[Session], wrapper: KeyWrapper, *, tenant_ids: Sequence[uuid.UUID] | None = None,
               actor: audit.Actor = OPERATOR) -> list[Rewrapped]:
    """Re-wrap every tenant's (or the given tenants') live data keys under the KEK's current version.

    One transaction per tenant; a rerun after an interruption skips what is already re-wrapped.
    """
    current = wrapper.current_version()
    done: list[Rewrapped] = []
    for tenant_id in _tenant_ids(sessions, tenant_ids):
        with sessions() as session, session.begin():
            apply_context(session, DbContext(tenant_id=tenant_id))
            rows = session.scalars(
                select(TenantDataKey)
                .where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.state != KeyState.destroyed,
                       TenantDataKey.kek_version != current)
                .order_by(TenantDataKey.version)
                .with_for_update()
            ).all()
            if not rows:
                continue
            kek_version = current
            for key in rows:
                assert key.wrapped is not None
                seed = wrapper.unwrap(key.kek_version, key.wrapped)
                kek_version, wrapped = wrapper.wrap(seed)
                # Never trade a working wrapping for one that does not open.
                if not hmac.compare_digest(wrapper.unwrap(kek_version, wrapped), seed):
                    raise RuntimeError(f"re-wrapping data key version {key.version} did not round-trip; nothing was changed")
                key.kek_version, key.wrapped, key.updated_at = kek_version, wrapped, func.now()
            session.flush()
            versions = [k.version for k in rows]
            _record(session, tenant_id, actor, "data_keys.rewrap", {"dek_versions": versions, "kek_version": kek_version})
        log.info("data_keys_rewrapped", extra={"tenant_id": str(tenant_id), "dek_versions": versions, "kek_version": kek_version})
        done.append(Rewrapped(tenant_id, versions, kek_version))
    return done


@dataclass(frozen=True)
class Batch:
    """One committed batch of a re-encryption."""

    tenant_id: uuid.UUID
    workspace_id: uuid.UUID | None
    table: str
    rows: int
    dek_version: int


@dataclass
class Rotation:
    tenant_id: uuid.UUID
    dek_version: int
    reencrypted: int = 0
    retired: list[int] = field(default_factory=list)


def reencrypt(
    sessions: sessionmaker[Session],
    wrapper: KeyWrapper,
    *,
    batch_size: int = 100,
    on_batch: Callable[[Batch], None] | None = None,
    columns: Sequence[SealedColumn] | None = None,
    tenant_ids: Sequence[uuid.UUID] | None = None,
    actor: audit.Actor = OPERATOR,
) -> list[Rotation]:
    """Rotate each tenant's data key and move every sealed row to the new version, in batches.

    A run continues a rotation an earlier run left unfinished (two active versions) instead of
    starting another. `on_batch` is called after each committed batch (progress; raising stops the
    run, which a later run then continues).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    sealed = list(columns) if columns is not None else sealed_columns()
    # A private cache: the run's unwraps never linger in a server's cache.
    keys = DataKeys(wrapper, ttl_seconds=300.0)
    rotations: list[Rotation] = []
    for tenant_id in _tenant_ids(sessions, tenant_ids):
        target = _start_rotation(sessions, keys, tenant_id, actor)
        if target is None:
            continue
        rotation = Rotation(tenant_id, target)
        for _ in range(10):
            rotation.reencrypted += _move_rows(sessions, keys, tenant_id, target, sealed, batch_size, on_batch)
            retired = _retire(sessions, tenant_id, target, sealed, actor)
            if retired is not None:
                rotation.retired = retired
                break
        else:
            raise RuntimeError(f"tenant {tenant_id}: rows kept arriving on old data key versions; run again")
        log.info("data_keys_reencrypted", extra={"tenant_id": str(tenant_id), "dek_version": target,
                                                  "rows": rotation.reencrypted, "retired": rotation.retired})
        rotations.append(rotation)
    keys.forget()
    return rotations


def _start_rotation(sessions: sessionmaker[Session], keys: DataKeys, tenant_id: uuid.UUID, actor: audit.Actor) -> int | None:
    """The version to move rows to: the unfinished rotation's, or a new one. None: nothing to rotate."""
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        # Locking every key row serialises concurrent runs for one tenant and waits out writers.
        rows = session.execute(
            select(TenantDataKey.version, TenantDataKey.state).where(TenantDataKey.tenant_id == tenant_id).with_for_update()
        ).all()
        active = sorted(v for v, state in rows if state == KeyState.active)
        if not active:
            return None
        if len(active) > 1:
            return active[-1]
        version = max(v for v, _ in rows) + 1
        kek_version, wrapped = keys.wrapper.wrap(envelope.new_seed())
        session.add(TenantDataKey(tenant_id=tenant_id, version=version, kek_version=kek_version, wrapped=wrapped,
                                  state=KeyState.active))
        session.flush()
        _record(session, tenant_id, actor, "data_keys.rotate", {"dek_version": version, "previous_dek_version": active[-1]})
        return version


def _movable_versions(session: Session, tenant_id: uuid.UUID, target: int) -> list[int]:
    # Rows on a destroyed version are unrecoverable by design: nothing to move, nothing to wait for.
    return list(session.scalars(
        select(TenantDataKey.version).where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.version < target,
                                            TenantDataKey.state != KeyState.destroyed)
    ))


def _move_rows(sessions: sessionmaker[Session], keys: DataKeys, tenant_id: uuid.UUID, target: int,
               sealed: Sequence[SealedColumn], batch_size: int, on_batch: Callable[[Batch], None] | None) -> int:
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        workspaces = _workspace_ids(session)
        movable = _movable_versions(session, tenant_id, target)
    if not movable:
        return 0
    moved = 0
    for column in sealed:
        t = column.table.c
        for workspace_id in workspaces if column.workspace_column else [None]:
            while True:
                with sessions() as session, session.begin():
                    apply_context(session, DbContext(tenant_id=tenant_id, workspace_id=workspace_id, platform_role=KEY_CUSTODIAN))
                    # FOR UPDATE: a concurrent replacement of the value either commits first (and
                    # is re-encrypted as written) or waits for this batch.
                    rows = session.execute(
                        select(t[column.id_column], t[column.column], t[column.version_column])
                        .where(t.tenant_id == tenant_id, t[column.version_column].in_(movable))
                        .order_by(t[column.id_column])
                        .limit(batch_size)
                        .with_for_update()
                    ).all()
                    if not rows:
                        break
                    for row_id, ciphertext, version in rows:
                        context = column.context(tenant_id=tenant_id, workspace_id=workspace_id, row_id=row_id)
                        plaintext = keys.open(session, context, ciphertext, dek_version=version)
                        moved_to = keys.seal(session, context, plaintext, version=target)
                        del plaintext
                        values = {column.column: moved_to.ciphertext, column.version_column: target}
                        if column.fingerprint_column:
                            values[column.fingerprint_column] = moved_to.fingerprint
                        session.execute(
                            update(column.table).where(t.tenant_id == tenant_id, t[column.id_column] == row_id).values(values)
                        )
                moved += len(rows)
                if on_batch is not None:
                    on_batch(Batch(tenant_id, workspace_id, column.table.name, len(rows), target))
    return moved


def _retire(sessions: sessionmaker[Session], tenant_id: uuid.UUID, target: int, sealed: Sequence[SealedColumn],
            actor: audit.Actor) -> list[int] | None:
    """Retire the versions below `target` if no row uses them; None (nothing changed) if some still do."""
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id))
        # Waits for writers holding an old version (FOR SHARE): their rows are committed before the count.
        old = list(session.scalars(
            select(TenantDataKey.version)
            .where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.state == KeyState.active, TenantDataKey.version < target)
            .with_for_update()
        ))
        movable = _movable_versions(session, tenant_id, target)
        workspaces = _workspace_ids(session)
        for column in sealed:
            t = column.table.c
            for workspace_id in workspaces if column.workspace_column else [None]:
                apply_context(session, DbContext(tenant_id=tenant_id, workspace_id=workspace_id, platform_role=KEY_CUSTODIAN))
                left = select(t[column.id_column]).where(t.tenant_id == tenant_id, t[column.version_column].in_(movable))
                if movable and session.scalar(left.limit(1)) is not None:
                    return None
        apply_context(session, DbContext(tenant_id=tenant_id))
        if old:
            session.execute(
                update(TenantDataKey).where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.version.in_(old))
                .values(state=KeyState.retired, updated_at=func.now())
            )
            _record(session, tenant_id, actor, "data_keys.retire", {"dek_versions": old, "dek_version": target})
        return old


def destroy_tenant_keys(session: Session, tenant_id: uuid.UUID, *, keys: DataKeys | None = None,
                        actor: audit.Actor = OPERATOR, meta: audit.RequestMeta | None = None) -> list[int]:
    """Crypto-shred the tenant: remove every wrapped data key, so all its ciphertexts are unrecoverable.

    Runs in the caller's transaction (the caller commits). Returns the versions destroyed.
    """
    if current_context(session).tenant_id != tenant_id:
        apply_context(session, DbContext(tenant_id=tenant_id))
    versions = sorted(session.scalars(
        update(TenantDataKey)
        .where(TenantDataKey.tenant_id == tenant_id, TenantDataKey.state != KeyState.destroyed)
        .values(state=KeyState.destroyed, wrapped=None, updated_at=func.now())
        .returning(TenantDataKey.version)
        .execution_options(synchronize_session=False)
    ))
    for cache in {id(k): k for k in (keys, _installed) if k is not None}.values():
        cache.forget(tenant_id)
    audit.record(session, tenant_id=tenant_id, actor=actor, meta=meta or audit.RequestMeta(),
                 category=audit.Category.secret_change, action="data_keys.destroy", target_type="tenant_data_key",
                 details={"dek_versions": versions})
    log.info("data_keys_destroyed", extra={"tenant_id": str(tenant_id), "dek_versions": versions})
    return versions
