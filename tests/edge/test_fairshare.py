"""Fair share of expensive work: admission order under contention, bounds, cancellation, the benchmark."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app import alerts
from app.edge.fairshare import FairScheduler, FairShareSaturated, FairShareTimeout
from bench.fairshare import FifoScheduler
from bench.fairshare import main as bench_main


async def _flood(scheduler: Any, *, a_jobs: int = 50, b_jobs: int = 5) -> list[tuple[str, str, int]]:
    """A submits its whole backlog first, then B; every job yields a few times while holding its slot."""
    events: list[tuple[str, str, int]] = []

    async def job(tenant: str, n: int) -> None:
        async with scheduler.slot(tenant):
            events.append(("start", tenant, n))
            for _ in range(3):
                await asyncio.sleep(0)
            events.append(("done", tenant, n))

    a = [asyncio.create_task(job("A", n)) for n in range(a_jobs)]
    await asyncio.sleep(0)  # every A job is queued now
    b = [asyncio.create_task(job("B", n)) for n in range(b_jobs)]
    await asyncio.gather(*a, *b)
    return events


def test_a_small_tenant_is_not_starved_by_a_flood() -> None:
    events = asyncio.run(_flood(FairScheduler(2)))
    starts = [(tenant, n) for kind, tenant, n in events if kind == "start"]
    done = [(tenant, n) for kind, tenant, n in events if kind == "done"]
    # B's five jobs were all admitted among the first dozen admissions (A held both slots first)...
    b_starts = [i for i, (tenant, _) in enumerate(starts) if tenant == "B"]
    assert len(b_starts) == 5 and max(b_starts) < 12
    # ...and all finished while most of A's backlog had not even started.
    last_b_done = max(i for i, (tenant, _) in enumerate(done) if tenant == "B")
    a_started_by_then = sum(1 for kind, tenant, _ in events[: events.index(("done", "B", 4)) + 1] if kind == "start" and tenant == "A")
    assert a_started_by_then <= 8
    assert last_b_done < done.index(("A", 49))
    # Each tenant's own jobs keep their order.
    assert [n for tenant, n in starts if tenant == "A"] == list(range(50))
    assert [n for tenant, n in starts if tenant == "B"] == list(range(5))


def test_the_fifo_baseline_starves_the_small_tenant() -> None:
    # What the fair scheduler fixes: one queue for all, B waits for A's whole backlog.
    events = asyncio.run(_flood(FifoScheduler(2)))
    starts = [tenant for kind, tenant, _ in events if kind == "start"]
    assert starts.index("B") >= 48


def test_backlogged_tenants_share_the_slots_equally() -> None:
    scheduler = FairScheduler(3)
    shares: list[dict[Any, int]] = []

    async def job(tenant: str) -> None:
        async with scheduler.slot(tenant):
            snap = scheduler.snapshot()
            if len(snap.queued) == 3:  # all three tenants still have work waiting
                shares.append(snap.in_flight)
            await asyncio.sleep(0)

    async def run() -> None:
        await asyncio.gather(*(job(t) for _ in range(20) for t in ("A", "B", "C")))

    asyncio.run(run())
    assert len(shares) > 30 and all(share == {"A": 1, "B": 1, "C": 1} for share in shares)


def test_a_lone_tenant_uses_every_slot_unless_capped() -> None:
    async def peak(scheduler: FairScheduler) -> int:
        running, top = 0, 0

        async def job() -> None:
            nonlocal running, top
            async with scheduler.slot("A"):
                running += 1
                top = max(top, running)
                await asyncio.sleep(0.001)
                running -= 1

        await asyncio.gather(*(job() for _ in range(12)))
        return top

    assert asyncio.run(peak(FairScheduler(4))) == 4
    assert asyncio.run(peak(FairScheduler(4, max_in_flight_per_tenant=2))) == 2


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def observe(self, signal: str, key: str, *, value: float = 1.0, details: dict[str, Any] | None = None) -> None:
        self.seen.append((signal, key, value))


def test_a_full_queue_is_refused_and_alerted() -> None:
    scheduler = FairScheduler(1, max_queued_per_tenant=2)
    recorder = _Recorder()
    previous = alerts.current()
    alerts.install(recorder)  # type: ignore[arg-type]

    async def run() -> None:
        release = asyncio.Event()

        async def job(tenant: str) -> None:
            async with scheduler.slot(tenant):
                await release.wait()

        running = [asyncio.create_task(job("A")) for _ in range(3)]  # one runs, two queue
        await asyncio.sleep(0)
        with pytest.raises(FairShareSaturated):
            async with scheduler.slot("A"):
                pass
        other = asyncio.create_task(job("B"))  # another tenant still gets in line
        await asyncio.sleep(0)
        assert scheduler.snapshot().queued == {"A": 2, "B": 1}
        release.set()
        await asyncio.gather(*running, other)

    try:
        asyncio.run(run())
    finally:
        alerts.install(previous)
    assert recorder.seen == [(alerts.RATE_LIMIT_SATURATED, "A", 1)]
    snap = scheduler.snapshot()
    assert (snap.in_flight, snap.queued, snap.admitted, snap.refused) == ({}, {}, 4, 1)


def test_cancelled_and_timed_out_waiters_leave_no_trace() -> None:
    scheduler = FairScheduler(1)

    async def run() -> None:
        release = asyncio.Event()

        async def holder() -> None:
            async with scheduler.slot("A"):
                await release.wait()

        async def waiter() -> None:
            async with scheduler.slot("B"):
                raise AssertionError("never admitted")

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        queued = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(FairShareTimeout):
            async with scheduler.slot("C", timeout=0.01):
                pass
        assert scheduler.snapshot().queued == {}
        release.set()
        await held
        async with scheduler.slot("D", timeout=1):
            assert scheduler.snapshot().in_flight == {"D": 1}

    asyncio.run(run())
    assert scheduler.snapshot().in_flight == {}


def test_the_sync_variant_is_fair_across_threads() -> None:
    scheduler = FairScheduler(1)
    order: list[str] = []
    hold = threading.Event()

    def holder() -> None:
        with scheduler.slot_sync("H"):
            hold.wait(10)

    def job(tenant: str) -> None:
        with scheduler.slot_sync(tenant, timeout=10):
            order.append(tenant)

    def queued() -> int:
        return sum(scheduler.snapshot().queued.values())

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    while scheduler.snapshot().in_flight != {"H": 1}:
        time.sleep(0.001)
    for i, tenant in enumerate(["A"] * 5 + ["B"]):
        threads.append(threading.Thread(target=job, args=(tenant,)))
        threads[-1].start()
        while queued() != i + 1:  # queue them in a known order
            time.sleep(0.001)
    with pytest.raises(FairShareTimeout):
        with scheduler.slot_sync("C", timeout=0.01):
            pass
    hold.set()
    for t in threads:
        t.join(10)
    assert order == ["A", "B", "A", "A", "A", "A"]
    assert scheduler.snapshot().in_flight == {}


def test_the_benchmark_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fairshare.json"
    result = bench_main(["--duration", "0.2", "--job-ms", "2", "--slots", "2", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["scenarios"] == result["scenarios"]
    assert written["benchmark"] == "fairshare"
    assert {"slots", "job_ms", "duration", "noisy_factor", "b_load", "seed"} <= written["config"].keys()
    assert [(s["scheduler"], s["tenant_a"].split()[0]) for s in written["scenarios"]] == [
        ("fifo", "idle"), ("fifo", "noisy"), ("fair", "idle"), ("fair", "noisy")]
    for s in written["scenarios"]:
        assert {"jobs", "p50_ms", "p95_ms", "p99_ms", "max_ms"} <= s["b"].keys()
        assert {"jobs", "p99_ms"} <= s["a"].keys()
        assert {"elapsed_s", "utilisation"} <= s.keys()
    assert "B p99 ms" in capsys.readouterr().out
