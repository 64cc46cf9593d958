"""`python -m bench`: every benchmark, a table of ratios, and the results as JSON.

    scripts/bench [--scale full|smoke] [--only rls,roundtrips,...] [--out bench/results/latest.json]

Runs on `PALISADE_BENCH_DATABASE_URL` (a superuser URL) or on a private PostgreSQL cluster under
`.palisade/bench-cluster` that is kept, with its data set, between runs. Benchmarks never decide
whether the tests pass; `tests/bench` runs this at the smoke scale so the code cannot rot.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.kit import RESULTS, SCALES, BenchServer, Context, Row, Section, machine

MODULES = ("rls", "roundtrips", "http", "audit", "noisy", "hostile", "signins", "doctor", "scrub")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def _verdict(row: Row) -> str:
    if row.met is None:
        return ""
    return "met" if row.met else "MISSED"


def table(sections: list[Section]) -> str:
    """A Markdown table: the README carries it as printed."""
    lines = ["| benchmark | metric | measured | baseline | ratio | target | |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for section in sections:
        for row in section.rows:
            lines.append(f"| {section.title} | {row.metric} | {_fmt(row.value, row.unit)} | {_fmt(row.baseline, row.unit)} "
                         f"| {_fmt(row.ratio)} | {row.target or ''} | {_verdict(row)} |")
    return "\n".join(lines)


def run(scale_name: str, only: list[str], out: Path) -> dict[str, Any]:
    scale = SCALES[scale_name]
    started = time.perf_counter()
    sections: list[Section] = []
    with BenchServer.start() as server:
        ctx = Context(scale=scale, server=server, out_dir=out.parent)
        for name in only:
            module = _module(name)
            began = time.perf_counter()
            print(f"[bench] {name}: {module.TITLE} ...", file=sys.stderr, flush=True)
            section = module.run(ctx)
            section.seconds = time.perf_counter() - began
            sections.append(section)
            print(f"[bench] {name}: {section.seconds:.1f} s", file=sys.stderr, flush=True)
        dataset = ctx._dataset.describe() if ctx._dataset is not None else None
    result = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": scale_name,
        "machine": machine(),
        "dataset": dataset,
        "wall_s": round(time.perf_counter() - started, 1),
        "sections": [s.as_dict() for s in sections],
        "table": table(sections),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--only", default=",".join(MODULES), help=f"comma-separated, from: {', '.join(MODULES)}")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/<scale>.json)")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(only) - set(MODULES))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(MODULES)}")
    out = args.out or RESULTS / f"{args.scale}.json"
    result = run(args.scale, only, out)
    m = result["machine"]
    print(f"\nPalisade benchmarks, {result['generated_at'][:10]}, scale {result['scale']}: "
          f"{m['cores']} cores, {m['memory_gib']} GiB ({m['cpu']}); {result['wall_s']} s\n")
    print(result["table"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
