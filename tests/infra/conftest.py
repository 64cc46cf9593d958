"""Fixtures for the infra tests; the harness (mocks, program runner) lives in infra_harness.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The program's own packages (infra/palisade_infra, infra/policy) and the harness, importable by name.
for path in (REPO / "infra", REPO / "infra" / "policy", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from infra_harness import ProgramRun, example_stack_config, run_program  # noqa: E402


@pytest.fixture(scope="session")
def example() -> ProgramRun:
    """The whole program, run once for the example stack."""
    return run_program(example_stack_config())
