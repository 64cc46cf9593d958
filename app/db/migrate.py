"""Alembic, driven from code so the installed wheel migrates without an alembic.ini on disk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import create_engine, pool, text

import migrations

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def alembic_config(*, admin_url: str, app_role: str) -> Config:
    if not ROLE_NAME.match(app_role):
        raise ValueError("the app role name must be a plain lower-case identifier")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s")
    cfg.attributes["admin_url"] = admin_url
    cfg.attributes["app_role"] = app_role
    return cfg


# The first revision that records which releases can run on the schema (below).
COMPATIBILITY_SINCE = "0011"


def upgrade(*, admin_url: str, app_role: str, revision: str = "head") -> None:
    """Apply migrations as the admin role; creates the app role if it is missing.

    Then record the newest applied migration that needs the previous release stopped (a contract
    step: its module's `needs_stop`), so an older release can tell whether it may run on the
    schema (doctor's `migration_head`): it may when it knows that revision.
    """
    command.upgrade(alembic_config(admin_url=admin_url, app_role=app_role), revision)
    script = _scripts()
    engine = create_engine(admin_url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.begin() as conn:
            current = MigrationContext.configure(conn).get_current_heads()
            applied = [rev.revision for rev in script.iterate_revisions(current, "base")]  # newest first
            if COMPATIBILITY_SINCE not in applied:
                return
            stops = [rev for rev in applied[: applied.index(COMPATIBILITY_SINCE)] if _needs_stop(script.get_revision(rev))]
            conn.execute(text("UPDATE schema_compatibility SET compatible_since = :since"),
                         {"since": stops[0] if stops else COMPATIBILITY_SINCE})
    finally:
        engine.dispose()


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier (RFC 5802/7677, as PostgreSQL stores it) computed here, so the
    password itself never reaches the server, its statement log or pg_stat_statements."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


def set_app_password(*, admin_url: str, app_role: str, password: str) -> None:
    """Give the app role the password its URL carries (the admin role may alter roles it created)."""
    if not ROLE_NAME.match(app_role):
        raise ValueError("the app role name must be a plain lower-case identifier")
    engine = create_engine(admin_url, poolclass=pool.NullPool, hide_parameters=True)
    with engine.begin() as conn:
        # A verifier is base64 and `$:` only: safe inside a literal.
        conn.exec_driver_sql(f"ALTER ROLE \"{app_role}\" PASSWORD '{scram_verifier(password)}'")
    engine.dispose()


def create_entra_app_role(*, admin_url: str, app_role: str, object_id: str) -> None:
    """Create the app role as the API identity's Entra principal before the migrations confine it.

    Azure keeps the Entra functions in the server's `postgres` database, so that is where this
    connects (as the same administrator); roles are cluster-wide.
    """
    from sqlalchemy.engine import make_url

    from app.db.entra import create_app_principal

    if not ROLE_NAME.match(app_role):
        raise ValueError("the app role name must be a plain lower-case identifier")
    engine = create_engine(make_url(admin_url).set(database="postgres"), poolclass=pool.NullPool, hide_parameters=True)
    with engine.begin() as conn:
        create_app_principal(conn, role=app_role, object_id=object_id)
    engine.dispose()


@dataclass(frozen=True)
class PendingMigration:
    revision: str
    doc: str
    # Why the running release must be stopped before this migration runs, from the migration's own
    # module-level `needs_stop` (a contract step the previous release cannot run against); None:
    # it is an expand step, the running release keeps working while and after it runs.
    needs_stop: str | None


@dataclass(frozen=True)
class MigrationPlan:
    current: tuple[str, ...]  # the database's revision(s); empty for an empty schema
    head: str
    pending: tuple[PendingMigration, ...]  # oldest first

    @property
    def stops(self) -> tuple[PendingMigration, ...]:
        return tuple(m for m in self.pending if m.needs_stop)


class UnknownRevision(Exception):
    """The database is at a revision this release does not ship (a newer release migrated it)."""


def plan(*, admin_url: str) -> MigrationPlan:
    """What `upgrade` would apply, read without changing anything."""
    script = _scripts()
    engine = create_engine(admin_url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        with engine.connect() as conn:
            current = tuple(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    try:
        revisions = list(script.iterate_revisions("heads", current or "base"))
    except (CommandError, RevisionError):
        raise UnknownRevision(f"the database is at {', '.join(current)}, which this release does not know") from None
    pending = tuple(
        PendingMigration(revision=rev.revision, doc=" ".join((rev.doc or "").split()), needs_stop=_needs_stop(rev))
        for rev in reversed(revisions) if rev.revision not in current
    )
    head = script.get_current_head()
    assert head is not None
    return MigrationPlan(current=current, head=head, pending=pending)


def _needs_stop(rev: Script) -> str | None:
    """Why the previous release must be stopped before this migration (its module's `needs_stop`),
    or None for an expand step."""
    return getattr(rev.module, "needs_stop", None)


def _scripts() -> ScriptDirectory:
    """The migrations this build ships (reading them needs no database and no role)."""
    return ScriptDirectory.from_config(alembic_config(admin_url="", app_role="palisade_app"))


def head_revision() -> str:
    """The newest revision this build ships (what the database must be at)."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def release_revisions() -> tuple[str, ...]:
    """Every revision this build ships, oldest first (the last is the head)."""
    return tuple(rev.revision for rev in reversed(list(_scripts().walk_revisions())))
