"""Alembic environment: runs only with the admin (schema owner) database URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

# Import every model module so the metadata is complete (used for comparisons, never create_all).
import app.alerts.models  # noqa: F401,E402
import app.audit.models  # noqa: F401,E402
import app.credentials.models  # noqa: F401,E402
import app.crypto.models  # noqa: F401,E402
import app.knowledge.models  # noqa: F401,E402
import app.tenancy.models  # noqa: F401,E402
import app.uploads.models  # noqa: F401,E402
from app.db.base import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.attributes.get("admin_url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    with engine.connect() as connection:
        # A migration waits at most this long for a lock, so it never queues a running install's
        # traffic behind it for long; it fails instead and can be retried.
        connection.execute(text("SET lock_timeout = '5s'"))
        # The database's defaults for every session (revision 0008) are for the app's requests; a
        # migration's own statements (an index build, a constraint validation) may take longer.
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("SET idle_in_transaction_session_timeout = 0"))
        connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported: run `palisade migrate`")
run_migrations_online()
