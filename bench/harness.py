"""What the HTTP benchmarks (`bench.http`, `bench.noisy`) share: identities, app servers, load generators.

- Identity: the real test IdP (panva's oidc-provider under node, `tests.support.idp`) and real access
  tokens from its token endpoint for the data set's users (whose issuer is pointed at it first).
- App servers: `python -m bench.serve` subprocesses (uvicorn, one worker), pinned with `taskset`
  to one core; the load generators are pinned to another, PostgreSQL runs where the kernel puts it.
  Each server's connections carry an `application_name` so its backends can be told apart.
- Closed-loop load: `wrk` (Debian's package; installed here with apt-get when missing and running
  as root), HTTP/1.1 keep-alive, one thread, a generated Lua script that cycles through the given
  requests and prints its summary (count, duration, latency percentiles, errors) as JSON.
- Open-loop load: `python -m bench.openloop` subprocesses (Poisson arrivals, latency from each
  request's scheduled time, so a slow server cannot slow down the arrivals it is measured by).
- Server-side figures: CPU seconds of the server process (`/proc/<pid>/stat`) and PostgreSQL's WAL
  counters (`pg_stat_wal`, cluster-wide).

Every process started here is stopped by the context manager that started it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.dataset import point_users_at
from bench.kit import ROOT, Context, Section, execute_autocommit, percentile
from tests.support.idp import TestIdP, start_idp

AUDIENCE = "palisade-bench"
ORIGIN = "https://app.bench.invalid"  # on the secured side's CORS allow-list: every request carries it
DOCUMENTS = "/api/v1/tenants/{tenant}/workspaces/{workspace}/documents"
STARTUP_TIMEOUT = 180.0  # seconds; a loaded 2-core machine once needed more than 60 to import and start the app
STOP_TIMEOUT = 10.0


# ---- cores -----------------------------------------------------------------------------------


def cores() -> tuple[int | None, int | None]:
    """(the app server's core, the load generators' core); (None, None) when there is only one."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or shutil.which("taskset") is None:
        return None, None
    return allowed[0], allowed[-1]


def pinned(command: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *command] if core is not None else command


# ---- processes -------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    """Signal (SIGTERM: a graceful stop), then SIGKILL if it does not exit in time. Idempotent."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def child_env() -> dict[str, str]:
    """The environment of our children: no PALISADE_* or OTEL_* from the caller's shell, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PALISADE_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle, not waiting on I/O) since boot: /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- identity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """One data-set tenant's user, with a real access token."""

    tenant_id: uuid.UUID
    workspaces: tuple[uuid.UUID, ...]
    subject: str
    token: str

    def paths(self) -> list[str]:
        return [DOCUMENTS.format(tenant=self.tenant_id, workspace=w) for w in self.workspaces]

    def headers(self) -> dict[str, str]:
        # Sent to both sides alike (the bare side ignores them): the same bytes on the wire.
        return {"Authorization": f"Bearer {self.token}", "Origin": ORIGIN}


@contextmanager
def identities(ctx: Context, count: int, workdir: Path) -> Iterator[tuple[TestIdP, list[Caller]]]:
    """The test IdP, and callers for the first `count` tenants of the data set."""
    dataset = ctx.dataset
    idp = start_idp(audience=AUDIENCE, workdir=workdir, ttl=3600)
    try:
        # The only write to the shared data set: its users' issuer becomes this run's IdP
        # (`bench.dataset.point_users_at`; the URL has a fresh port every run).
        point_users_at(dataset, idp.issuer)
        callers = [Caller(t.tenant_id, t.workspaces, t.subject, idp.token(t.subject, claims={"realm_access": {"roles": []}}))
                   for t in dataset.tenants[:count]]
        yield idp, callers
    finally:
        idp.stop()


def with_application_name(url: str, application_name: str) -> str:
    """`url` with `application_name` added to its query (which may already name a socket host)."""
    return make_url(url).update_query_dict({"application_name": application_name}).render_as_string(hide_password=False)


def in_workdir(name: str, body: Callable[[Context, Path], Section], ctx: Context) -> Section:
    """Run an HTTP benchmark: `wrk` present, the results folder made, and a temporary working
    directory where configs, scripts with tokens, logs and client samples live and die (only the
    profiles are kept, next to the results)."""
    ensure_wrk()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"palisade-bench-{name}-") as tmp:
        return body(ctx, Path(tmp))


def secured_settings(ctx: Context, idp: TestIdP, *, per_minute: int, application_name: str) -> dict[str, Any]:
    """The real app's settings: the app role on the data set, the test IdP, every limit at `per_minute`."""
    return {
        "database_url": with_application_name(ctx.dataset.db.app_url, application_name),
        "issuers": [{"issuer": idp.issuer, "audience": idp.audience}],
        "cors_allow_origins": [ORIGIN],
        "rate_limit_per_minute": per_minute,
        "rate_limit_classes": {"auth-failure": per_minute},
    }


# ---- app servers -----------------------------------------------------------------------------


@dataclass
class AppServer:
    name: str
    application_name: str
    port: int
    process: subprocess.Popen[Any]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        """A graceful stop: the app disposes of its engine, so its backends exit (and report their statistics)."""
        stop_process(self.process)


def cpu_per_request(server: AppServer, client: httpx.Client, probes: int, send: Callable[[], httpx.Response]) -> dict[str, Any]:
    """`probes` requests one at a time: server CPU and wall time per request, the answers' statuses and sizes."""
    send()  # warm
    statuses: dict[str, int] = {}
    sizes: list[int] = []
    cpu, began = server.cpu_seconds(), time.perf_counter()
    for _ in range(probes):
        r = send()
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
        sizes.append(len(r.content))
    wall, cpu = time.perf_counter() - began, server.cpu_seconds() - cpu
    return {"cpu_ms": 1000 * cpu / probes, "wall_ms": 1000 * wall / probes, "statuses": statuses,
            "response_bytes": max(sizes), "example": r.text[:400]}


@contextmanager
def app_servers(configs: dict[str, dict[str, Any]], workdir: Path, *, core: int | None) -> Iterator[dict[str, AppServer]]:
    """`python -m bench.serve` for each named config (kind, settings…), all pinned to `core`, started
    together; all stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    servers: dict[str, AppServer] = {}
    try:
        for name, config in configs.items():
            port = free_port()
            config_path = workdir / f"{name}.json"
            config_path.write_text(json.dumps({**config, "port": port}))
            log = workdir / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(pinned([sys.executable, "-m", "bench.serve", str(config_path)], core), cwd=ROOT,
                                           env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            servers[name] = AppServer(name, str(config.get("application_name", name)), port, process, log)
        for server in servers.values():
            _wait_until_live(server)
        yield servers
    finally:
        for server in servers.values():
            stop_process(server.process)


def _wait_until_live(server: AppServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} server exited ({server.process.returncode}):\n"
                                   f"{server.log.read_text(errors='replace')[-4000:]}")
            try:
                if client.get(server.url + "/health/live").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} server did not answer within {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.05)


def wait_for_backends_gone(superuser_url: str, application_name: str, timeout: float = 10.0) -> None:
    """Until no PostgreSQL backend of `application_name` is left: a backend reports its statistics (the
    WAL counters among them) late, but at the latest when it exits."""
    deadline = time.monotonic() + timeout
    while execute_autocommit(superuser_url, "select count(*) from pg_stat_activity where application_name = :a",
                             params={"a": application_name})[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"backends of {application_name} still there after {timeout:.0f} s")
        time.sleep(0.02)


# ---- wrk -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The `wrk` binary; installed from Debian's packages when missing and we run as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("the HTTP benchmarks need `wrk` (the load generator): install Debian's package with "
                           "`sudo apt-get install -y wrk`, then run again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "wrk"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # a fresh machine may not have the package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    found = shutil.which("wrk")
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"`apt-get install wrk` failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return found


_WRK_LUA = """\
-- Generated by bench.harness: cycle through fixed requests, print the summary as JSON.
local raw = {
%(requests)s
}
local requests = {}
local n = 0

function init(args)
  for i, r in ipairs(raw) do
    requests[i] = wrk.format("GET", r[1], r[2])
  end
end

function request()
  n = n %% #requests + 1
  return requests[n]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "mean_us": %%.1f, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_script(requests: list[tuple[str, dict[str, str]]], path: Path) -> Path:
    """A Lua script for wrk that sends `requests` (path, headers) round robin."""
    def lua(s: str) -> str:
        return "[==[" + s + "]==]"
    lines = []
    for target, headers in requests:
        pairs = ", ".join(f"[ {lua(k)} ] = {lua(v)}" for k, v in headers.items())
        lines.append(f"  {{{lua(target)}, {{{pairs}}}}},")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_WRK_LUA % {"requests": "\n".join(lines)})
    return path


@dataclass(frozen=True)
class WrkResult:
    """One wrk run (closed loop: `connections` requests in flight at all times)."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int  # wrk's "status" errors: responses with a status of 400 or more
    socket_errors: int  # connect, read, write errors and timeouts
    server_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3), "rps": round(self.rps, 1),
                "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
                "non_2xx": self.non_2xx, "socket_errors": self.socket_errors,
                "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / max(1, self.requests), 3)}


def wrk(server: AppServer, script: Path, *, seconds: int, connections: int, core: int | None) -> WrkResult:
    """Load `server` with `script` for `seconds` (whole seconds: wrk's resolution)."""
    binary = ensure_wrk()
    command = pinned([binary, "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", "--timeout", "30s",
                      "-s", str(script), server.url], core)
    cpu_before = server.cpu_seconds()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    cpu = server.cpu_seconds() - cpu_before
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout[-2000:]} {result.stderr[-2000:]}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    return WrkResult(requests=s["requests"], seconds=s["duration_us"] / 1e6, p50_ms=s["p50_us"] / 1000,
                     p90_ms=s["p90_us"] / 1000, p99_ms=s["p99_us"] / 1000, max_ms=s["max_us"] / 1000,
                     non_2xx=s["status"], socket_errors=s["connect"] + s["read"] + s["write"] + s["timeout"],
                     server_cpu_s=cpu)


# ---- open loop -------------------------------------------------------------------------------


@dataclass
class OpenLoop:
    """A running `python -m bench.openloop`; `result()` stops it (if still running) and reads its report."""

    process: subprocess.Popen[Any]
    out: Path
    marker: Path

    def first_refusal(self) -> float | None:
        """When (CLOCK_MONOTONIC) it saw its first 429, once it has."""
        try:
            return float(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def result(self, *, stop: bool = False) -> dict[str, Any]:
        if stop:
            stop_process(self.process, sig=signal.SIGTERM, timeout=30)
        else:
            self.process.wait(timeout=600)
        if self.process.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"openloop failed ({self.process.returncode}): {self.out.with_suffix('.log').read_text()[-3000:]}")
        return json.loads(self.out.read_text())


@contextmanager
def open_loop(server: AppServer, name: str, requests: list[tuple[Any, ...]], *, rate: float, seconds: float,
              seed: int, workdir: Path, core: int | None, max_connections: int = 64) -> Iterator[OpenLoop]:
    """Poisson arrivals at `rate`/s for `seconds` (until stopped, if `seconds` is 0) against `server`.
    Each request is (path, headers), a GET, or (path, headers, method, body) (`bench.openloop`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / f"{name}.spec.json"
    out = workdir / f"{name}.result.json"
    marker = workdir / f"{name}.first429"
    for stale in (out, marker):
        stale.unlink(missing_ok=True)
    spec.write_text(json.dumps({"port": server.port, "requests": requests, "rate": rate, "seconds": seconds, "seed": seed,
                                "max_connections": max_connections, "out": str(out), "marker": str(marker)}))
    with out.with_suffix(".log").open("wb") as log:
        process = subprocess.Popen(pinned([sys.executable, "-m", "bench.openloop", str(spec)], core), cwd=ROOT,
                                   env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield OpenLoop(process, out, marker)
    finally:
        stop_process(process, timeout=30)


# ---- PostgreSQL's WAL counters -----------------------------------------------------------------


WAL_FIELDS = ("wal_records", "wal_fpi", "wal_bytes", "wal_write", "wal_sync")


def wal_snapshot(superuser_url: str) -> dict[str, float]:
    """Cluster-wide WAL counters now, and how many other client sessions are busy (they count too)."""
    row = execute_autocommit(
        superuser_url,
        "select json_build_object('wal_records', wal_records, 'wal_fpi', wal_fpi, 'wal_bytes', wal_bytes, "
        "'wal_write', wal_write, 'wal_sync', wal_sync, "
        "'flushed_bytes', pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0'), "
        "'others_active', (select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() "
        "                  and backend_type = 'client backend' and application_name not like 'palisade-bench-%')) "
        "from pg_stat_wal",
    )[0]
    return {k: float(v) for k, v in row.items()}


def wal_delta(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Per request: each WAL counter's growth between two snapshots."""
    per = {k: (after[k] - before[k]) / max(1, requests) for k in (*WAL_FIELDS, "flushed_bytes")}
    per["others_active"] = max(before["others_active"], after["others_active"])
    return per


# ---- profiling (py-spy, when installed) ----------------------------------------------------------

# Where a server's time goes. Each py-spy sample ("function (file:line)" frames, outermost first)
# goes to the part of the *innermost* frame that names one, so the parts add up to 100 %. Libraries
# that only do work on behalf of a caller (SQLAlchemy, psycopg, pydantic) name no part: a SQL
# statement's time goes to whoever ran it (limiter, RBAC, documents query); nor do anyio, asyncio,
# threading and queue (a thread hand-off's locks go to the hand-off). py-spy shortens paths,
# so OpenTelemetry's packages show as `asgi/__init__.py`, `trace/…` and the like.
PROFILE_PARTS = (
    ("OpenTelemetry instrumentation + SDK spans", ("(asgi/__init__.py", "(fastapi/__init__.py", "(trace/", "(attributes/",
                                                   "(context/", "(propagate/", "(baggage/", "_semconv.py", "opentelemetry/",
                                                   "app/observability/tracing.py")),
    ("FastAPI's native telemetry", ("fastapi/telemetry/",)),
    ("logging", ("structlog/", "app/observability/logging.py", "(logging/")),
    ("JWT verification", ("app/auth/",)),
    ("rate limiter (dependency + middleware)", ("app/edge/ratelimit.py",)),
    ("RBAC: tenant + workspace membership", ("app/authz/", "app/tenancy/")),
    ("DB session (begin/commit/context)", ("app/db/",)),
    ("documents query + ORM rows", ("app/knowledge/service.py", "app/knowledge/repository.py", "bench/serve.py")),
    ("response models (DocumentRead.model_validate)", ("app/knowledge/router.py",)),
    ("FastAPI response validation + JSON", ("serialize_response (", "_prepare_response_content (")),
    ("problem+json answers", ("app/problems.py", "app/errors.py")),
    ("edge middlewares (headers, CORS, parameters, body cap)", ("app/edge/http.py", "app/edge/client.py")),
    ("correlation id + 5xx middleware", ("app/observability/http.py", "starlette/middleware/base.py")),
    ("threadpool hand-offs (sync dependencies + endpoint)", ("run_sync_in_worker_thread", "WorkerThread",
                                                           "anyio/to_thread.py", "starlette/concurrency.py",
                                                           "fastapi/concurrency.py")),
    ("FastAPI dependency resolution", ("fastapi/dependencies/",)),
    ("FastAPI/Starlette routing + exception middleware", ("fastapi/", "starlette/")),
    ("uvicorn, HTTP parsing, the event loop", ("uvicorn/", "httptools")),
)


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def py_spy(server: AppServer, seconds: int, out: Path, load: Callable[[], object]) -> dict[str, Any] | None:
    """Profile `server` with py-spy for `seconds` while `load()` runs (it should last at least as long).

    GIL-holding samples only (`--gil`): a single worker is bound by its one interpreter, so this is
    where its capacity goes. None when py-spy is not installed.
    """
    spy = py_spy_binary()
    if spy is None:
        return None
    out.unlink(missing_ok=True)
    record = subprocess.Popen([spy, "record", "--gil", "--rate", "200", "--format", "raw", "--duration", str(seconds),
                               "--pid", str(server.pid), "--output", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        load()
        _, err = record.communicate(timeout=seconds + 60)
    finally:
        stop_process(record)
    if record.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({record.returncode}): {err[-500:]}"}
    stacks: list[tuple[list[str], int]] = []
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return summarise_profile(stacks) | {"file": str(out)}


def summarise_profile(stacks: list[tuple[list[str], int]]) -> dict[str, Any]:
    """Each part's share of the samples (innermost naming frame wins), and the hottest frames."""
    total = sum(c for _, c in stacks) or 1
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for frames, count in stacks:
        part = next((label for frame in reversed(frames) for label, needles in PROFILE_PARTS
                     if any(n in frame for n in needles)), "other")
        parts[part] = parts.get(part, 0) + count
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
    return {"samples": total,
            "parts": {label: round(c / total, 3) for label, c in sorted(parts.items(), key=lambda kv: -kv[1])},
            "top_self": [(frame, round(c / total, 3)) for frame, c in sorted(leaves.items(), key=lambda kv: -kv[1])[:25]]}


def describe_profile(profile: dict[str, Any] | None, cpu_ms: float, minimum: float = 0.02) -> str:
    """One line for a Row's note: each part's share and its ~ms of `cpu_ms` (the CPU per request)."""
    if profile is None:
        return "install py-spy (`pip install py-spy`) to have the server profiled"
    if "parts" not in profile:
        return str(profile.get("error", "no profile"))
    return f"py-spy ({profile['samples']} GIL samples; share, ~ms of the {cpu_ms:.2f} ms CPU per request): " + ", ".join(
        f"{label} {share:.0%} (~{share * cpu_ms:.2f})" for label, share in profile["parts"].items() if share >= minimum)


# ---- open-loop results -------------------------------------------------------------------------


def summary(samples: list[list[float]]) -> dict[str, Any]:
    """Count, p50/p99/max latency (ms; NaN when there are none) and statuses of open-loop samples
    (scheduled time, latency s, status)."""
    ms = [s[1] * 1000 for s in samples]
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(int(s[2]))] = statuses.get(str(int(s[2])), 0) + 1
    if not ms:
        return {"requests": 0, "statuses": statuses, "p50_ms": math.nan, "p99_ms": math.nan}
    return {"requests": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
            "statuses": statuses}


def warm(server: AppServer, requests: list[tuple[str, dict[str, str]]]) -> None:
    """A few requests first (not reported): the JWKS fetched, connections opened, caches filled."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path, headers in requests * 3:
            response = client.get(path, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"warm-up GET {path}: {response.status_code} {response.text[:300]!r}")
