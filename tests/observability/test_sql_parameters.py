"""SQL parameters never reach a log line: a write that fails in PostgreSQL logs the statement, not the values.

Before: the failing write's exception, logged by the error handler, carried SQLAlchemy's
`[parameters: ...]`, so a document's title and body (personal data, client content) landed in the
error log, and the scrubber, which knows secret formats and not prose, kept them.
"""

from __future__ import annotations

import logging
import secrets

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.api import make_world, person, settings_for
from tests.support.database import superuser_execute


def test_a_failing_write_logs_no_document_text(fresh_database, idp, caplog: pytest.LogCaptureFixture,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    # A constraint the API does not know about, so the write gets as far as PostgreSQL and fails there.
    superuser_execute(fresh_database.superuser_db_url,
                      "ALTER TABLE documents ADD CONSTRAINT short_bodies CHECK (length(body) < 40)")
    caplog.set_level(logging.DEBUG)
    title, body = f"Patient {secrets.token_hex(6)}", f"Diagnosis {secrets.token_hex(24)}"
    app = create_app(settings_for(fresh_database, idp))
    with TestClient(app, raise_server_exceptions=False) as client:
        world = make_world(client, idp, person(client, idp, roles=["internal_admin"]))
        r = world.admin.post(f"{world.ws(0)}/documents", json={"title": title, "body": body})
    assert r.status_code == 500
    assert title not in r.text and body not in r.text
    logged = caplog.text + "".join(capfd.readouterr())
    assert "integrity_error" in logged or "unhandled_error" in logged  # the failure itself was logged
    assert title not in logged and body not in logged
