"""`palisade doctor` on the data set vs on an empty database: what the rows cost it.

Doctor runs at every production start (the app refuses to start when it fails) and in every
upgrade, so it must stay fast however big the install. Measured side: `run_doctor` as the app role
on the shared data set (at full scale 1M documents in 1,000 tenants); baseline: the same on a
freshly migrated, empty database. Both include the live probe (a rolled-back transaction that reads
every tenant-keyed table under synthetic and real contexts and tries refused INSERTs), which is
the part rows could slow down. Each side runs alternately, `scale.rounds` times; the median counts.
"""

from __future__ import annotations

import statistics
import time

from app.db.doctor import run_doctor
from app.db.migrate import release_revisions
from bench.kit import Context, Row, Section

NAME = "doctor"
TITLE = "palisade doctor"
TARGET_SECONDS = 1.0


def _timed(url: str, revisions: tuple[str, ...]) -> float:
    began = time.perf_counter()
    report = run_doctor(url, revisions=revisions)
    elapsed = time.perf_counter() - began
    if not report.ok:
        raise AssertionError(f"doctor failed on a benchmark database: {report.findings}")
    return elapsed


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    revisions = release_revisions()
    data = ctx.dataset
    empty = ctx.server.scratch("doctor")
    try:
        measured, baseline = [], []
        for _ in range(max(ctx.scale.rounds, 3)):
            measured.append(_timed(data.db.app_url, revisions))
            baseline.append(_timed(empty.app_url, revisions))
    finally:
        ctx.server.drop(empty)
    value, base = statistics.median(measured), statistics.median(baseline)
    section.add(Row(metric=f"palisade doctor, {data.documents:,} documents", value=value, unit="s", baseline=base,
                    ratio=value / base, target=f"< {TARGET_SECONDS:g} s", met=value < TARGET_SECONDS,
                    note=f"baseline: an empty migrated database; median of {len(measured)} alternating runs "
                         f"(min {min(measured):.3f} s, max {max(measured):.3f} s); catalog checks, policy texts, "
                         "reach and the rolled-back live probe"))
    return section
