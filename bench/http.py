"""Secured HTTP vs bare: what the whole secured request path costs in requests/s and latency.

Measured: `GET /api/v1/tenants/{t}/workspaces/{w}/documents` (the newest 50 documents) on the
shared data set through two uvicorn servers, one worker each, both pinned to the same core:

- secured: the real app (`app.main.create_app`) as the app role: a real RS256 access token from the
  test IdP verified against its JWKS, correlation id, security headers, CORS (every request carries
  an allowed `Origin`), the parameter-pollution guard, the body cap, the PostgreSQL rate limiter
  (one hit per request; the per-minute limit is set far above what the run sends, so this measures
  the limiter's cost, never its refusals), RBAC (tenant and workspace membership read on every
  request), the RLS session with its tenant context, tracing as configured by default (spans
  made, none exported), JSON logs at INFO.
- bare: one FastAPI route at the same path (`bench.serve.bare_app`) running the project's own query
  (`knowledge.repository.latest_query`) plus an explicit `WHERE tenant_id = …` as the admin role,
  which bypasses RLS; no auth, no middleware, the same `DocumentPage` response model.

Load: `wrk`, one thread pinned to another core, HTTP/1.1 keep-alive, 16 connections (enough to
keep one worker busy), the same requests to both sides (16 tenants × 2 workspaces round robin,
each with its user's token and the Origin header, which the bare side ignores). After a warm-up of
each side, the sides alternate (secured, bare, bare, secured, …) `scale.rounds` times for
`scale.http_seconds` each. Requests/s: all requests of a side over its total time. p50/p99: the
median over the rounds of wrk's per-round percentiles (closed loop, so latency at saturation).
Before measuring, every target is fetched from both sides: both must answer 200 with the same JSON,
and the secured answer must carry its layers' headers (correlation id, CSP, CORS, RateLimit-*).

Also measured: CPU per request of the server process (`/proc`) and of its PostgreSQL backends, and
whether the rate limiter adds a synchronous commit per request: a fresh server of each kind gets
sequential requests (one at a time, so commits cannot share a flush) and the cluster's WAL
counters (`pg_stat_wal`: fsyncs, writes, records, bytes) are read before its first request and
after it has stopped and its backends are gone (backends report these counters late, at the
latest on exit). The counters are cluster-wide: the cluster's rate with none of our requests,
measured just before for as long, is subtracted (raw figures are in the note), and other busy
sessions are reported.

When the throughput target is missed and py-spy is installed (`pip install py-spy`, not a project
dependency), both servers are profiled under the same load (GIL-holding samples: where a worker's
one core goes), and each part of the request path (`bench.harness.PROFILE_PARTS`) is reported as
~ms of CPU per request, secured vs bare, largest difference first.
"""

from __future__ import annotations

import os
import secrets
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    WAL_FIELDS,
    AppServer,
    Caller,
    app_servers,
    cores,
    cpu_seconds,
    identities,
    in_workdir,
    machine_busy_seconds,
    py_spy,
    secured_settings,
    wait_for_backends_gone,
    wal_delta,
    wal_snapshot,
    with_application_name,
    wrk,
    wrk_script,
)
from bench.kit import Context, Row, Section, execute_autocommit

NAME = "http"
TITLE = "Secured HTTP vs bare"
TARGET = 0.75
CONNECTIONS = 16
CALLERS = 16
UNLIMITED = 100_000_000  # requests per minute per user: never reached, so every request is counted and admitted
# Proof on every secured answer that its layers ran: correlation id, security headers, CORS, rate limit.
SECURED_HEADERS = ("x-correlation-id", "content-security-policy", "access-control-allow-origin", "ratelimit-limit")


def _backend_cpu(superuser_url: str, application_name: str) -> dict[int, float]:
    pids = execute_autocommit(superuser_url, "select coalesce(json_agg(pid), '[]') from pg_stat_activity "
                              "where application_name = :a", params={"a": application_name})[0]
    out: dict[int, float] = {}
    for pid in pids:
        try:
            out[int(pid)] = cpu_seconds(int(pid))
        except OSError:
            continue
    return out


def _measure(ctx: Context, server: AppServer, script: Path, seconds: int, core: int | None) -> dict[str, Any]:
    url = ctx.dataset.db.superuser_db_url
    before, busy = _backend_cpu(url, server.application_name), machine_busy_seconds()
    result = wrk(server, script, seconds=seconds, connections=CONNECTIONS, core=core)
    after, busy = _backend_cpu(url, server.application_name), machine_busy_seconds() - busy
    pg_cpu = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    out = result.as_dict()
    out["postgres_cpu_ms_per_request"] = round(1000 * pg_cpu / max(1, result.requests), 3)
    out["server_cpu_utilisation"] = round(result.server_cpu_s / result.seconds, 3)
    # The whole machine (server, its PostgreSQL backends, wrk, and anything else that ran meanwhile).
    out["machine_busy_cores"] = round(busy / result.seconds, 3)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(f"{server.name}: {result.non_2xx} non-2xx answers and {result.socket_errors} socket errors "
                           f"under load; see {server.log}")
    return out


def _same_answers(secured: AppServer, bare: AppServer, requests: list[tuple[str, dict[str, str]]]) -> int:
    """Every target answers 200 with the same JSON on both sides; returns the items per page."""
    items = 0
    with httpx.Client(timeout=30) as client:
        for path, headers in requests:
            a = client.get(secured.url + path, headers=headers)
            b = client.get(bare.url + path, headers=headers)
            if a.status_code != 200 or b.status_code != 200:
                raise RuntimeError(f"GET {path}: secured {a.status_code} {a.text[:300]!r}, bare {b.status_code} {b.text[:300]!r}")
            if a.json() != b.json():
                raise RuntimeError(f"GET {path}: the secured and the bare answers differ")
            missing = [h for h in SECURED_HEADERS if h not in a.headers]
            if missing:
                raise RuntimeError(f"GET {path}: the secured answer lacks {missing}: is every layer on?")
            items = len(a.json()["items"])
    return items


def _wal_window(url: str, work: Callable[[], int]) -> dict[str, Any]:
    """The cluster's WAL counters' growth while `work()` runs (it returns how many requests it sent)."""
    before = wal_snapshot(url)
    started = time.perf_counter()
    sent = work()
    after = wal_snapshot(url)
    return {"requests": sent, "seconds": time.perf_counter() - started, "total": wal_delta(before, after, 1)}


def _idle(seconds: float) -> int:
    time.sleep(seconds)
    return 0


def _wal_probe(ctx: Context, server: AppServer, requests: list[tuple[str, dict[str, str]]], seconds: float) -> dict[str, Any]:
    """Sequential requests to a server that has served none yet; the cluster's WAL counters from before
    the first to after the server has stopped and its backends have gone (and so reported them)."""
    url = ctx.dataset.db.superuser_db_url

    def work() -> int:
        sent = 0
        started = time.perf_counter()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while time.perf_counter() - started < seconds:
                path, headers = requests[sent % len(requests)]
                response = client.get(path, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{server.name} WAL probe: {response.status_code} {response.text[:300]!r}")
                sent += 1
        server.stop()
        wait_for_backends_gone(url, server.application_name)
        return sent

    return _wal_window(url, work)


def _wal_per_request(probe: dict[str, Any], background: dict[str, Any]) -> dict[str, float]:
    """Per request: raw, and less the background rate (the cluster's WAL activity with none of ours)."""
    out: dict[str, float] = {"requests": probe["requests"], "mean_ms": 1000 * probe["seconds"] / probe["requests"],
                             "others_active": max(probe["total"]["others_active"], background["total"]["others_active"])}
    for key in (*WAL_FIELDS, "flushed_bytes"):
        raw = probe["total"][key]
        rate = background["total"][key] / background["seconds"]
        out[key] = raw / probe["requests"]
        out[f"{key}_less_background"] = (raw - rate * probe["seconds"]) / probe["requests"]
        out[f"{key}_background_per_s"] = rate
    return out


def compare_profiles(secured: dict[str, Any] | None, secured_cpu: float, bare: dict[str, Any] | None,
                     bare_cpu: float, minimum: float = 0.1) -> str:
    """Where the secured side's extra CPU goes: each profile part's ~ms per request, secured vs bare."""
    if secured is None or bare is None:
        return "install py-spy (`pip install py-spy`) to have both sides profiled"
    if "parts" not in secured or "parts" not in bare:
        return f"profiling failed: {secured.get('error') or bare.get('error')}"
    labels = set(secured["parts"]) | set(bare["parts"])
    ms = {label: (secured["parts"].get(label, 0.0) * secured_cpu, bare["parts"].get(label, 0.0) * bare_cpu) for label in labels}
    ranked = sorted(ms.items(), key=lambda kv: kv[1][1] - kv[1][0])
    return (f"py-spy ({secured['samples']} + {bare['samples']} GIL samples), ~ms of CPU per request secured vs bare, "
            "by part: " + ", ".join(f"{label} {s:.2f} vs {b:.2f}" for label, (s, b) in ranked if abs(s - b) >= minimum))


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def run(ctx: Context) -> Section:
    return in_workdir(NAME, _run, ctx)


def _run(ctx: Context, workdir: Path) -> Section:
    section = Section(NAME, TITLE)
    scale = ctx.scale
    app_core, load_core = cores()
    seconds = max(1, round(scale.http_seconds))
    warmup = max(1, round(scale.http_seconds / 3))
    superuser = ctx.dataset.db.superuser_db_url
    section.artifacts["postgres"] = dict(zip(
        ("fsync", "synchronous_commit", "wal_sync_method", "version", "rate_limit_windows_persistence"),
        execute_autocommit(superuser, "show fsync", "show synchronous_commit", "show wal_sync_method", "show server_version",
                           "select case relpersistence when 'u' then 'unlogged' when 'p' then 'logged' else relpersistence::text "
                           "end from pg_class where oid = to_regclass('public.rate_limit_windows')"),
        strict=True))
    section.artifacts["cores"] = {"app_server": app_core, "load_generator": load_core}

    run_id = secrets.token_hex(3)
    with identities(ctx, CALLERS, workdir / "idp") as (idp, callers):
        requests = _requests(callers)
        script = wrk_script(requests, workdir / "documents.lua")
        configs: dict[str, dict[str, Any]] = {}
        # The measured pair, and a second pair for the WAL probe (fresh servers: see the docstring).
        for suffix in ("", "-wal"):
            secured_name, bare_name = f"palisade-bench-http-secured{suffix}-{run_id}", f"palisade-bench-http-bare{suffix}-{run_id}"
            configs[f"secured{suffix}"] = {
                "kind": "secured", "application_name": secured_name,
                "settings": secured_settings(ctx, idp, per_minute=UNLIMITED, application_name=secured_name)}
            configs[f"bare{suffix}"] = {"kind": "bare", "application_name": bare_name,
                                        "database_url": with_application_name(ctx.dataset.db.admin_url, bare_name)}
        rounds: dict[str, list[dict[str, Any]]] = {"secured": [], "bare": []}
        with app_servers(configs, workdir, core=app_core) as servers:
            # First, while no other server of ours has touched the database (none has statistics pending).
            probe_seconds = max(1.0, scale.http_seconds / 3)
            background = _wal_window(superuser, lambda: _idle(probe_seconds))
            wal = {side: _wal_per_request(_wal_probe(ctx, servers[f"{side}-wal"], requests, probe_seconds), background)
                   for side in ("secured", "bare")}
            secured, bare = servers["secured"], servers["bare"]
            items = _same_answers(secured, bare, requests)
            for server in (secured, bare):
                _measure(ctx, server, script, warmup, load_core)
            for i in range(scale.rounds):
                order = (secured, bare) if i % 2 == 0 else (bare, secured)
                for server in order:
                    rounds[server.name].append(_measure(ctx, server, script, seconds, load_core))
            rate = {side: sum(r["requests"] for r in rs) / sum(r["seconds"] for r in rs) for side, rs in rounds.items()}
            ratio = rate["secured"] / rate["bare"]
            profiles: dict[str, Any] = {}
            if ratio < TARGET:
                spy = max(1, seconds // 2)
                for server in (secured, bare):
                    profiles[server.name] = py_spy(
                        server, spy, ctx.out_dir / f"{NAME}-{server.name}-profile.txt",
                        lambda server=server: wrk(server, script, seconds=spy + 1, connections=CONNECTIONS, core=load_core))

    section.artifacts.update(rounds=rounds, wal_per_request=wal, items_per_page=items, requests=len(requests),
                             profiles=profiles)
    _rows(section, rounds, rate, ratio, wal, profiles, seconds, scale.rounds,
          section.artifacts["postgres"]["rate_limit_windows_persistence"])
    return section


def _requests(callers: list[Caller]) -> list[tuple[str, dict[str, str]]]:
    return [(path, caller.headers()) for caller in callers for path in caller.paths()]


def _rows(section: Section, rounds: dict[str, list[dict[str, Any]]], rate: dict[str, float], ratio: float,
          wal: dict[str, dict[str, Any]], profiles: dict[str, Any], seconds: int, n: int, limiter_table: str | None) -> None:
    def cpu(side: str, key: str) -> float:
        return sum(r[key] * r["requests"] for r in rounds[side]) / sum(r["requests"] for r in rounds[side])

    load = f"wrk -c{CONNECTIONS}, {n}×{seconds} s per side, alternating; 1 uvicorn worker each"
    busy = {side: statistics.mean(r["machine_busy_cores"] for r in rounds[side]) for side in rounds}
    note = f"{load}; machine busy {busy['secured']:.2f} vs {busy['bare']:.2f} of {os.cpu_count()} cores (everything included)"
    if ratio < TARGET:
        s_cpu, b_cpu = cpu("secured", "server_cpu_ms_per_request"), cpu("bare", "server_cpu_ms_per_request")
        note += f"; MISSED: secured uses {s_cpu:.2f} ms of server CPU per request against {b_cpu:.2f} ms bare"
        note += "; " + compare_profiles(profiles.get("secured"), s_cpu, profiles.get("bare"), b_cpu)
    section.add(Row(metric="GET documents: requests/s, secured ÷ bare", value=rate["secured"], unit="req/s",
                    baseline=rate["bare"], ratio=ratio, target=f"≥ {TARGET}", met=ratio >= TARGET, note=note))
    for p in ("p50", "p99"):
        s, b = _median(rounds["secured"], f"{p}_ms"), _median(rounds["bare"], f"{p}_ms")
        section.add(Row(metric=f"GET documents: {p} latency at saturation, secured vs bare", value=s, unit="ms",
                        baseline=b, ratio=s / b, note=f"median of the {n} rounds' wrk {p}; {load}"))
    for key, label in (("server_cpu_ms_per_request", "app server CPU per request"),
                       ("postgres_cpu_ms_per_request", "PostgreSQL backend CPU per request")):
        s, b = cpu("secured", key), cpu("bare", key)
        section.add(Row(metric=f"GET documents: {label}, secured vs bare", value=s, unit="ms", baseline=b,
                        ratio=s / b if b else None))
    s_wal, b_wal = wal["secured"], wal["bare"]
    value, baseline = s_wal["wal_sync_less_background"], b_wal["wal_sync_less_background"]
    others = s_wal["others_active"]
    section.add(Row(
        metric="WAL fsyncs per request (rate limiter's synchronous commit?), secured vs bare", value=value,
        unit="fsync/req", baseline=baseline, ratio=None, target="no synchronous commit per request (< 0.5 extra)",
        # Requests one at a time: a commit that waits for its own flush costs ≥ 1 fsync each; the WAL
        # writer's background flushes (at most one per wal_writer_delay, 200 ms) stay far below that.
        met=value - baseline < 0.5,
        note=(f"sequential requests to a fresh server ({s_wal['requests']:.0f} secured, {b_wal['requests']:.0f} bare), less "
              f"the cluster's background ({s_wal['wal_sync_background_per_s']:.2f} fsync/s with none of ours); raw "
              f"fsyncs/req {s_wal['wal_sync']:.3f} vs {b_wal['wal_sync']:.3f}, WAL writes/req {s_wal['wal_write']:.3f} vs "
              f"{b_wal['wal_write']:.3f}, records/req {s_wal['wal_records']:.2f} vs {b_wal['wal_records']:.2f}, bytes/req "
              f"{s_wal['wal_bytes']:.0f} vs {b_wal['wal_bytes']:.0f}; mean sequential latency {s_wal['mean_ms']:.2f} vs "
              f"{b_wal['mean_ms']:.2f} ms; the limiter's table rate_limit_windows is {limiter_table}"
              + (f"; CAUTION: {others:.0f} other busy session(s) on the server, whose WAL is counted too" if others else ""))))

