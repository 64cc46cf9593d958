"""Races the service's own checks cannot see still answer cleanly and change nothing."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import create_engine, pool, text

from tests.support.api import World


def wait_for_lock_wait(engine, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.scalar(text("select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()")):
                return
            time.sleep(0.05)
    raise AssertionError("the API request never waited on the competing insert")


class TestConcurrentSlug:
    def test_second_workspace_with_the_same_slug_is_409_not_500(self, world: World, database):
        engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
        answer: dict[str, object] = {}
        with engine.connect() as rival:
            rival.execute(text("insert into workspaces (tenant_id, id, name, slug) values (:t, :id, 'Rival', 'contested')"),
                          {"t": world.tenant_id, "id": uuid.uuid4()})  # uncommitted: invisible to the API's check
            caller = threading.Thread(target=lambda: answer.setdefault(
                "r", world.admin.post(f"{world.base}/workspaces", json={"name": "Mine", "slug": "contested"})))
            caller.start()
            wait_for_lock_wait(engine)
            rival.commit()
            caller.join(timeout=30)
        engine.dispose()
        r = answer["r"]
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "contested" not in r.text and "uq_" not in r.text
        names = [w["name"] for w in world.admin.get(f"{world.base}/workspaces").json()]
        assert "Mine" not in names and "Rival" in names
