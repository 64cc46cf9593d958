# Installed by Ansible (role palisade).
"""Print, as JSON, what `palisade migrate` would apply: {"current": [...], "head": ..., "pending": [...]}.

Run as `palisadectl --release DIR --python palisade-migrations.py APP_ROLE`, so it uses that
release's migrations and the admin credential systemd loaded. It changes nothing. Exit 3 when the
database is at a revision this release does not know (a newer release migrated it).
"""

import json
import os
import sys
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, pool

from app.db.migrate import alembic_config


def main(app_role: str) -> int:
    url = (Path(os.environ["CREDENTIALS_DIRECTORY"]) / "admin-database-url").read_text().strip()
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    script = ScriptDirectory.from_config(alembic_config(admin_url=url, app_role=app_role))
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            current = tuple(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    try:
        revisions = list(script.iterate_revisions("heads", current or "base"))
    except CommandError as exc:
        print(f"the database is at {', '.join(current)}, which this release does not know: {exc}", file=sys.stderr)
        return 3
    pending = [{"revision": rev.revision, "doc": rev.doc or ""} for rev in reversed(revisions) if rev.revision not in current]
    print(json.dumps({"current": list(current), "head": script.get_current_head(), "pending": pending}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
