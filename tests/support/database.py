"""Test databases: built by the real migrations on a real PostgreSQL, never with create_all.

`PALISADE_TEST_DATABASE_URL` names a superuser URL (this machine's server); without it a private
throwaway cluster is started with the server binaries on the machine.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from app.db.migrate import upgrade

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TestDatabase:
    __test__ = False  # a helper, not a test class

    name: str
    superuser_url: str
    admin_role: str
    app_role: str

    def _url(self, user: str, database: str | None = None) -> str:
        return make_url(self.superuser_url).set(username=user, password=None, database=database or self.name).render_as_string(hide_password=False)

    @property
    def admin_url(self) -> str:
        return self._url(self.admin_role)

    @property
    def app_url(self) -> str:
        return self._url(self.app_role)

    @property
    def superuser_db_url(self) -> str:
        return make_url(self.superuser_url).set(database=self.name).render_as_string(hide_password=False)


def superuser_execute(superuser_url: str, *statements: str) -> None:
    engine = create_engine(superuser_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_superuser_url() -> Iterator[str]:
    url = os.environ.get("PALISADE_TEST_DATABASE_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    from app.db.cluster import LocalCluster

    cluster = LocalCluster(ROOT / ".palisade" / "test-cluster", port=55432)
    yield cluster.start()
    cluster.stop()


@pytest.fixture(scope="session")
def migrated_template(pg_superuser_url: str) -> Iterator[TestDatabase]:
    """A migrated database nobody connects to afterwards, so it can be cloned per test."""
    tag = secrets.token_hex(4)
    db = TestDatabase(
        name=f"palisade_tpl_{tag}",
        superuser_url=pg_superuser_url,
        admin_role=f"palisade_t{tag}_admin",
        app_role=f"palisade_t{tag}_app",
    )
    # The admin role is what a managed service gives: owns the database, may create roles, is no superuser.
    superuser_execute(
        pg_superuser_url,
        f"CREATE ROLE {db.admin_role} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS",
        f"CREATE DATABASE {db.name} OWNER {db.admin_role}",
    )
    upgrade(admin_url=db.admin_url, app_role=db.app_role)
    yield db
    clones = _clones.pop(db.name, [])
    superuser_execute(
        pg_superuser_url,
        *(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in [*clones, db.name]),
        f"DROP OWNED BY {db.app_role}",
        f"DROP ROLE IF EXISTS {db.app_role}",
        f"DROP ROLE IF EXISTS {db.admin_role}",
    )


_clones: dict[str, list[str]] = {}


def clone(template: TestDatabase, suffix: str) -> TestDatabase:
    """A copy of the template, with the template's own settings (`ALTER DATABASE ... SET`, which
    CREATE DATABASE does not copy), so it is what the migrations made."""
    name = f"{template.name}_{suffix}_{secrets.token_hex(3)}"
    superuser_execute(template.superuser_url, f"CREATE DATABASE {name} TEMPLATE {template.name} OWNER {template.admin_role}")
    superuser_execute(template.superuser_url, f"""
        DO $$ DECLARE setting text; BEGIN
          FOR setting IN SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                          WHERE d.datname = '{template.name}' AND s.setrole = 0 LOOP
            EXECUTE format('ALTER DATABASE %I SET %s = %L', '{name}', split_part(setting, '=', 1),
                           substr(setting, length(split_part(setting, '=', 1)) + 2));
          END LOOP;
        END $$""")
    _clones.setdefault(template.name, []).append(name)
    return TestDatabase(name=name, superuser_url=template.superuser_url, admin_role=template.admin_role, app_role=template.app_role)


@pytest.fixture(scope="session")
def database(migrated_template: TestDatabase) -> TestDatabase:
    """The shared migrated database; tests keep apart by creating their own tenants."""
    return clone(migrated_template, "main")


@pytest.fixture
def fresh_database(migrated_template: TestDatabase) -> Iterator[TestDatabase]:
    """A database of one's own, for tests that break the schema on purpose."""
    db = clone(migrated_template, "f")
    yield db
    superuser_execute(db.superuser_url, f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")
    _clones[migrated_template.name].remove(db.name)
