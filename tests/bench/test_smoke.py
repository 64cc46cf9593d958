"""The benchmarks at their smoke size, so they cannot rot. Their figures decide nothing here:
what is asserted is that every benchmark runs, reports what it promises, and gets its own
correctness checks right (RLS and the explicit WHERE return the same rows, no context-only round
trip, a gap-free audit chain, EXPLAIN plans saved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import MODULES, run


@pytest.fixture(scope="module")
def results(pg_superuser_url: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> dict:
    # The bench server is the suite's own PostgreSQL (this machine's, or the suite's private cluster).
    monkeypatch_module.setenv("PALISADE_BENCH_DATABASE_URL", pg_superuser_url)
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    result = run("smoke", list(MODULES), out)
    assert json.loads(Path(out).read_text())["scale"] == "smoke"
    return result


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _section(results: dict, name: str) -> dict:
    return next(s for s in results["sections"] if s["name"] == name)


class TestEveryBenchmark:
    def test_every_module_reports_ratios_against_a_baseline(self, results: dict) -> None:
        assert [s["name"] for s in results["sections"]] == list(MODULES)
        for section in results["sections"]:
            assert section["rows"], section["name"]
            assert any(r["ratio"] is not None and r["baseline"] for r in section["rows"]), section["name"]
            for row in section["rows"]:
                if row["target"]:
                    assert row["met"] in (True, False), row

    def test_the_table_and_machine_are_written(self, results: dict) -> None:
        assert results["machine"]["cores"] >= 1
        assert results["table"].startswith("| benchmark |")
        assert results["table"].count("\n") >= sum(len(s["rows"]) for s in results["sections"]) + 1


class TestRls:
    def test_plans_are_saved_and_put_the_tenant_in_the_index_condition(self, results: dict) -> None:
        plans = _section(results, "rls")["artifacts"]["explain"]
        assert set(plans) == {"latest", "count_workspace", "count_tenant"}
        for plan in plans.values():
            assert "Index" in plan["app_role_rls"] and plan["tenant_in_index_cond"], plan["app_role_rls"]


class TestRoundTrips:
    def test_the_context_costs_no_round_trip_of_its_own(self, results: dict) -> None:
        section = _section(results, "roundtrips")
        context_row = next(r for r in section["rows"] if "only set the" in r["metric"])
        assert context_row["value"] == 0 and context_row["met"] is True
        trips = section["artifacts"]["round_trips"]
        # The documents query shares its round trip with the context (shown as SQL, or as the
        # prepared statement psycopg makes of it after a few runs).
        documents = [t for t in trips if "SELECT documents" in t]
        assert documents and all(" + " in t for t in documents), trips
        assert not any("BEGIN" in t or "COMMIT" in t for t in trips), "a read needs no explicit transaction"
        assert section["artifacts"]["items_returned"] > 0


class TestHostile:
    def test_each_body_is_measured_and_the_victim_compared(self, results: dict) -> None:
        section = _section(results, "hostile")
        costs = section["artifacts"]["costs"]
        assert set(costs) >= {"victim GET documents", "invented keys"}
        for name, cost in costs.items():
            assert cost["cpu_ms"] >= 0 and cost["response_bytes"] > 0, name
            if name != "victim GET documents":
                assert cost["request_bytes"] <= 1_048_576 and set(cost["statuses"]) <= {"400", "422"}, (name, cost)
        p99 = [r for r in section["rows"] if r["metric"].startswith("tenant B p99")]
        assert len(p99) == 2 and all(r["value"] > 0 and r["baseline"] > 0 for r in p99)
        # Past its allowance the neighbour's costliest body is refused: by the limiter (429), or before
        # it by the body checks (422 shape, 413 cap) when that body never reaches the limiter.
        refused = section["artifacts"]["refused"]["statuses"]
        assert refused and set(refused) <= {"413", "422", "429"}, refused


class TestSignIns:
    def test_the_flood_is_refused_and_its_audit_is_batched(self, results: dict) -> None:
        artifacts = _section(results, "signins")["artifacts"]
        assert set(artifacts["flood"]["statuses"]) <= {"401", "429"} and artifacts["flood"]["requests"] > 0
        assert set(artifacts["flooded"]["statuses"]) == {"200"}  # no legitimate request refused
        assert artifacts["failures"] > 0 and 0 < artifacts["transactions"] <= artifacts["events"] <= artifacts["failures"]
