"""What every benchmark shares: sizes, result rows, percentiles, side-by-side timing, the server.

Every figure a benchmark reports is a `Row`: a measured value, the comparison it was measured
against in the same run, their ratio, and the target it is held to. Absolute values are this
machine's; the ratios are what carries over to another.
"""

from __future__ import annotations

import os
import platform
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from app.db.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SERVER_ENV = "PALISADE_BENCH_DATABASE_URL"
ADMIN_ROLE = "palisade_bench_admin"
APP_ROLE = "palisade_bench_app"


@dataclass(frozen=True)
class Scale:
    """How big and how long. `full` is the README's run; `smoke` proves the code still runs."""

    name: str
    tenants: int
    workspaces_per_tenant: int
    documents_per_workspace: int
    seconds: float  # per side of one side-by-side comparison
    rounds: int  # alternations of the two sides (drift on the machine hits both alike)
    http_seconds: float
    audit_events: int  # the chain `palisade audit verify` walks

    @property
    def documents(self) -> int:
        return self.tenants * self.workspaces_per_tenant * self.documents_per_workspace


FULL = Scale("full", tenants=1000, workspaces_per_tenant=2, documents_per_workspace=500, seconds=2.0, rounds=5,
             http_seconds=10.0, audit_events=1_000_000)
SMOKE = Scale("smoke", tenants=6, workspaces_per_tenant=2, documents_per_workspace=20, seconds=0.1, rounds=2,
              http_seconds=1.0, audit_events=2_000)
SCALES = {s.name: s for s in (FULL, SMOKE)}


@dataclass
class Row:
    """One reported figure. `ratio` is value / baseline unless the row says otherwise in `unit`."""

    metric: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "seconds": round(self.seconds, 1),
                "rows": [asdict(r) for r in self.rows], "artifacts": self.artifacts}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_for(fn: Callable[[], Any], seconds: float) -> list[float]:
    """Call `fn` back to back for `seconds`; the latency of each call, in seconds."""
    latencies: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    while True:
        start = clock()
        if start >= end:
            return latencies
        fn()
        latencies.append(clock() - start)


@dataclass(frozen=True)
class Comparison:
    """Two sides measured alternately in the same run: calls per second and latency percentiles."""

    measured: list[float]
    baseline: list[float]
    seconds_each: float

    @staticmethod
    def rate(latencies: list[float]) -> float:
        return len(latencies) / sum(latencies)

    @property
    def throughput_ratio(self) -> float:
        return self.rate(self.measured) / self.rate(self.baseline)

    def latency(self, side: str, p: float) -> float:
        return percentile(getattr(self, side), p)


def side_by_side(measured: Callable[[], Any], baseline: Callable[[], Any], *, scale: Scale,
                 warmup: float | None = None) -> Comparison:
    """Alternate the two sides `scale.rounds` times for `scale.seconds` each, after a warm-up of both."""
    warm = scale.seconds / 2 if warmup is None else warmup
    run_for(measured, warm)
    run_for(baseline, warm)
    a: list[float] = []
    b: list[float] = []
    for i in range(scale.rounds):
        # Swap which side goes first each round: neither always runs on a cooler cache.
        first, second = ((measured, a), (baseline, b)) if i % 2 == 0 else ((baseline, b), (measured, a))
        first[1].extend(run_for(first[0], scale.seconds))
        second[1].extend(run_for(second[0], scale.seconds))
    return Comparison(measured=a, baseline=b, seconds_each=scale.seconds * scale.rounds)


def machine() -> dict[str, Any]:
    """What the absolute figures were measured on."""
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gib": memory, "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


# ---- the PostgreSQL server and its databases ---------------------------------------------------


@dataclass(frozen=True)
class BenchDatabase:
    """One database on the bench server, built by the real migrations.

    The admin role owns it and bypasses RLS: it stands for an application that filters tenants in
    its own code. The app role is the project's (NOBYPASSRLS, no ownership, least grants).
    """

    name: str
    superuser_url: str

    def _url(self, user: str | None) -> str:
        url = make_url(self.superuser_url).set(database=self.name)
        return (url.set(username=user, password=None) if user else url).render_as_string(hide_password=False)

    @property
    def admin_url(self) -> str:
        return self._url(ADMIN_ROLE)

    @property
    def app_url(self) -> str:
        return self._url(APP_ROLE)

    @property
    def superuser_db_url(self) -> str:
        return self._url(None)


# For the loaders, which run as the admin role: the database's session timeouts (migration 0008)
# are for the app's requests, not for a COPY of a million rows or a VACUUM.
UNBOUNDED = {"options": "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"}


def execute_autocommit(url: str, *statements: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Run statements outside a transaction (CREATE DATABASE and friends); the first column of each."""
    engine = create_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT", connect_args=UNBOUNDED)
    out = []
    try:
        with engine.connect() as conn:
            for statement in statements:
                result = conn.execute(text(statement), params or {})
                out.append(result.scalar() if result.returns_rows else None)
    finally:
        engine.dispose()
    return out


class BenchServer:
    """The PostgreSQL the benchmarks run on: `PALISADE_BENCH_DATABASE_URL` (a superuser URL) or a
    private cluster under `.palisade/bench-cluster` that stays between runs (so does the data set)."""

    def __init__(self, superuser_url: str, cluster: Any = None) -> None:
        self.superuser_url = superuser_url
        self._cluster = cluster

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[BenchServer]:
        url = os.environ.get(SERVER_ENV)
        if url:
            yield cls(url.replace("postgresql://", "postgresql+psycopg://", 1))
            return
        from app.db.cluster import LocalCluster

        cluster = LocalCluster(ROOT / ".palisade" / "bench-cluster", port=55433)
        try:
            yield cls(cluster.start(), cluster)
        finally:
            cluster.stop()

    def _ensure_roles(self) -> None:
        execute_autocommit(
            self.superuser_url,
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ADMIN_ROLE}') THEN "
            f"CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE NOSUPERUSER BYPASSRLS; END IF; END $$",
        )

    def finished(self, name: str, marker: str) -> bool:
        """The database exists and was finished: its comment is `marker` (set by `mark`)."""
        found = execute_autocommit(
            self.superuser_url,
            "select shobj_description(oid, 'pg_database') from pg_database where datname = :name",
            params={"name": name},
        )[0]
        return found == marker

    def create(self, name: str) -> BenchDatabase:
        """A new, migrated database `name` (dropped first if a half-built one is in the way)."""
        self._ensure_roles()
        execute_autocommit(self.superuser_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                           f'CREATE DATABASE "{name}" OWNER {ADMIN_ROLE}')
        db = BenchDatabase(name, self.superuser_url)
        upgrade(admin_url=db.admin_url, app_role=APP_ROLE)
        return db

    def scratch(self, purpose: str) -> BenchDatabase:
        """A fresh migrated database for benchmarks that write; drop it with `drop()`."""
        return self.create(f"palisade_bench_{purpose}_{secrets.token_hex(3)}")

    def drop(self, db: BenchDatabase) -> None:
        execute_autocommit(self.superuser_url, f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')

    def mark(self, db: BenchDatabase, marker: str) -> None:
        execute_autocommit(self.superuser_url, f"COMMENT ON DATABASE \"{db.name}\" IS '{marker}'")

    def database(self, name: str) -> BenchDatabase:
        return BenchDatabase(name, self.superuser_url)


@dataclass
class Context:
    """Handed to every benchmark: the scale, the server, the shared read-only data set."""

    scale: Scale
    server: BenchServer
    out_dir: Path
    _dataset: Any = None

    @property
    def dataset(self) -> Any:
        """The 1M-document data set (built on first use, reused while unchanged). Do not write to it."""
        if self._dataset is None:
            from bench.dataset import ensure_dataset

            self._dataset = ensure_dataset(self.server, self.scale)
        return self._dataset
