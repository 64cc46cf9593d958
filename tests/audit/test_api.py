"""Reading and exporting the trail: who may, what they see, and that reading is itself recorded."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.support.api import Caller, World

PLATFORM = "00000000-0000-0000-0000-000000000000"


def events(caller: Caller, url: str, **params) -> dict:
    r = caller.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


class TestCustomerAdminReadsOwnTrail:
    def test_newest_first_with_cursor_pages(self, world: World):
        for i in range(4):
            world.admin.post(f"{world.ws(0)}/documents", json={"title": f"t{i}", "body": "b"})
        seen, cursor = [], None
        while True:
            page = events(world.admin, f"{world.base}/audit-events", limit=3, **({"cursor": cursor} if cursor else {}))
            seen += [e["seq"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and seen[-1] == 1 and len(seen) == len(set(seen))

    def test_filters(self, world: World):
        world.admin.post(f"{world.ws(0)}/documents", json={"title": "x", "body": "b"}, headers={"X-Correlation-ID": "find-me-1"})
        by_cid = events(world.admin, f"{world.base}/audit-events", correlation_id="find-me-1")["items"]
        assert [(e["category"], e["action"]) for e in by_cid] == [("content_change", "document.create")]
        doc_id = by_cid[0]["target_id"]
        assert [e["target_id"] for e in events(world.admin, f"{world.base}/audit-events", target_id=doc_id)["items"]] == [doc_id]
        created = events(world.admin, f"{world.base}/audit-events", category="configuration_change")["items"]
        assert {e["action"] for e in created} == {"workspace.create"}
        mine = events(world.admin, f"{world.base}/audit-events", actor=world.admin.subject)["items"]
        assert mine and all(e["actor_subject"] == world.admin.subject for e in mine)
        assert events(world.admin, f"{world.base}/audit-events", since="2999-01-01T00:00:00Z")["items"] == []

    def test_events_carry_who_what_where(self, world: World):
        world.admin.post(f"{world.ws(0)}/documents", json={"title": "x", "body": "b"},
                         headers={"X-Correlation-ID": "who-what-1", "User-Agent": "audit-test/1.0"})
        (e,) = events(world.admin, f"{world.base}/audit-events", correlation_id="who-what-1")["items"]
        assert e["actor_subject"] == world.admin.subject and e["actor_role"] == "owner" and e["actor_type"] == "user"
        assert e["workspace_id"] == str(world.workspaces[0]) and e["outcome"] == "success"
        assert e["user_agent"] == "audit-test/1.0" and e["client_ip"] == "203.0.113.7"
        assert len(e["hash"]) == 64 and len(e["prev_hash"]) == 64

    def test_bad_filter_is_422_problem(self, world: World):
        r = world.admin.get(f"{world.base}/audit-events", params={"category": "not-a-category"})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        r = world.admin.get(f"{world.base}/audit-events", params={"surprise": "1"})
        assert r.status_code == 422


class TestOthersCannotRead:
    def test_member_is_refused_and_that_is_recorded(self, world: World):
        member = world.join(workspace=0, role="owner")
        assert member.get(f"{world.base}/audit-events").status_code == 403
        denied = events(world.admin, f"{world.base}/audit-events", category="access_denied")["items"]
        assert any(e["actor_subject"] == member.subject and e["outcome"] == "denied" for e in denied)

    def test_other_tenant_looks_missing(self, world: World, other_world: World):
        foreign = other_world.admin.get(f"{world.base}/audit-events")
        missing = other_world.admin.get(f"/api/v1/tenants/{uuid.uuid4()}/audit-events")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json() == missing.json()


class TestPlatformTrail:
    def test_vendor_sees_platform_events_only(self, world: World, vendor: Caller, client):
        # Failed sign-ins are buffered and aggregated (app/audit/buffered.py): this one alone in a flush.
        client.app.state.audit_buffer.flush()
        client.get("/api/v1/tenants", headers={"Authorization": "Bearer not-a-token", "X-Correlation-ID": "bad-token-1"})
        client.app.state.audit_buffer.flush()
        page = events(vendor, "/api/v1/audit-events", correlation_id="bad-token-1")["items"]
        assert [(e["category"], e["action"], e["outcome"], e["tenant_id"]) for e in page] == [
            ("authentication", "token.rejected", "denied", PLATFORM)]
        assert world.admin.get("/api/v1/audit-events").status_code == 403

    def test_refusal_outside_a_tenant_goes_to_the_platform_chain(self, world: World, other_world: World, vendor: Caller):
        other_world.admin.get(f"{world.base}/workspaces", headers={"X-Correlation-ID": "probe-1"})
        (e,) = events(vendor, "/api/v1/audit-events", correlation_id="probe-1")["items"]
        assert (e["action"], e["target_id"], e["actor_subject"]) == ("tenant.not_member", str(world.tenant_id), other_world.admin.subject)
        # The probed tenant's own trail does not learn of it.
        assert events(world.admin, f"{world.base}/audit-events", correlation_id="probe-1")["items"] == []


def exported(body: bytes) -> tuple[list[dict], dict | None]:
    """The events of an export, and its trailer if the stream got that far (checked as a client should)."""
    lines = body.splitlines(keepends=True)
    if not lines or b'"trailer"' not in lines[-1]:
        return [json.loads(line) for line in lines], None
    trailer = json.loads(lines[-1])["trailer"]
    sent = b"".join(lines[:-1])
    assert trailer == {"events": len(lines) - 1, "sha256": hashlib.sha256(sent).hexdigest()}
    return [json.loads(line) for line in lines[:-1]], trailer


class TestExport:
    def test_json_lines_oldest_first_and_recorded(self, world: World):
        r = world.admin.get(f"{world.base}/audit-events/export", headers={"X-Correlation-ID": "export-1"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines, trailer = exported(r.content)
        assert trailer is not None
        assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
        assert lines[-1]["action"] == "audit_events.export"  # committed before the stream began
        assert lines[-1]["category"] == "data_export" and lines[-1]["correlation_id"] == "export-1"

    @pytest.mark.parametrize("category", ["workspace_crossing", "configuration_change"])
    def test_filters_apply(self, world: World, category: str):
        r = world.admin.get(f"{world.base}/audit-events/export", params={"category": category})
        lines, trailer = exported(r.content)
        assert trailer is not None and {e["category"] for e in lines} <= {category}

    def test_an_empty_export_still_ends_with_its_trailer(self, world: World):
        r = world.admin.get(f"{world.base}/audit-events/export", params={"category": "approval_decision"})
        assert exported(r.content) == ([], {"events": 0, "sha256": hashlib.sha256(b"").hexdigest()})

    def test_an_interrupted_export_has_no_trailer(self, world: World, database):
        for i in range(1100):  # more than one server-side batch (500)
            world.admin.post(f"{world.ws(0)}/documents", json={"title": f"d{i}", "body": "b"})
        killer = create_engine(database.superuser_db_url)
        with world.admin.client.stream("GET", f"{world.base}/audit-events/export",
                                       headers={"Authorization": f"Bearer {world.admin.token}"}) as r:
            chunks = r.iter_bytes()
            received = next(chunks)
            # PostgreSQL goes away mid-export: the backend holding the export's cursor is killed.
            with killer.connect() as conn:
                killed = conn.execute(text(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity"
                    " where datname = current_database() and usename = :role and state = 'idle in transaction'"),
                    {"role": database.app_role}).scalar_one()
            try:
                for chunk in chunks:
                    received += chunk
            except Exception:  # the transport may also report the broken stream: either way, no trailer
                pass
        killer.dispose()
        assert killed >= 1
        lines, trailer = exported(received)
        assert trailer is None and 0 < len(lines) < 1100
