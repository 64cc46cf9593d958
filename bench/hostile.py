"""Hostile bodies: another tenant's latency while one tenant sends the worst bodies the cap lets through.

Issue 15, finding 1: `POST /api/v1/invitations/accept` takes a body from any valid token (no
membership needed), and a 1 MB body of 90,000 invented keys sent at 96 a minute pushed another
tenant's p99 from 31 ms to 2.3 s. Measured here, in one run, on the real app (one uvicorn worker
pinned to one core, `bench.serve`; the clients on the other core):

1. Cost of each hostile body, directly: a server with no effective limit gets `PROBES` of each body
   one at a time from tenant A's member; CPU of the server process per request (`/proc`), the
   answer's status and size (body bytes; headers are the same ~1 KB as any answer's), and the same
   for tenant B's `GET …/documents` (the read the victim sends). Bodies, each just under the
   route's body cap (its own, sized to its model, as its 413 names it: about 3.5 KB; the app's
   `max_body_bytes`, 1 MiB, where a route has none) and sent as `application/json`: `BODIES` below — invented keys
   (the finding), and known-field errors: the one field `token` (a string of at most 200
   characters) given as a long string (plain, or all escapes), as long lists of empty lists, objects or numbers, or as
   deep nesting. No request model takes a list or an object, so one error is the most any of
   them can earn per field; what such a body costs is its JSON parse (FastAPI parses a body
   before any dependency runs: authentication, the rate limit, membership).
2. Tenant B's p50/p99 on `GET …/documents` under open-loop Poisson arrivals at `VICTIM_RATE`/s,
   quiet vs while tenant A's member sends worst bodies to `POST /invitations/accept` (open-loop
   Poisson, `NEIGHBOUR_SHARE` of the route's limit, i.e. 96/min as in the finding). Two loaded
   states: the invented keys, and the costliest other body of step 1. The instance under test
   limits invitation acceptance to `NEIGHBOUR_LIMIT` a minute (the shipped limit of that route's
   class, `auth-public`, is 20/min per client address, so this is five addresses' worth: the
   issue's rate); the victim's own class is unlimited, its one user standing for a tenant's many.
   The states alternate (quiet, keys, other) `scale.rounds` times, 1.5 × `scale.http_seconds` each;
   the victim's client runs throughout and its samples go to the state they were scheduled in.
   Target: B's p99 loaded ≤ 1.5 × quiet, for each loaded state.
3. The same worst bodies past the limit: after the phases, tenant A's member sends `PROBES` more
   at once to the limited instance; CPU per refused (429) request.

When a target is missed and py-spy is installed, the server is profiled during one more loaded
window of the costliest body.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    AppServer,
    Caller,
    app_servers,
    cores,
    cpu_per_request,
    describe_profile,
    identities,
    in_workdir,
    machine_busy_seconds,
    open_loop,
    py_spy,
    secured_settings,
    summary,
    warm,
)
from bench.kit import Context, Row, Section

NAME = "hostile"
TITLE = "Hostile bodies"
TARGET = 1.5
ACCEPT = "/api/v1/invitations/accept"
VICTIM_RATE = 20.0  # tenant B's GETs per second (~15 % of the worker: the p99 has 1,000+ samples per state)
NEIGHBOUR_LIMIT = 100  # per minute: the limit of invitation acceptance on the instance under test
NEIGHBOUR_SHARE = 0.96  # of the limit: 96/min, the finding's rate
UNLIMITED = 100_000_000
Requests = list[tuple[Any, ...]]


# ---- the bodies ----------------------------------------------------------------------------


def _fill(prefix: str, item: str, suffix: str, cap: int) -> str:
    """`prefix item,item,… suffix` with as many items as fit in `cap` bytes."""
    n = (cap - len(prefix) - len(suffix) + 1) // (len(item) + 1)
    return prefix + ",".join([item] * n) + suffix


def _invented_keys(cap: int) -> str:
    """A valid token plus as many invented keys (`"1a2b":0`) as fit: the finding's body."""
    parts, size, i = ['"token":"xxxxxxxxxx"'], 2 + 20, 0
    while size + len(f'"{i:x}":0') + 1 <= cap:
        parts.append(f'"{i:x}":0')
        size += len(parts[-1]) + 1
        i += 1
    return "{" + ",".join(parts) + "}"


BODIES: dict[str, Callable[[int], str]] = {
    "invented keys": _invented_keys,
    "token: list of empty lists": lambda cap: _fill('{"token":[', "[]", "]}", cap),
    "token: list of objects of lists": lambda cap: _fill('{"token":[', '{"a":[]}', "]}", cap),
    "token: list of empty objects": lambda cap: _fill('{"token":[', "{}", "]}", cap),
    "token: list of numbers": lambda cap: _fill('{"token":[', "0", "]}", cap),
    "token: one long string": lambda cap: '{"token":"' + "x" * (cap - 12) + '"}',
    "token: one string of escapes": lambda cap: '{"token":"' + "\\n" * ((cap - 12) // 2) + '"}',
    "token: deep nesting": lambda cap: '{"token":' + "[" * ((cap - 10) // 2) + "]" * ((cap - 10) // 2) + "}",
}
KEYS = "invented keys"


def bodies(cap: int) -> dict[str, str]:
    out = {name: make(cap) for name, make in BODIES.items()}
    for name, body in out.items():
        assert len(body.encode()) <= cap, (name, len(body.encode()), cap)
    return out


def _post(caller: Caller, body: str) -> tuple[str, dict[str, str], str, str]:
    return (ACCEPT, caller.headers() | {"Content-Type": "application/json"}, "POST", body)


# ---- measuring -------------------------------------------------------------------------------


def _costs(server: AppServer, victim: Caller, neighbour: Caller, payloads: dict[str, str], probes: int) -> dict[str, Any]:
    headers = neighbour.headers() | {"Content-Type": "application/json"}
    out: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        paths = victim.paths()
        out["victim GET documents"] = cpu_per_request(server, client, probes, lambda: client.get(paths[0], headers=victim.headers()))
        for name, body in payloads.items():
            data = body.encode()
            out[name] = cpu_per_request(server, client, probes, lambda data=data: client.post(ACCEPT, content=data, headers=headers))
            out[name]["request_bytes"] = len(data)
    return out


def _within(samples: list[list[float]], windows: list[tuple[float, float]]) -> list[list[float]]:
    return [s for s in samples if any(start <= s[0] < end for start, end in windows)]


def run(ctx: Context) -> Section:
    return in_workdir(NAME, _run, ctx)


def _run(ctx: Context, workdir: Path) -> Section:
    section = Section(NAME, TITLE)
    scale = ctx.scale
    app_core, load_core = cores()
    run_id = secrets.token_hex(3)
    window = 1.5 * scale.http_seconds
    probes = 20 if scale.name == "full" else 3
    with identities(ctx, 2, workdir / "idp") as (idp, (victim, neighbour)):
        # 1. What each body costs, one at a time, on a server that refuses nothing.
        name = f"palisade-bench-hostile-cost-{run_id}"
        settings = secured_settings(ctx, idp, per_minute=UNLIMITED, application_name=name)
        settings["rate_limit_classes"] |= {"auth-public": UNLIMITED}
        with app_servers({"cost": {"kind": "secured", "application_name": name, "settings": settings}}, workdir,
                         core=app_core) as servers:
            payloads = bodies(_body_cap(servers["cost"], neighbour, _max_body_bytes(settings)))
            warm(servers["cost"], [(p, victim.headers()) for p in victim.paths()])
            costs = _costs(servers["cost"], victim, neighbour, payloads, probes)
        others = [n for n in payloads if n != KEYS]
        worst = max(others, key=lambda n: costs[n]["cpu_ms"])

        # 2. The victim quiet vs beside the neighbour at its limit; 3. the same bodies past the limit.
        name = f"palisade-bench-hostile-{run_id}"
        settings = secured_settings(ctx, idp, per_minute=UNLIMITED, application_name=name)
        settings["rate_limit_classes"] |= {"auth-public": NEIGHBOUR_LIMIT}
        states = {"quiet": None, "invented keys": KEYS, f"costliest other ({worst})": worst}
        windows: dict[str, list[tuple[float, float]]] = {s: [] for s in states}
        neighbour_samples: dict[str, list[list[float]]] = {s: [] for s in states}
        cpu = {s: 0.0 for s in states}
        busy = {s: 0.0 for s in states}
        profile = None
        victim_requests = [(p, victim.headers()) for p in victim.paths()]
        with app_servers({"instance": {"kind": "secured", "application_name": name, "settings": settings}}, workdir,
                         core=app_core) as servers:
            server = servers["instance"]
            warm(server, victim_requests)
            rate = NEIGHBOUR_SHARE * NEIGHBOUR_LIMIT / 60
            with open_loop(server, "victim", victim_requests, rate=VICTIM_RATE, seconds=0, seed=100, workdir=workdir,
                           core=load_core) as victim_client:
                time.sleep(min(2.0, window))  # the victim's client settles (connections opened)
                for r in range(scale.rounds):
                    for i, (state, body) in enumerate(states.items()):
                        began, cpu0, busy0 = time.monotonic(), server.cpu_seconds(), machine_busy_seconds()
                        if body is None:
                            time.sleep(window)
                        else:
                            with open_loop(server, f"neighbour-{r}-{i}", [_post(neighbour, payloads[body])], rate=rate,
                                           seconds=window, seed=200 + 10 * r + i, workdir=workdir, core=load_core) as n:
                                neighbour_samples[state] += n.result()["samples"]
                        windows[state].append((began, time.monotonic()))
                        cpu[state] += server.cpu_seconds() - cpu0
                        busy[state] += machine_busy_seconds() - busy0
                v = victim_client.result(stop=True)
            quiet_p99 = summary(_within(v["samples"], windows["quiet"]))["p99_ms"]
            loaded_p99 = max(summary(_within(v["samples"], w))["p99_ms"] for s, w in windows.items() if s != "quiet")
            if loaded_p99 > TARGET * quiet_p99:
                seconds = max(1, round(window))
                with open_loop(server, "neighbour-profiled", [_post(neighbour, payloads[worst])], rate=rate,
                               seconds=seconds + 1, seed=999, workdir=workdir, core=load_core) as n:
                    profile = py_spy(server, seconds, ctx.out_dir / f"{NAME}-profile.txt", lambda n=n: n.result())
            with httpx.Client(base_url=server.url, timeout=60) as client:
                data, headers = payloads[worst].encode(), neighbour.headers() | {"Content-Type": "application/json"}
                for _ in range(NEIGHBOUR_LIMIT):  # spend what is left of the allowance
                    if client.post(ACCEPT, content=data, headers=headers).status_code == 429:
                        break
                refused = cpu_per_request(server, client, probes, lambda: client.post(ACCEPT, content=data, headers=headers))

    seconds = {s: sum(end - start for start, end in w) for s, w in windows.items()}
    victim_by_state = {s: summary(_within(v["samples"], w)) for s, w in windows.items()}
    neighbour_by_state = {s: summary(samples) for s, samples in neighbour_samples.items() if states[s] is not None}
    server_cpu = {s: cpu[s] / seconds[s] for s in states}
    machine = {s: busy[s] / seconds[s] for s in states}
    section.artifacts.update(
        costs=costs, costliest_other=worst, victim=victim_by_state, neighbour=neighbour_by_state, seconds=seconds,
        server_cpu=server_cpu, machine_busy_cores=machine, refused=refused, profile=profile, victim_rate=VICTIM_RATE,
        neighbour_rate_per_minute=NEIGHBOUR_SHARE * NEIGHBOUR_LIMIT, neighbour_limit_per_minute=NEIGHBOUR_LIMIT,
        cores={"app_server": app_core, "load_generators": load_core},
        client={"victim_lag_p99_ms": v["client_lag_p99_ms"], "victim_errors": v["error_kinds"]},
    )
    _rows(section, states, costs, victim_by_state, neighbour_by_state, server_cpu, machine, seconds, refused, profile,
          scale.rounds, window)
    return section


def _body_cap(server: AppServer, caller: Caller, max_body_bytes: int) -> int:
    """The most of a body the instance reads at ACCEPT: the route's own cap (app/edge/bodies.py), as
    its 413 names it for a body of the app's `max_body_bytes`; else that."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post(ACCEPT, content=b" " * max_body_bytes, headers=caller.headers() | {"Content-Type": "application/json"})
    return int(r.json()["max_body_bytes"]) if r.status_code == 413 else max_body_bytes


def _max_body_bytes(settings: dict[str, Any]) -> int:
    from app.config import Settings

    return int(Settings(_env_file=None, **settings).max_body_bytes)  # type: ignore[call-arg]


def _rows(section: Section, states: dict[str, str | None], costs: dict[str, Any], victim: dict[str, dict[str, Any]],
          neighbour: dict[str, dict[str, Any]], server_cpu: dict[str, float], machine: dict[str, float],
          seconds: dict[str, float],
          refused: dict[str, Any], profile: dict[str, Any] | None, rounds: int, window: float) -> None:
    quiet = victim["quiet"]
    setup = (f"tenant B: GET documents, Poisson {VICTIM_RATE:.0f}/s; tenant A's member: POST /invitations/accept, "
             f"Poisson {NEIGHBOUR_SHARE * NEIGHBOUR_LIMIT:.0f}/min (limit {NEIGHBOUR_LIMIT}/min; shipped: 20/min per address); "
             f"{rounds}× {window:.0f} s per state, alternating; 1 uvicorn worker")
    for state, body in states.items():
        if body is None:
            continue
        loaded = victim[state]
        ratio = loaded["p99_ms"] / quiet["p99_ms"]
        n = neighbour[state]
        note = (f"{setup}; neighbour sent {n['requests']} ({n['statuses']}), each {costs[body]['cpu_ms']:.1f} ms of server "
                f"CPU; server busy {server_cpu[state]:.0%} vs {server_cpu['quiet']:.0%} of its core quiet, the whole machine "
                f"{machine[state]:.2f} vs {machine['quiet']:.2f} cores (other processes included); victim "
                f"{loaded['requests']} vs {quiet['requests']} requests, statuses {loaded['statuses']}")
        if ratio > TARGET:
            note += "; MISSED: " + describe_profile(profile, costs[body]["cpu_ms"])
        section.add(Row(metric=f"tenant B p99, A sends {body} at its limit vs quiet", value=loaded["p99_ms"], unit="ms",
                        baseline=quiet["p99_ms"], ratio=ratio, target=f"≤ {TARGET}", met=ratio <= TARGET, note=note))
        section.add(Row(metric=f"tenant B p50, A sends {body} at its limit vs quiet", value=loaded["p50_ms"], unit="ms",
                        baseline=quiet["p50_ms"], ratio=loaded["p50_ms"] / quiet["p50_ms"]))
    read = costs["victim GET documents"]
    for name in BODIES:
        c = costs[name]
        section.add(Row(metric=f"server CPU per request, {name} ({c['request_bytes']:,} B) vs B's GET documents",
                        value=c["cpu_ms"], unit="ms", baseline=read["cpu_ms"], ratio=c["cpu_ms"] / read["cpu_ms"],
                        note=f"answer {c['statuses']}, {c['response_bytes']} B body; {c['wall_ms']:.1f} ms wall each, "
                             f"one at a time"))
    worst = max(BODIES, key=lambda n: costs[n]["response_bytes"])
    section.add(Row(metric="largest answer to a hostile body", value=costs[worst]["response_bytes"], unit="B",
                    note=f"{worst}: {costs[worst]['example'][:200]}"))
    section.add(Row(metric="server CPU per refused (429) costliest body, past the limit, vs B's GET documents",
                    value=refused["cpu_ms"], unit="ms", baseline=read["cpu_ms"], ratio=refused["cpu_ms"] / read["cpu_ms"],
                    note=f"answers {refused['statuses']}: FastAPI parses a body before the rate limit (a dependency) runs"))
