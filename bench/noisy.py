"""Noisy neighbour: a victim tenant's latency alone vs while another tenant sends 10× its fair share.

Fair share, as defined here: the instance is sized for N = 10 tenants busy at once, so each
tenant's share is a tenth of the instance's measured capacity, and the per-user rate limit is set
to exactly that share. Concretely, in the same run:

1. capacity C: the real app (one uvicorn worker, no effective limit) loaded closed-loop by `wrk`
   (16 connections) with the two tenants' `GET …/documents` requests — requests/s;
2. share S = C / 10 requests/s; the app under test is started with `rate_limit_per_minute` =
   ceil(60 × S) (the limit counts per user; each tenant has one user);
3. victim: open-loop Poisson arrivals at S / 2 (half its share: 5 % of the instance), latency from
   each request's scheduled time, measured by the client (`bench.openloop`);
4. neighbour: open-loop Poisson arrivals at 10 × S = C, i.e. on its own it would fill the whole
   instance; the limiter admits about S/s of it and answers the rest 429.

Both clients run in their own processes on the load core; the app runs pinned to another core.
The neighbour sends without pause through the whole noisy phase, and the victim is measured alone
before and after it (half the time each, pooled: drift on the machine hits both states alike):

    alone (½·D) · neighbour starts: its allowance burst · settle · noisy (D) · neighbour stops · alone (½·D)

with D = `scale.rounds` × 1.5 × `scale.http_seconds`. The limiter's window is a minute, so a
tenant that was quiet (here: new) may first spend its whole allowance, L = 60·S requests, at full
speed: that burst lasts until the neighbour's first 429, and the noisy phase opens 2 s later (its
backlog drained). The burst is reported on its own row (no target: a per-minute limit allows it by
design; it is what the victim sees when a neighbour starts hammering). Reported: the victim's
p50/p99 alone and noisy (target: p99 noisy/alone ≤ 1.2), what the neighbour got (2xx vs 429),
the server's CPU and its garbage-collection pauses (`gc.callbacks`) in each state. When the
noisy p99 exceeds 1.2 × the first alone phase's and py-spy is installed, the server is profiled
during one more noisy window, before the neighbour stops.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    AppServer,
    OpenLoop,
    app_servers,
    cores,
    describe_profile,
    identities,
    in_workdir,
    machine_busy_seconds,
    open_loop,
    py_spy,
    secured_settings,
    summary,
    warm,
    wrk,
    wrk_script,
)
from bench.kit import Context, Row, Section

NAME = "noisy"
TITLE = "Noisy neighbour"
TARGET = 1.2
TENANTS_SIZED_FOR = 10  # N: the share of one tenant is capacity / N
VICTIM_LOAD = 0.5  # the victim's rate, in shares
NEIGHBOUR_LOAD = 10.0  # the neighbour's rate, in shares
SETTLE = 2.0  # seconds after the neighbour's first 429 before the noisy phase opens (its backlog drains)
REFUSAL_TIMEOUT = 120.0
UNLIMITED = 100_000_000
Requests = list[tuple[str, dict[str, str]]]


def _capacity(ctx: Context, idp: Any, requests: Requests, workdir: Path, app_core: int | None,
              load_core: int | None, run_id: str) -> dict[str, Any]:
    name = f"palisade-bench-noisy-capacity-{run_id}"
    config = {"kind": "secured", "application_name": name,
              "settings": secured_settings(ctx, idp, per_minute=UNLIMITED, application_name=name)}
    script = wrk_script(requests, workdir / "capacity.lua")
    seconds = max(1, round(ctx.scale.http_seconds / 2))
    with app_servers({"capacity": config}, workdir, core=app_core) as servers:
        server = servers["capacity"]
        warm(server, requests)
        result = wrk(server, script, seconds=seconds, connections=16, core=load_core)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(f"capacity run: {result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    return result.as_dict()


def _wait_refused(neighbour: OpenLoop, timeout: float) -> float:
    """When the neighbour got its first 429 (CLOCK_MONOTONIC)."""
    deadline = time.monotonic() + timeout
    while (at := neighbour.first_refusal()) is None:
        if neighbour.process.poll() is not None:
            raise RuntimeError(f"the neighbour's client exited ({neighbour.process.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the neighbour was not refused within {timeout:.0f} s: is the rate limit in force?")
        time.sleep(0.02)
    return at


def _within(result: dict[str, Any], start: float, end: float) -> list[list[float]]:
    return [s for s in result["samples"] if start <= s[0] < end]


def _gc_pauses(path: Path, windows: list[tuple[float, float]]) -> dict[str, Any]:
    """The server's collections of ≥ 5 ms inside the windows: count, seconds per second, longest."""
    pauses = []
    if path.exists():
        for line in path.read_text().splitlines():
            p = json.loads(line)
            if any(start <= p["at"] < end for start, end in windows):
                pauses.append(p)
    seconds = sum(end - start for start, end in windows) or 1.0
    return {"count": len(pauses), "per_s": len(pauses) / seconds, "share": sum(p["seconds"] for p in pauses) / seconds,
            "max_ms": 1000 * max((p["seconds"] for p in pauses), default=0.0),
            "generation_2": sum(1 for p in pauses if p["generation"] == 2)}


class Scenario:
    """The instance under test (rate limit = one share per user) and its two tenants' clients."""

    def __init__(self, server: AppServer, victim: Requests, neighbour: Requests, share: float, workdir: Path,
                 load_core: int | None) -> None:
        self.server, self.victim, self.neighbour = server, victim, neighbour
        self.share, self.workdir, self.core = share, workdir, load_core

    def client(self, name: str, who: str, seconds: float, seed: int) -> Any:
        requests, load = (self.victim, VICTIM_LOAD) if who == "victim" else (self.neighbour, NEIGHBOUR_LOAD)
        return open_loop(self.server, name, requests, rate=load * self.share, seconds=seconds, seed=seed,
                         workdir=self.workdir, core=self.core)

    def victim_for(self, name: str, seconds: float, seed: int) -> dict[str, Any]:
        """The victim alone or beside whatever runs now, for `seconds`; with the server's and the whole
        machine's CPU meanwhile (the machine's includes PostgreSQL, our clients and anything else)."""
        cpu, busy = self.server.cpu_seconds(), machine_busy_seconds()
        with self.client(name, "victim", seconds, seed) as victim:
            v = victim.result()
        return v | {"server_cpu_s": self.server.cpu_seconds() - cpu, "machine_busy_s": machine_busy_seconds() - busy}


def run(ctx: Context) -> Section:
    return in_workdir(NAME, _run, ctx)


def _run(ctx: Context, workdir: Path) -> Section:
    section = Section(NAME, TITLE)
    scale = ctx.scale
    app_core, load_core = cores()
    run_id = secrets.token_hex(3)
    window = 1.5 * scale.http_seconds
    duration = scale.rounds * window
    settle = min(SETTLE, window)
    gc_log = workdir / f"gc-{run_id}.jsonl"
    with identities(ctx, 2, workdir / "idp") as (idp, callers):
        victim, neighbour = ([(p, c.headers()) for p in c.paths()] for c in callers)
        capacity = _capacity(ctx, idp, victim + neighbour, workdir, app_core, load_core, run_id)
        per_minute = math.ceil(60 * capacity["rps"] / TENANTS_SIZED_FOR)
        share = per_minute / 60  # the share in force
        name = f"palisade-bench-noisy-{run_id}"
        config = {"kind": "secured", "application_name": name, "gc_log": str(gc_log),
                  "settings": secured_settings(ctx, idp, per_minute=per_minute, application_name=name)}
        profile = None
        with app_servers({"instance": config}, workdir, core=app_core) as servers:
            scenario = Scenario(servers["instance"], victim, neighbour, share, workdir, load_core)
            warm(scenario.server, victim + neighbour)
            before = scenario.victim_for("victim-alone-before", duration / 2, seed=100)
            started = time.monotonic()
            with scenario.client("neighbour", "neighbour", 0, seed=200) as noisy_client:
                with scenario.client("victim-burst", "victim", 0, seed=300) as burst_client:
                    refused = _wait_refused(noisy_client, REFUSAL_TIMEOUT)
                    burst_victim = burst_client.result(stop=True)
                time.sleep(settle)
                during = scenario.victim_for("victim-noisy", duration, seed=400)
                if summary(during["samples"])["p99_ms"] > TARGET * summary(before["samples"])["p99_ms"]:
                    seconds = max(1, round(window))
                    profile = py_spy(scenario.server, seconds, ctx.out_dir / f"{NAME}-profile.txt",
                                     lambda: scenario.victim_for("victim-profiled", seconds + 1, seed=500))
                n = noisy_client.result(stop=True)
            after = scenario.victim_for("victim-alone-after", duration / 2, seed=101)

    alone = [before, after]
    windows = {"alone": [(r["started"], r["stopped"]) for r in alone], "noisy": [(during["started"], during["stopped"])]}
    seconds = {k: sum(end - start for start, end in w) for k, w in windows.items()}
    v_alone = summary([s for r in alone for s in r["samples"]])
    v_noisy = summary(during["samples"])
    neighbour_summary = summary(_within(n, during["started"], during["stopped"]))
    burst = {"seconds": refused - started, "victim": summary(burst_victim["samples"]),
             "neighbour": summary(_within(n, started, refused))}
    cpu = {"alone": sum(r["server_cpu_s"] for r in alone) / seconds["alone"], "noisy": during["server_cpu_s"] / seconds["noisy"],
           "machine_alone_before": before["machine_busy_s"] / (before["stopped"] - before["started"]),
           "machine_alone_after": after["machine_busy_s"] / (after["stopped"] - after["started"]),
           "machine_noisy": during["machine_busy_s"] / seconds["noisy"]}
    gc_pauses = {k: _gc_pauses(gc_log, w) for k, w in windows.items()}
    section.artifacts.update(
        capacity=capacity, share_per_s=share, rate_limit_per_minute=per_minute, victim_rate=VICTIM_LOAD * share,
        neighbour_rate=NEIGHBOUR_LOAD * share, seconds=seconds, burst=burst, victim_alone=v_alone,
        victim_noisy=v_noisy, neighbour=neighbour_summary, server_cpu=cpu, gc_pauses=gc_pauses, profile=profile,
        cores={"app_server": app_core, "load_generators": load_core},
        client={"victim_lag_p99_ms": max(r["client_lag_p99_ms"] for r in [*alone, during]),
                "neighbour_lag_p99_ms": n["client_lag_p99_ms"],
                "errors": {"victim": [r["error_kinds"] for r in [*alone, during]], "neighbour": n["error_kinds"]}},
    )
    ratio = v_noisy["p99_ms"] / v_alone["p99_ms"]
    _rows(section, capacity, share, per_minute, v_alone, v_noisy, ratio, neighbour_summary, seconds, burst, cpu,
          gc_pauses, profile)
    return section


def _rows(section: Section, capacity: dict[str, Any], share: float, per_minute: int, v_alone: dict[str, Any],
          v_noisy: dict[str, Any], ratio: float, neighbour: dict[str, Any], seconds: dict[str, float],
          burst: dict[str, Any], cpu: dict[str, float], gc_pauses: dict[str, dict[str, Any]],
          profile: dict[str, Any] | None) -> None:
    setup = (f"capacity {capacity['rps']:.0f} req/s (wrk -c16); share = capacity/{TENANTS_SIZED_FOR} = {share:.1f} req/s "
             f"(limit {per_minute}/min per user); victim Poisson {VICTIM_LOAD * share:.1f}/s, neighbour "
             f"{NEIGHBOUR_LOAD * share:.1f}/s; {seconds['noisy']:.0f} s noisy, {seconds['alone']:.0f} s alone (before + after)")
    bad = {k: v for k, v in (v_alone["statuses"] | v_noisy["statuses"]).items() if k != "200"}
    note = setup + (f"; victim got non-200 answers: {bad}" if bad else "")
    if ratio > TARGET:
        rate = (neighbour["requests"] + v_noisy["requests"]) / seconds["noisy"]
        per_neighbour = (cpu["noisy"] - cpu["alone"]) / max(1e-9, neighbour["requests"] / seconds["noisy"])
        g_alone, g_noisy = gc_pauses["alone"], gc_pauses["noisy"]
        note += (f"; MISSED: the server's CPU goes from {cpu['alone']:.0%} of its core alone to {cpu['noisy']:.0%} noisy, "
                 f"~{1000 * per_neighbour:.2f} ms per neighbour request (mostly 429s); garbage collection ≥ 5 ms "
                 f"{g_noisy['per_s']:.2f}/s (max {g_noisy['max_ms']:.0f} ms) noisy vs {g_alone['per_s']:.2f}/s "
                 f"(max {g_alone['max_ms']:.0f} ms) alone; the victim waits behind that work in the one worker's queue; "
                 + describe_profile(profile, 1000 * cpu["noisy"] / max(1e-9, rate)))
    section.add(Row(metric="victim p99 latency, neighbour at 10× its share vs alone", value=v_noisy["p99_ms"], unit="ms",
                    baseline=v_alone["p99_ms"], ratio=ratio, target=f"≤ {TARGET}", met=ratio <= TARGET, note=note))
    section.add(Row(metric="victim p50 latency, neighbour at 10× its share vs alone", value=v_noisy["p50_ms"], unit="ms",
                    baseline=v_alone["p50_ms"], ratio=v_noisy["p50_ms"] / v_alone["p50_ms"],
                    note=f"{v_noisy['requests']} noisy and {v_alone['requests']} alone victim requests"))
    ok = neighbour["statuses"].get("200", 0)
    refused = neighbour["statuses"].get("429", 0)
    other = neighbour["requests"] - ok - refused
    section.add(Row(metric="neighbour's admitted requests/s in the noisy phase, vs its share", value=ok / seconds["noisy"],
                    unit="req/s", baseline=share, ratio=(ok / seconds["noisy"]) / share,
                    note=f"neighbour sent {neighbour['requests']}: {ok} × 200, {refused} × 429, {other} other "
                         f"({neighbour['statuses']})"))
    section.add(Row(metric="app server CPU (share of its core), noisy vs alone", value=cpu["noisy"], unit="core",
                    baseline=cpu["alone"], ratio=cpu["noisy"] / cpu["alone"] if cpu["alone"] else None,
                    note=f"the whole machine was busy {cpu['machine_alone_before']:.2f} cores alone before, "
                         f"{cpu['machine_noisy']:.2f} noisy, {cpu['machine_alone_after']:.2f} alone after (PostgreSQL, the "
                         "clients and any other process included: more than the server's and PostgreSQL's share while "
                         "alone means something else ran and the comparison is disturbed)"))
    b = burst["victim"]
    section.add(Row(metric="victim p99 while the new neighbour spends its minute's allowance at full speed, vs alone",
                    value=b.get("p99_ms", math.nan), unit="ms", baseline=v_alone["p99_ms"],
                    ratio=b.get("p99_ms", math.nan) / v_alone["p99_ms"],
                    note=f"lasted {burst['seconds']:.1f} s until the neighbour's first 429; neighbour got "
                         f"{burst['neighbour']['statuses']} meanwhile; victim p50 {b.get('p50_ms', math.nan):.1f} ms over "
                         f"{b['requests']} requests (no target: a per-minute limit allows this burst by design)"))
