"""The shared data set: tenants × workspaces × documents on a schema built by the real migrations.

Loaded with COPY as the admin role (which bypasses RLS; the app role could not COPY into a table
with row security), then VACUUM ANALYZE. Documents are written in time order with their workspaces
shuffled, so one workspace's rows are spread over the whole table as in a real install where all
tenants write at once. The database's name carries a fingerprint of the loader, the sizes and the
migration head; a finished load is marked, so an unchanged data set is reused between runs.
Benchmarks only read it (the HTTP benchmark points the users' issuer at its IdP, nothing else).
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, pool, text

from app.db.migrate import head_revision
from bench.kit import UNBOUNDED, BenchDatabase, BenchServer, Scale, execute_autocommit

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

LOADER_VERSION = 1
DATASET_ISSUER = "https://bench-idp.invalid/"
SPAN = timedelta(days=365)
_WORDS = ("brand campaign launch review budget asset draft brief client summary quarterly plan market "
          "audience channel creative copy legal approval schedule report metric insight persona").split()


@dataclass(frozen=True)
class TenantData:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    subject: str
    workspaces: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class Dataset:
    db: BenchDatabase
    tenants: tuple[TenantData, ...]
    documents: int
    load_seconds: float | None  # None: reused from an earlier run

    def describe(self) -> dict[str, Any]:
        return {"database": self.db.name, "tenants": len(self.tenants), "documents": self.documents,
                "loaded_in_s": None if self.load_seconds is None else round(self.load_seconds, 1),
                "reused": self.load_seconds is None}


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _schema_digest() -> str:
    """The migrations' source, so an edited (unreleased) revision is not mistaken for the loaded one."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*.py")):
        digest.update(path.relative_to(MIGRATIONS).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(scale: Scale) -> str:
    key = (f"{LOADER_VERSION}|{scale.tenants}|{scale.workspaces_per_tenant}|{scale.documents_per_workspace}"
           f"|{head_revision()}|{_schema_digest()}")
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_dataset(server: BenchServer, scale: Scale) -> Dataset:
    """The data set for `scale`: reused when an identical one was finished before, else loaded."""
    name = f"palisade_bench_data_{fingerprint(scale)}"
    marker = f"palisade bench data set v{LOADER_VERSION}: complete"
    load_seconds = None
    if not server.finished(name, marker):
        started = time.perf_counter()
        db = server.create(name)
        _load(db, scale)
        server.mark(db, marker)
        load_seconds = time.perf_counter() - started
    db = server.database(name)
    return Dataset(db=db, tenants=_read_tenants(db), documents=scale.documents, load_seconds=load_seconds)


def _load(db: BenchDatabase, scale: Scale) -> None:
    rng = random.Random(20261203)
    start = datetime(2025, 12, 1, tzinfo=UTC)
    tenants: list[TenantData] = []
    for i in range(scale.tenants):
        tenants.append(TenantData(_uuid(rng), _uuid(rng), f"bench-user-{i:05d}",
                                  tuple(_uuid(rng) for _ in range(scale.workspaces_per_tenant))))
    workspaces = [(t, w) for t in tenants for w in t.workspaces]
    # Every workspace gets exactly its share of documents, in an order shuffled across tenants.
    order = [i for i in range(len(workspaces)) for _ in range(scale.documents_per_workspace)]
    rng.shuffle(order)
    filler = " ".join(rng.choice(_WORDS) for _ in range(20_000))
    step = SPAN / max(1, len(order))

    engine = create_engine(db.admin_url, poolclass=pool.NullPool, connect_args=UNBOUNDED)
    try:
        raw = engine.raw_connection()
        conn: Any = raw.driver_connection
        with conn.cursor() as cur:
            with cur.copy("COPY tenants (id, name, slug, created_at) FROM STDIN") as copy:
                for i, t in enumerate(tenants):
                    copy.write_row((t.tenant_id, f"Bench tenant {i}", f"bench-{i:05d}", start))
            with cur.copy("COPY users (tenant_id, id, issuer, subject, created_at) FROM STDIN") as copy:
                for t in tenants:
                    copy.write_row((t.tenant_id, t.user_id, DATASET_ISSUER, t.subject, start))
            with cur.copy("COPY tenant_memberships (tenant_id, user_id, role, created_at) FROM STDIN") as copy:
                for t in tenants:
                    copy.write_row((t.tenant_id, t.user_id, "customer_admin", start))
            with cur.copy("COPY workspaces (tenant_id, id, name, slug, created_at, updated_at) FROM STDIN") as copy:
                for t in tenants:
                    for j, w in enumerate(t.workspaces):
                        copy.write_row((t.tenant_id, w, f"Brand {j}", f"brand-{j}", start, start))
            with cur.copy("COPY workspace_memberships (tenant_id, workspace_id, user_id, role, created_at) FROM STDIN") as copy:
                for t in tenants:
                    for w in t.workspaces:
                        copy.write_row((t.tenant_id, w, t.user_id, "owner", start))
            columns = "tenant_id, id, workspace_id, title, body, author_id, created_at, updated_at"
            with cur.copy(f"COPY documents ({columns}) FROM STDIN") as copy:
                for i, index in enumerate(order):
                    tenant, workspace = workspaces[index]
                    at = start + step * i + timedelta(microseconds=rng.randrange(1000))
                    offset = rng.randrange(len(filler) - 600)
                    body = filler[offset:offset + 440 + rng.randrange(120)]
                    copy.write_row((tenant.tenant_id, _uuid(rng), workspace, f"Document {i}", body, tenant.user_id, at, at))
        conn.commit()
        raw.close()
    finally:
        engine.dispose()
    # The visibility map lets counts use index-only scans, as on a table autovacuum has seen.
    execute_autocommit(db.admin_url, "VACUUM (ANALYZE)")


def _read_tenants(db: BenchDatabase) -> tuple[TenantData, ...]:
    engine = create_engine(db.admin_url, poolclass=pool.NullPool, connect_args=UNBOUNDED)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "select t.id, u.id, u.subject, array_agg(w.id order by w.slug) from tenants t "
                "join users u on u.tenant_id = t.id join workspaces w on w.tenant_id = t.id "
                "group by t.id, u.id, u.subject, t.slug order by t.slug"
            )).all()
    finally:
        engine.dispose()
    return tuple(TenantData(r[0], r[1], r[2], tuple(r[3])) for r in rows)


def point_users_at(dataset: Dataset, issuer: str) -> None:
    """Make the data set's users belong to this run's IdP (whose issuer URL has a fresh port).

    The one write benchmarks make to the shared data set: `users.issuer` is not read by any
    measured query except the sign-in lookup, which is what the new value is for.
    """
    execute_autocommit(dataset.db.superuser_db_url, "update users set issuer = :issuer where issuer <> :issuer",
                       params={"issuer": issuer})
