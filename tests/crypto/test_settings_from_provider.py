"""Production reads every secret from the provider: here, owner-only files, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.database import ROOT

ISSUERS = json.dumps([{"issuer": "https://idp.example.com/realms/palisade", "audience": "palisade"}])


def palisade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PALISADE_")}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, **env}, timeout=120)


@pytest.fixture
def secrets_dir(tmp_path: Path, database) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    for name, value in {"database-url": database.app_url, "turnstile-secret": "ts-secret-value-1"}.items():
        path = directory / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    return directory


def production(secrets_dir: Path, **extra: str) -> dict[str, str]:
    return {"PALISADE_MODE": "production", "PALISADE_ISSUERS": ISSUERS, "PALISADE_SECRET_PROVIDER": "files",
            "PALISADE_SECRETS_DIR": str(secrets_dir), **extra}


class TestFromFiles:
    def test_doctor_runs_on_the_database_url_read_from_a_file(self, secrets_dir: Path):
        result = palisade("doctor", env=production(secrets_dir))
        assert result.returncode == 0, result.stderr
        assert "checks passed" in result.stdout

    def test_missing_secret_is_named_never_valued(self, secrets_dir: Path, database):
        (secrets_dir / "database-url").unlink()
        result = palisade("doctor", env=production(secrets_dir))
        assert result.returncode == 1
        assert "database-url" in result.stderr and database.app_url not in result.stderr

    def test_a_file_others_can_read_is_refused(self, secrets_dir: Path, database):
        (secrets_dir / "database-url").chmod(0o644)
        result = palisade("doctor", env=production(secrets_dir))
        assert result.returncode == 1
        assert "database-url" in result.stderr and database.app_url not in result.stderr

    def test_a_secret_in_the_environment_is_refused(self, secrets_dir: Path, database):
        result = palisade("doctor", env=production(secrets_dir, PALISADE_DATABASE_URL=database.app_url))
        assert result.returncode == 1
        assert "PALISADE_DATABASE_URL" in result.stderr and database.app_url not in result.stderr

    def test_production_refuses_the_environment_provider(self, database):
        result = palisade("doctor", env={"PALISADE_MODE": "production", "PALISADE_ISSUERS": ISSUERS,
                                         "PALISADE_DATABASE_URL": database.app_url})
        assert result.returncode == 1
        assert "never from the environment" in result.stderr and database.app_url not in result.stderr


class TestEachCommandReadsOnlyItsSecrets:
    """The running app never asks for the schema owner's URL; `migrate` asks for it and the app's.

    A secret the app is not meant to read is planted unreadably (mode 0644 is refused when read):
    a command that asked for it would fail, so passing proves it never asked.
    """

    def test_the_app_never_reads_the_admin_url(self, secrets_dir: Path, database):
        planted = secrets_dir / "admin-database-url"
        planted.write_text(database.admin_url + "\n")
        planted.chmod(0o644)
        result = palisade("doctor", env=production(secrets_dir))
        assert result.returncode == 0, result.stderr

    def test_migrate_reads_the_admin_url_and_not_the_apps_other_secrets(self, secrets_dir: Path, database):
        planted = secrets_dir / "turnstile-secret"
        planted.chmod(0o644)  # the app's; migrate must not touch it
        admin = secrets_dir / "admin-database-url"
        admin.write_text(database.admin_url + "\n")
        admin.chmod(0o644)
        result = palisade("migrate", env=production(secrets_dir))
        assert result.returncode == 1
        assert "admin-database-url" in result.stderr and "turnstile-secret" not in result.stderr
        admin.chmod(0o600)
        result = palisade("migrate", env=production(secrets_dir))
        assert result.returncode == 0, result.stderr
        assert "migrations applied" in result.stdout

    def test_optional_secrets_are_read_only_when_named(self, secrets_dir: Path, database):
        planted = secrets_dir / "sentry-dsn"
        planted.write_text("https://key@sentry.example/1\n")
        planted.chmod(0o644)  # fatal if read
        assert palisade("doctor", env=production(secrets_dir, PALISADE_OPTIONAL_SECRETS="")).returncode == 0
        named = palisade("doctor", env=production(secrets_dir, PALISADE_OPTIONAL_SECRETS="sentry-dsn"))
        assert named.returncode == 1 and "sentry-dsn" in named.stderr
        unknown = palisade("doctor", env=production(secrets_dir, PALISADE_OPTIONAL_SECRETS="admin-database-url"))
        assert unknown.returncode == 1 and "PALISADE_OPTIONAL_SECRETS" in unknown.stderr
