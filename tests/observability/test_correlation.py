"""Correlation ids: kept when well-formed, replaced otherwise, echoed, and on every log line of the request."""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.api import World

CID = "X-Correlation-ID"


class TestIncomingId:
    def test_well_formed_id_is_kept_and_echoed(self, client):
        r = client.get("/health/live", headers={CID: "req-2026.11.24:abc_DEF-1"})
        assert r.headers[CID] == "req-2026.11.24:abc_DEF-1"

    @pytest.mark.parametrize("bad", ["a" * 129, "has space", "semi;colon", "<script>", "line\\nbreak", ""])
    def test_malformed_id_is_replaced(self, client, bad):
        r = client.get("/health/live", headers={CID: bad})
        assert r.headers[CID] != bad and len(r.headers[CID]) == 32 and r.headers[CID].isalnum()

    def test_missing_id_is_made_and_differs_per_request(self, client):
        first, second = client.get("/health/live").headers[CID], client.get("/health/live").headers[CID]
        assert first != second

    def test_error_answers_carry_it_too(self, client):
        r = client.get("/api/v1/tenants", headers={CID: "err-cid-1"})
        assert r.status_code == 401 and r.headers[CID] == "err-cid-1"


class TestEveryLogLineOfTheRequest:
    def test_lines_logged_during_the_request_carry_correlation_and_trace_ids(self, world: World, capsys):
        capsys.readouterr()
        r = world.admin.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}, headers={CID: "log-cid-1"})
        assert r.status_code == 201
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        audit_lines = [line for line in lines if line.get("event") == "audit_event"]
        assert audit_lines, lines
        assert all(line.get("correlation_id") == "log-cid-1" for line in audit_lines)
        assert all(len(line.get("trace_id") or "") == 32 for line in audit_lines)
        assert audit_lines[0]["audit"]["correlation_id"] == "log-cid-1"
        assert audit_lines[0]["audit"]["trace_id"] == audit_lines[0]["trace_id"]

    def test_context_does_not_leak_into_the_next_request(self, world: World, capsys):
        world.admin.post(f"{world.ws(0)}/documents", json={"title": "t", "body": "b"}, headers={CID: "first-cid"})
        capsys.readouterr()
        logging.getLogger("palisade.test").info("between requests")
        (line,) = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "between requests" in x]
        assert "correlation_id" not in line
