"""The long schemathesis run: `python -m bench.fuzz [--examples N] [--stateful-examples N] [--steps N]`.

The same tests as the suite's (tests/edge/test_schemathesis.py: every operation stateless, another
tenant's ids, a stateful run; all checks), with more examples per operation and longer call chains.
Still derandomized: a run finds the same things every time; raise the numbers to look further.
It needs what the suite needs: PostgreSQL (`PALISADE_TEST_DATABASE_URL`, or a private cluster)
and the test IdP (`npm ci --prefix tests/idp`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="examples per operation (the suite: 5)")
    parser.add_argument("--stateful-examples", type=int, default=100, help="stateful scenarios (the suite: 10)")
    parser.add_argument("--steps", type=int, default=30, help="calls per stateful scenario (the suite: 10)")
    args, rest = parser.parse_known_args(argv)
    os.environ["PALISADE_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ["PALISADE_FUZZ_STATEFUL_EXAMPLES"] = str(args.stateful_examples)
    os.environ["PALISADE_FUZZ_STEPS"] = str(args.steps)
    os.chdir(ROOT)
    return int(pytest.main(["-q", "-p", "no:cacheprovider", "tests/edge/test_schemathesis.py", *rest]))


if __name__ == "__main__":
    sys.exit(main())
