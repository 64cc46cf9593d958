"""The audit trail's cost: added latency per audited write, chain throughput, `palisade audit verify`.

(a) Added latency. One transaction as the app role with the tenant context (`apply_context`), one
    knowledge document inserted, COMMIT. The audited side calls the project's own
    `app.knowledge.service.create_document` (insert + flush + `audit.record`: one statement that
    locks the chain head, inserts the event and moves the head); the plain side runs the same statements minus the audit event.
    Both sides run with the app's after-commit log hooks installed and the app's JSON logging
    configured (to /dev/null), so the audited side pays for its log line as in production.
    Sides alternate (`kit.side_by_side`); the added latency is p(audited) − p(plain). The log line
    alone is also timed, to split the added latency into the line and `audit.record` itself.
(b) Chain throughput. 8 threads (as a uvicorn worker's thread pool would), each with its own pooled
    connection, write audited documents into one tenant whose chain starts empty, so they all queue
    on that chain head's row lock; against 1 writer, alternating. Afterwards the chain is verified
    with `app.audit.verify.verify_tenant` (gap-free seq, every link and hash) and its length is
    compared with the writes that committed. `service.record` has no retry logic: a writer that
    loses the race waits on the row lock (READ COMMITTED upsert), so any failure is counted as one.
(c) `palisade audit verify`. A chain of `scale.audit_events` events in ONE tenant (the hardest case
    for memory: one transaction, one cursor, one chain), realistic field values, hashed with
    `app.audit.chain.event_hash` exactly as `service.record` does and COPYed as the admin role with
    its chain head; a second database holds a tenth of it. Both are cached between runs (the name
    carries a fingerprint of the loader, the size, the migration head and the hash of a fixed
    sample event, so a change in the chain's encoding rebuilds them). The real
    console script runs as a subprocess with only the app role's URL, as an operator would; wall
    time, its CPU time (`os.wait4`) and peak RSS (VmHWM) are measured at N/10 and N events.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import create_engine, pool, text
from sqlalchemy.orm import Session, sessionmaker

from app.audit.chain import GENESIS, event_hash, plain
from app.audit.service import RequestMeta, install_log_hooks
from app.audit.verify import verify_tenant
from app.auth.principal import Principal
from app.authz.roles import TenantRole, WorkspaceRole
from app.authz.scope import TenantScope, WorkspaceScope
from app.db.migrate import head_revision
from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from app.knowledge.models import Document
from app.knowledge.service import create_document
from app.observability.logging import _SERVER_LOGGERS, configure_logging
from app.tenancy import repository as tenancy_repo
from app.tenancy import service as tenancy
from bench.kit import ROOT, UNBOUNDED, BenchDatabase, Context, Row, Section, percentile, run_for, side_by_side

NAME = "audit"
TITLE = "Audit trail: added latency per write, chain throughput, verify"

LOADER_VERSION = 1
ISSUER = "https://bench-idp.invalid/"
WRITERS = 8
BODY = ("Quarterly campaign brief for the client brand: audience, channels, creative direction, legal "
        "review and the approval schedule. ") * 4  # ~480 bytes, like the data set's bodies
MS = 1000.0
MIB = 1024.0  # /proc reports KiB


@dataclass(frozen=True)
class Writer:
    """One tenant, one workspace and its owner: what an authenticated document write runs as."""

    tenant_id: uuid.UUID
    workspace_id: uuid.UUID
    user_id: uuid.UUID
    subject: str

    def context(self) -> DbContext:
        return DbContext(tenant_id=self.tenant_id, workspace_id=self.workspace_id, user_id=self.user_id)

    def scope(self, session: Session) -> WorkspaceScope:
        meta = RequestMeta(client_ip="203.0.113.7", user_agent="palisade-bench/1", correlation_id=uuid.uuid4().hex)
        return WorkspaceScope(session=session, tenant_id=self.tenant_id, principal=Principal(ISSUER, self.subject),
                              meta=meta, user_id=self.user_id, tenant_role=TenantRole.customer_admin,
                              workspace_id=self.workspace_id, workspace_role=WorkspaceRole.owner)


def _new_writer(sessions: sessionmaker[Session], slug: str) -> Writer:
    """Tenant, admin and workspace through the project's own services (as `palisade dev` seeds them)."""
    subject = f"bench-{slug}"
    with sessions() as session, session.begin():
        tenant = tenancy.bootstrap_tenant(session, name=f"Bench {slug}", slug=slug, admin_issuer=ISSUER, admin_subject=subject)
        found = tenancy_repo.find_member(session, issuer=ISSUER, subject=subject)
        assert found is not None
        user_id = found[0].id
        apply_context(session, DbContext(tenant_id=tenant.id, user_id=user_id))
        scope = TenantScope(session=session, tenant_id=tenant.id, principal=Principal(ISSUER, subject), meta=RequestMeta(),
                            user_id=user_id, tenant_role=TenantRole.customer_admin)
        workspace = tenancy.create_workspace(scope, name="Brand A", slug="brand-a")
        return Writer(tenant.id, workspace.id, user_id, subject)


def audited_write(sessions: sessionmaker[Session], writer: Writer) -> None:
    with sessions() as session, session.begin():
        apply_context(session, writer.context())
        create_document(writer.scope(session), title="Campaign brief", body=BODY)


def plain_write(sessions: sessionmaker[Session], writer: Writer) -> None:
    """`create_document` without its `scope.audit(...)` call: the same statements otherwise."""
    with sessions() as session, session.begin():
        apply_context(session, writer.context())
        scope = writer.scope(session)
        doc = Document(tenant_id=scope.tenant_id, id=uuid.uuid4(), workspace_id=scope.workspace_id, title="Campaign brief",
                       body=BODY, author_id=scope.user_id)
        session.add(doc)
        session.flush()


@contextlib.contextmanager
def app_logging() -> Iterator[None]:
    """The app's JSON logging at INFO, written to /dev/null; the process's logging restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level, saved_structlog = list(root.handlers), root.level, structlog.get_config()
    # configure_logging also points the servers' loggers at the root handler.
    servers = {name: (list(logger.handlers), logger.propagate)
               for name in _SERVER_LOGGERS for logger in [logging.getLogger(name)]}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        configure_logging(json=True, level="INFO")
        try:
            yield
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            structlog.configure(**saved_structlog)
            for name, (handlers, propagate) in servers.items():
                logging.getLogger(name).handlers[:] = handlers
                logging.getLogger(name).propagate = propagate


# ---- (a) added latency per audited write ------------------------------------------------------


ADDED_LATENCY_CAUSE = (
    "MISSED. Profiled (cProfile and timed statements): audit.record is one round trip (the head locked, "
    "the event inserted and the head moved in one statement; PostgreSQL hashes the link under the lock): "
    "~0.7 ms for that round trip and the server-side insert, ~0.3 ms for the after-commit JSON log line, "
    "~0.2 ms more WAL at COMMIT. Fix: send the append in the same psycopg pipeline as the COMMIT "
    "(app/db/session.py), so the audit event costs no round trip of its own"
)


def _added_latency(ctx: Context, sessions: sessionmaker[Session], section: Section) -> None:
    writer = _new_writer(sessions, "latency")
    with app_logging():
        cmp = side_by_side(lambda: audited_write(sessions, writer), lambda: plain_write(sessions, writer), scale=ctx.scale)
    shape = "BEGIN + set_config + INSERT document + COMMIT (app role, RLS)"
    log_line = _log_line_ms(ctx)
    for p in (50, 99):
        audited, bare = cmp.latency("measured", p) * MS, cmp.latency("baseline", p) * MS
        section.add(Row(metric=f"audited document write p{p}", value=audited, unit="ms", baseline=bare, ratio=audited / bare,
                        note=f"baseline: the same write without its audit event; {shape}; "
                             f"{len(cmp.measured)} vs {len(cmp.baseline)} writes"))
        added = audited - bare
        met = added <= 1.0 if p == 50 else None
        note = ("p(audited) − p(plain): the chain append (one statement) + its WAL at COMMIT "
                "+ the after-commit JSON log line")
        section.add(Row(metric=f"added latency per audited write p{p}", value=added, unit="ms",
                        target="≤ 1 ms" if p == 50 else None, met=met,
                        note=note + ("; " + ADDED_LATENCY_CAUSE if met is False else "")))
    section.add(Row(metric="of which: the after-commit audit log line", value=log_line, unit="ms",
                    note="p50 of one `palisade.audit` INFO line through the app's JSON logging and scrubber "
                         "(app.observability), timed alone; the rest of the added latency is audit.record"))
    section.add(Row(metric="audited writes/s vs plain", value=cmp.rate(cmp.measured), unit="writes/s",
                    baseline=cmp.rate(cmp.baseline), ratio=cmp.throughput_ratio, note="one connection, back to back"))


def _log_line_ms(ctx: Context) -> float:
    """What `service.install_log_hooks` emits per committed event, as a representative line."""
    line = {name: plain(value) for name, value in _SAMPLE_LINE.items()}
    logger = logging.getLogger("palisade.audit")
    with app_logging():
        latencies = run_for(lambda: logger.info("audit_event", extra={"audit": line}), ctx.scale.seconds)
    return percentile(latencies, 50) * MS


# A typical event (fixed values: its hash also fingerprints the chain encoding, see `_chain_fingerprint`).
_SAMPLE_LINE: dict[str, Any] = {
    "tenant_id": uuid.UUID(int=1 << 120), "seq": 12345, "id": uuid.UUID(int=2 << 120),
    "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "category": "content_change",
    "action": "document.update", "outcome": "success", "workspace_id": uuid.UUID(int=3 << 120), "actor_type": "user",
    "actor_user_id": uuid.UUID(int=4 << 120), "actor_issuer": ISSUER, "actor_subject": "bench-latency", "actor_role": "owner",
    "target_type": "document", "target_id": str(uuid.UUID(int=5 << 120)), "client_ip": "203.0.113.7",
    "user_agent": "palisade-bench/1 (Ünïcødé)", "correlation_id": "0" * 32, "trace_id": None,
    "details": {"changed": ["title", "body"]}, "prev_hash": "0" * 64, "hash": "f" * 64,
}


# ---- (b) chain throughput with concurrent writers -----------------------------------------------


@dataclass
class Tally:
    committed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _burst(sessions: sessionmaker[Session], writer: Writer, writers: int, seconds: float, tally: Tally) -> None:
    """`writers` threads write audited documents into one tenant for `seconds`."""
    start = threading.Barrier(writers + 1)
    lock = threading.Lock()

    def work() -> None:
        latencies: list[float] = []
        failures: list[str] = []
        start.wait()
        end = time.perf_counter() + seconds
        while True:
            began = time.perf_counter()
            if began >= end:
                break
            try:
                audited_write(sessions, writer)
            except Exception as exc:  # noqa: BLE001 - a failed write is what this counts
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append(time.perf_counter() - began)
        with lock:
            tally.latencies.extend(latencies)
            tally.failures.extend(failures)
            tally.committed += len(latencies)

    threads = [threading.Thread(target=work, name=f"audit-writer-{i}") for i in range(writers)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    tally.seconds += time.perf_counter() - began


def _throughput(ctx: Context, db: BenchDatabase, section: Section) -> None:
    engine = make_engine(db.app_url, pool_size=WRITERS)
    sessions = make_session_factory(engine)
    install_log_hooks(sessions)
    try:
        writer = _new_writer(sessions, "chain")  # its chain starts here: tenant.create, workspace.create
        setup_events = 2
        warm, single, many = Tally(), Tally(), Tally()
        with app_logging():
            _burst(sessions, writer, 1, ctx.scale.seconds / 2, warm)
            for i in range(ctx.scale.rounds):
                order = ((1, single), (WRITERS, many)) if i % 2 == 0 else ((WRITERS, many), (1, single))
                for writers, tally in order:
                    _burst(sessions, writer, writers, ctx.scale.seconds, tally)
        result = verify_tenant(sessions, writer.tenant_id)
    finally:
        engine.dispose()
    many_rate, single_rate = many.committed / many.seconds, single.committed / single.seconds
    section.add(Row(metric=f"chain throughput, {WRITERS} writers in one tenant", value=many_rate, unit="events/s",
                    baseline=single_rate, ratio=many_rate / single_rate,
                    note=f"baseline: 1 writer; threads of one process, one connection each; "
                         f"{many.committed} + {single.committed} events. One tenant's audited writes are serial "
                         "by design: each holds the chain head's row lock from its append to its COMMIT "
                         "(WAL flush included), so more writers queue rather than add throughput"))
    for p in (50, 99):
        queued, alone = percentile(many.latencies, p) * MS, percentile(single.latencies, p) * MS
        section.add(Row(metric=f"audited write p{p} under {WRITERS} writers in one tenant", value=queued, unit="ms",
                        baseline=alone, ratio=queued / alone,
                        note="baseline: 1 writer; the difference is queueing on the chain head's row lock"))
    # Each write that committed added exactly one event, and nothing else wrote to this tenant.
    expected = setup_events + warm.committed + single.committed + many.committed
    intact = result.broken is None and result.events == expected
    broken = f"BROKEN: {result.broken.kind}: {result.broken.message}" if result.broken else ""
    section.add(Row(metric="chain after the concurrent writes: events verified", value=result.events, unit="events",
                    baseline=expected, target="no gaps or breaks", met=intact,
                    note=broken or ("verify_tenant: seq 1..n gap-free, every prev_hash and hash recomputed, head "
                                    "matches; baseline = events committed (setup, warm-up and measured writes)")))
    failures = warm.failures + single.failures + many.failures
    section.add(Row(metric="writers failed / retries exhausted", value=len(failures), unit="writes", target="0",
                    met=not failures,
                    note=(failures[0] if failures else
                          "service.record has no retry logic: writers queue on the chain head's row lock "
                          "(READ COMMITTED upsert waits, never a serialization failure), so none can be exhausted")))


# ---- (c) palisade audit verify over a long chain -------------------------------------------------


def _chain_fingerprint(events: int) -> str:
    # The sample's hash changes when the chain's encoding does: then the stored chain is rebuilt.
    key = f"{LOADER_VERSION}|{events}|{head_revision()}|{event_hash(_SAMPLE_LINE)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


_ACTIONS = (
    ("content_change", "document.create", "document"), ("content_change", "document.update", "document"),
    ("content_change", "document.update", "document"), ("data_deletion", "document.delete", "document"),
    ("authentication", "session.start", "user"), ("data_export", "audit_events.export", "audit_trail"),
    ("role_change", "membership.role", "membership"), ("invitation", "invitation.create", "invitation"),
    ("workspace_crossing", "document.copy", "document"), ("configuration_change", "workspace.update", "workspace"),
)
_ROLES = ("owner", "admin", "multi_account_manager", "member", "customer_admin")
_AGENTS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
           "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
           "python-httpx/0.28.1")
_COLUMNS = ("tenant_id", "id", "seq", "prev_hash", "hash", "occurred_at", "category", "action", "outcome", "workspace_id",
            "actor_type", "actor_user_id", "actor_issuer", "actor_subject", "actor_role", "target_type", "target_id",
            "client_ip", "user_agent", "correlation_id", "trace_id", "details")


def _events(tenant_id: uuid.UUID, count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """`count` chained events as `service.record` builds them (the dict `as_dict` returns)."""
    users = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(40)]
    workspaces = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(4)]
    ips = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(200)]
    at = datetime(2025, 12, 1, tzinfo=UTC)
    step = timedelta(days=365) / max(1, count)
    prev = GENESIS
    for seq in range(1, count + 1):
        category, action, target_type = _ACTIONS[rng.randrange(len(_ACTIONS))]
        user = rng.randrange(len(users))
        details: dict[str, Any] = {"changed": ["title", "body"]} if action == "document.update" else {}
        event = {
            "tenant_id": tenant_id, "seq": seq, "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "occurred_at": at + step * seq + timedelta(microseconds=rng.randrange(1000)),
            "category": category, "action": action, "outcome": "success" if rng.random() < 0.97 else "denied",
            "workspace_id": workspaces[user % len(workspaces)], "actor_type": "user", "actor_user_id": users[user],
            "actor_issuer": ISSUER, "actor_subject": f"user-{user:03d}", "actor_role": _ROLES[user % len(_ROLES)],
            "target_type": target_type, "target_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "client_ip": ips[rng.randrange(len(ips))], "user_agent": _AGENTS[user % len(_AGENTS)],
            "correlation_id": f"{rng.getrandbits(128):032x}", "trace_id": f"{rng.getrandbits(128):032x}",
            "details": details, "prev_hash": prev,
        }
        event["hash"] = prev = event_hash(event)
        yield event


def _build_chain(ctx: Context, events: int) -> tuple[BenchDatabase, uuid.UUID, float | None]:
    """The cached database holding one tenant's chain of `events` events; (db, tenant, build seconds or None)."""
    server = ctx.server
    name = f"palisade_bench_audit_{_chain_fingerprint(events)}"
    marker = f"palisade bench audit chain v{LOADER_VERSION}: {events} events, complete"
    rng = random.Random(20261204 + events)
    tenant_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    if server.finished(name, marker):
        return server.database(name), tenant_id, None
    started = time.perf_counter()
    db = server.create(name)
    engine = create_engine(db.admin_url, poolclass=pool.NullPool, connect_args=UNBOUNDED)
    try:
        raw = engine.raw_connection()
        conn: Any = raw.driver_connection
        created = datetime(2025, 12, 1, tzinfo=UTC)
        last: tuple[int, str] = (0, GENESIS)
        with conn.cursor() as cur:
            cur.execute("insert into tenants (id, name, slug, created_at) values (%s, %s, %s, %s)",
                        (tenant_id, "Bench audit tenant", "bench-audit", created))
            with cur.copy(f"COPY audit_events ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                for e in _events(tenant_id, events, rng):
                    copy.write_row(tuple(json.dumps(e[c]) if c == "details" else e[c] for c in _COLUMNS))
                    last = (e["seq"], e["hash"])
            cur.execute("insert into audit_chain_heads (tenant_id, seq, hash) values (%s, %s, %s)", (tenant_id, *last))
        conn.commit()
        raw.close()
    finally:
        engine.dispose()
    execute = create_engine(db.admin_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT", connect_args=UNBOUNDED)
    with execute.connect() as c:
        c.execute(text("VACUUM (ANALYZE) audit_events, audit_chain_heads, tenants"))  # as autovacuum would have
    execute.dispose()
    server.mark(db, marker)
    return db, tenant_id, time.perf_counter() - started


@dataclass(frozen=True)
class VerifyRun:
    seconds: float
    cpu_seconds: float  # the child's user + system time
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def _high_water_kib(pid: int) -> int | None:
    """The process's peak resident set since its exec (VmHWM), while it runs."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None  # gone, or a zombie (its memory is already released)


def run_verify(db: BenchDatabase) -> VerifyRun:
    """`palisade audit verify` as an operator runs it: the console script, the app role's URL only.

    Peak memory is VmHWM polled every 20 ms: the child's `ru_maxrss` would not do, because it
    starts from the forking parent's resident set (this bench process, bigger than verify).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALISADE_")}
    env["PALISADE_DATABASE_URL"] = db.app_url
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "palisade"), "audit", "verify"], cwd=tmp, env=env,
                                stdout=out, stderr=err)
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.02):
                kib = _high_water_kib(proc.pid)
                if kib is not None:
                    peak[0] = max(peak[0], kib)

        poller = threading.Thread(target=poll, name="verify-rss")
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU times
        seconds = time.perf_counter() - started
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return VerifyRun(seconds, usage.ru_utime + usage.ru_stime, peak[0] / MIB, proc.returncode, out.read(), err.read())


VERIFY_CAUSE = (
    "MISSED. Verify is CPU-bound in one Python process (compare its own CPU with the wall time and the "
    "load average: on a shared machine it gets a fraction of a core). Profiled with py-spy: about half "
    "fetching and decoding rows (psycopg, SQLAlchemy Core), half the canonical JSON and SHA-256 of each "
    "event (the timestamp's isoformat alone ~2 µs). Already done: Core rows instead of ORM objects, "
    "uuid/inet/jsonb read as text with cached parsing, a faster canonical encoder, the next batch read "
    "ahead by a thread (1M events: 120 s before). What would fix the rest: verify seq ranges in parallel "
    "processes under one exported snapshot (pg_export_snapshot / SET TRANSACTION SNAPSHOT)"
)


def _verify(ctx: Context, section: Section) -> None:
    n = ctx.scale.audit_events
    small_n = max(1, n // 10)
    big_db, big_tenant, big_build = _build_chain(ctx, n)
    small_db, small_tenant, small_build = _build_chain(ctx, small_n)
    load = os.getloadavg()
    small, big = run_verify(small_db), run_verify(big_db)
    section.artifacts["audit_verify"] = {
        "loadavg_1_5_15_before": load,
        "tenants": "one tenant holds the whole chain (plus the empty platform chain)",
        "databases": {str(n): big_db.name, str(small_n): small_db.name},
        "built_in_s": {str(n): big_build, str(small_n): small_build},
        "stdout": {str(n): big.stdout.strip()[-500:], str(small_n): small.stdout.strip()[-500:]},
        "stderr": {str(n): big.stderr.strip()[-2000:], str(small_n): small.stderr.strip()[-2000:]},
    }
    ok_big = big.returncode == 0 and f"ok {big_tenant}: {n} events" in big.stdout
    ok_small = small.returncode == 0 and f"ok {small_tenant}: {small_n} events" in small.stdout
    met = ok_big and big.seconds < 30
    section.add(Row(metric=f"palisade audit verify, {n:,} events", value=big.seconds, unit="s", baseline=small.seconds,
                    ratio=big.seconds / small.seconds, target="< 30 s", met=met,
                    note=f"baseline: {small_n:,} events; wall time of the console script incl. start-up; "
                         f"verify's own CPU {big.cpu_seconds:.1f} s / {small.cpu_seconds:.1f} s; "
                         f"exit {big.returncode} / {small.returncode}; {os.cpu_count()} cores, load average "
                         f"{load[0]:.1f} before the runs"
                         + ("" if ok_big and ok_small else f"; NOT OK: {(big.stderr or small.stderr).strip()[-300:]}")
                         + ("" if met else "; " + VERIFY_CAUSE)))
    if big.seconds > small.seconds:  # at smoke size start-up noise can swamp the difference
        section.add(Row(metric="verify rate (marginal)", value=(n - small_n) / (big.seconds - small.seconds),
                        unit="events/s", note=f"({n:,} − {small_n:,}) events / (t_N − t_N/10): start-up excluded"))
    ratio = big.peak_rss_mib / small.peak_rss_mib
    section.add(Row(metric=f"verify peak RSS at {n:,} events", value=big.peak_rss_mib, unit="MiB", baseline=small.peak_rss_mib,
                    ratio=ratio, target="constant (≤ 1.10× at 10× the events)", met=ok_big and ok_small and ratio <= 1.10,
                    note=f"baseline: {small_n:,} events; VmHWM of the verify process (polled every 20 ms)"))


def run(ctx: Context) -> Section:
    began = time.perf_counter()
    section = Section(NAME, TITLE)
    section.artifacts["loadavg_1_5_15_at_start"] = os.getloadavg()
    db = ctx.server.scratch("audit")
    try:
        engine = make_engine(db.app_url, pool_size=1)
        sessions = make_session_factory(engine)
        install_log_hooks(sessions)
        try:
            _added_latency(ctx, sessions, section)
        finally:
            engine.dispose()
        _throughput(ctx, db, section)
    finally:
        ctx.server.drop(db)
    _verify(ctx, section)
    section.seconds = time.perf_counter() - began
    return section

