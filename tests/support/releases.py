"""The next release's migrations, as its checkout would have them: this one's plus one more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.db.migrate import head_revision
from tests.support.database import ROOT

PROBE_REVISION = "next_release_probe"


def next_release(dest: Path, *, needs_stop: str | None = None) -> Path:
    """A directory holding `migrations/` with a probe revision on top of this release's head (an
    expand step: a table comment; a contract step when `needs_stop` says why). Run `palisade` with
    it as the working directory and that package is the one imported."""
    shutil.copytree(ROOT / "migrations", dest / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "migrations" / "versions" / f"9999_01_01_0000-{PROBE_REVISION}.py").write_text(
        '"""Revoke what the previous release still uses."""\n\nfrom alembic import op\n\n'
        f'revision = "{PROBE_REVISION}"\ndown_revision = "{head_revision()}"\nbranch_labels = None\ndepends_on = None\n'
        + (f"needs_stop = {needs_stop!r}\n" if needs_stop else "")
        + "\n\ndef upgrade() -> None:\n    op.execute(\"COMMENT ON TABLE tenants IS 'next release'\")\n\n\n"
        "def downgrade() -> None:\n    op.execute('COMMENT ON TABLE tenants IS NULL')\n")
    return dest


def palisade(release: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`palisade ARGS` run as that release (its migrations), in a process of its own."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=release, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
