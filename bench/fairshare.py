"""Fair share under a noisy neighbour: tenant B's latency with and without tenant A at 10× its share.

    python -m bench.fairshare [--slots 4] [--job-ms 10] [--duration 3.0] [--out bench/results/fairshare.json]

Simulated expensive jobs are `asyncio.sleep(~job_ms)` (uniformly 0.5–1.5 × job_ms, seeded, so
completions do not fall into lock-step): what an LLM call or an export looks like to the scheduler,
a slot held while waiting on I/O. `slots` jobs run at once. Each of the two
tenants' fair share is `slots / 2` slots. Tenant B submits jobs open-loop (Poisson arrivals) at
half its fair share's throughput; when noisy, tenant A keeps 10 × its share of jobs outstanding
(closed loop: every completion is resubmitted at once), which alone saturates every slot.
Compared: the FIFO baseline (one queue for everybody, what a plain semaphore gives) and
`app.edge.fairshare.FairScheduler`. Measured: B's latency from submission to completion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.edge.fairshare import FairScheduler
from bench.kit import percentile

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fairshare.json"


class Scheduler(Protocol):
    def slot(self, tenant: Hashable) -> Any: ...


class FifoScheduler:
    """The baseline: `slots` at once, one first-come-first-served queue for every tenant."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._running = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def slot(self, tenant: Hashable) -> AsyncIterator[None]:
        if self._running < self.slots and not self._waiting:
            self._running += 1
        else:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            await future  # the releaser hands its slot over (running count unchanged)
        try:
            yield
        finally:
            if self._waiting:
                self._waiting.popleft().set_result(None)
            else:
                self._running -= 1


@dataclass(frozen=True)
class Config:
    slots: int = 4
    job_ms: float = 10.0
    duration: float = 3.0
    noisy_factor: float = 10.0  # tenant A's outstanding jobs, in multiples of its fair share
    b_load: float = 0.5  # tenant B's arrival rate, as a fraction of its fair share's throughput
    seed: int = 7


def _summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"jobs": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = [x * 1000 for x in latencies]
    return {
        "jobs": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


async def scenario(config: Config, scheduler_name: str, noisy: bool) -> dict[str, Any]:
    scheduler: Scheduler = FairScheduler(config.slots) if scheduler_name == "fair" else FifoScheduler(config.slots)
    job = config.job_ms / 1000
    share = config.slots / 2
    b_rate = config.b_load * share / job  # jobs per second
    arrivals = random.Random(config.seed)  # B's arrivals: the same sequence in every scenario
    services = {"A": random.Random(config.seed + 1), "B": random.Random(config.seed + 2)}
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop_at = started + config.duration
    b_latencies: list[float] = []
    a_latencies: list[float] = []

    async def run(tenant: str, into: list[float]) -> None:
        submitted = loop.time()
        service = job * services[tenant].uniform(0.5, 1.5)
        async with scheduler.slot(tenant):
            await asyncio.sleep(service)
        into.append(loop.time() - submitted)

    async def tenant_b() -> None:
        pending = []
        next_at = started
        while True:
            next_at += arrivals.expovariate(b_rate)
            if next_at >= stop_at:
                break
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            pending.append(asyncio.create_task(run("B", b_latencies)))
        await asyncio.gather(*pending)

    async def tenant_a_worker() -> None:
        while loop.time() < stop_at:
            await run("A", a_latencies)

    workers = [tenant_b()]
    if noisy:
        workers += [tenant_a_worker() for _ in range(max(1, round(config.noisy_factor * share)))]
    await asyncio.gather(*workers)
    elapsed = loop.time() - started
    return {
        "scheduler": scheduler_name,
        "tenant_a": f"noisy {config.noisy_factor:g}x share" if noisy else "idle",
        "b": _summary(b_latencies),
        "a": {"jobs": len(a_latencies), "p99_ms": _summary(a_latencies)["p99_ms"]},
        "elapsed_s": round(elapsed, 3),
        "utilisation": round((len(a_latencies) + len(b_latencies)) * job / (config.slots * elapsed), 3),
    }


async def run_all(config: Config) -> dict[str, Any]:
    # Warm-up (imports, first timers), not reported.
    await scenario(Config(slots=config.slots, job_ms=config.job_ms, duration=min(0.2, config.duration)), "fifo", True)
    scenarios = []
    for scheduler_name in ("fifo", "fair"):
        for noisy in (False, True):
            scenarios.append(await scenario(config, scheduler_name, noisy))
    return {
        "benchmark": "fairshare",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "config": asdict(config),
        "scenarios": scenarios,
    }


def table(result: dict[str, Any]) -> str:
    head = f"{'scheduler':<10} {'tenant A':<18} {'B jobs':>6} {'B p50 ms':>9} {'B p99 ms':>9} {'B max ms':>9} {'A jobs':>7} {'util':>5}"
    lines = [head, "-" * len(head)]
    for s in result["scenarios"]:
        b = s["b"]
        lines.append(
            f"{s['scheduler']:<10} {s['tenant_a']:<18} {b['jobs']:>6} {b['p50_ms'] or 0:>9.1f} {b['p99_ms'] or 0:>9.1f} "
            f"{b['max_ms'] or 0:>9.1f} {s['a']['jobs']:>7} {s['utilisation']:>5.2f}"
        )
    c = result["config"]
    lines.append(f"slots={c['slots']} job={c['job_ms']:g} ms duration={c['duration']:g} s/scenario; "
                 f"B at {c['b_load']:g} of its share, A at {c['noisy_factor']:g}x its share when noisy")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.fairshare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=Config.slots)
    parser.add_argument("--job-ms", type=float, default=Config.job_ms)
    parser.add_argument("--duration", type=float, default=Config.duration, help="seconds of arrivals per scenario")
    parser.add_argument("--noisy-factor", type=float, default=Config.noisy_factor)
    parser.add_argument("--b-load", type=float, default=Config.b_load)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    config = Config(slots=args.slots, job_ms=args.job_ms, duration=args.duration, noisy_factor=args.noisy_factor,
                    b_load=args.b_load, seed=args.seed)
    started = time.perf_counter()
    result = asyncio.run(run_all(config))
    result["wall_s"] = round(time.perf_counter() - started, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.out} ({result['wall_s']} s)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
