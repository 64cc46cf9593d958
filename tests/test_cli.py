"""The `palisade` command as an operator runs it: real processes, real databases."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, pool, text

from app.config import IssuerConfig, Settings
from app.main import StartupRefused, create_app
from tests.support.database import ROOT, superuser_execute
from tests.support.releases import PROBE_REVISION, next_release, palisade

PALISADE = [sys.executable, "-m", "app.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PALISADE, *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestDoctorCommand:
    def test_passes_on_the_migrated_database(self, database):
        result = run("doctor", env={"PALISADE_DATABASE_URL": database.app_url})
        assert result.returncode == 0, result.stderr
        assert re.search(r"all \d+ checks passed", result.stdout)

    def test_says_what_turning_turnstile_off_gives_up(self, database):
        result = run("doctor", env={"PALISADE_DATABASE_URL": database.app_url, "PALISADE_TURNSTILE": "off"})
        assert result.returncode == 0, result.stderr
        assert "note: PALISADE_TURNSTILE=off: public routes (invitation acceptance) get no human check" in result.stdout

    def test_fails_naming_the_table_without_force(self, fresh_database):
        superuser_execute(fresh_database.superuser_db_url, "ALTER TABLE documents NO FORCE ROW LEVEL SECURITY")
        result = run("doctor", env={"PALISADE_DATABASE_URL": fresh_database.app_url})
        assert result.returncode == 1
        assert "force_rls: public.documents" in result.stderr


APP_HOST = "palisade.example.com"


class TestProductionStartup:
    def settings(self, db) -> Settings:
        return Settings(_env_file=None, mode="production", database_url=db.app_url, turnstile_secret="test-secret",
                        secret_provider="files", secrets_dir="/run/credentials/palisade", allowed_hosts=[APP_HOST],
                        issuers=[IssuerConfig(issuer="https://idp.example.invalid/realms/x", audience="palisade")])

    def test_refuses_a_database_doctor_rejects(self, fresh_database):
        superuser_execute(fresh_database.superuser_db_url, "CREATE VIEW leaky AS SELECT * FROM documents")
        with pytest.raises(StartupRefused, match="public.leaky"), TestClient(create_app(self.settings(fresh_database))):
            pass

    def test_refuses_to_start_without_turnstile(self, database):
        with pytest.raises(ValueError, match="turnstile-secret"):
            create_app(self.settings(database).model_copy(update={"turnstile_secret": None}))

    def test_starts_on_a_sound_database(self, database):
        with TestClient(create_app(self.settings(database))) as client:
            assert client.get("/health/ready").status_code == 200

    def test_starts_without_turnstile_only_when_told_so(self, database, caplog):
        """An air-gapped install cannot reach Cloudflare: PALISADE_TURNSTILE=off, said explicitly."""
        settings = self.settings(database).model_copy(update={"turnstile_secret": None, "turnstile": "off"})
        with TestClient(create_app(settings)) as client:
            assert client.get("/health/ready").status_code == 200
        assert "turnstile_off" in [r.getMessage() for r in caplog.records]

    def test_refuses_to_start_without_its_host_names(self, database):
        # Issue 16: with no allow-list every Host was served, and the client chose the name the app
        # believed it had (redirects were built from it).
        with pytest.raises(ValueError, match="production mode needs PALISADE_ALLOWED_HOSTS"):
            create_app(self.settings(database).model_copy(update={"allowed_hosts": []}))

    def test_serve_refuses_without_host_names_with_a_clear_error(self, database, tmp_path):
        secrets_dir = tmp_path / "credentials"
        secrets_dir.mkdir(mode=0o700)
        for name, value in {"database-url": database.app_url, "turnstile-secret": "test-secret"}.items():
            (secrets_dir / name).write_text(value + "\n")
            (secrets_dir / name).chmod(0o600)
        env = {"PALISADE_MODE": "production", "PALISADE_SECRET_PROVIDER": "files", "PALISADE_SECRETS_DIR": str(secrets_dir),
               "PALISADE_ISSUERS": '[{"issuer": "https://idp.example.invalid/realms/x", "audience": "palisade"}]'}
        # (A guard, not a measurement: before the fix the server started and kept serving.)
        result = run("serve", "--port", str(free_port()), env=env, timeout=60)
        assert result.returncode == 1
        assert "configuration error: production mode needs PALISADE_ALLOWED_HOSTS" in result.stderr
        assert "Traceback" not in result.stderr and database.app_url not in result.stderr

    @pytest.mark.parametrize("hosts", ["*", "https://palisade.example.com", "palisade.example.com:443", "*.example.com"])
    def test_host_names_are_bare_names(self, hosts):
        with pytest.raises(ValueError, match="PALISADE_ALLOWED_HOSTS lists bare host names") as refused:
            Settings(_env_file=None, allowed_hosts=hosts)
        assert hosts not in str(refused.value)

    def test_over_tls_a_spoofed_host_gets_no_redirect_built_from_it(self, database):
        with TestClient(create_app(self.settings(database)), base_url=f"https://{APP_HOST}") as client:
            for host in (APP_HOST, "evil.example"):
                r = client.get("/api/v1/tenants/", headers={"Host": host}, follow_redirects=False)
                assert "location" not in r.headers
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.status_code == (404 if host == APP_HOST else 421)
            assert client.get("/api/v1/tenants", follow_redirects=False).status_code == 401


class TestTenantCreate:
    def test_creates_tenant_with_its_first_customer_admin(self, database):
        slug = f"cli-{secrets.token_hex(4)}"
        result = run("tenant", "create", "--name", "Acme", "--slug", slug, "--admin-issuer", "https://idp", "--admin-subject", "alice",
                     env={"PALISADE_DATABASE_URL": database.app_url})
        assert result.returncode == 0, result.stderr
        tenant_id = result.stdout.strip()
        engine = create_engine(database.superuser_db_url, poolclass=pool.NullPool)
        with engine.connect() as conn:
            role = conn.scalar(text("select m.role from tenant_memberships m join users u on u.tenant_id = m.tenant_id and u.id = m.user_id "
                                    "where m.tenant_id = :t and u.subject = 'alice'"), {"t": tenant_id})
            audited = conn.scalar(text("select count(*) from audit_events where tenant_id = :t and action = 'tenant.create'"), {"t": tenant_id})
        engine.dispose()
        assert (role, audited) == ("customer_admin", 1)

    def test_bad_slug_is_refused_without_writing(self, database):
        result = run("tenant", "create", "--name", "Acme", "--slug", "Not A Slug", "--admin-issuer", "https://idp", "--admin-subject", "a",
                     env={"PALISADE_DATABASE_URL": database.app_url})
        assert result.returncode == 1
        assert "invalid name or slug" in result.stderr


class TestQuickStart:
    """`palisade dev`: private cluster, migrations, demo tenant, a token that works, clean stop."""

    def test_dev_serves_the_demo_tenant_to_its_printed_token(self):
        data_dir = ROOT / ".palisade" / f"test-dev-{secrets.token_hex(3)}"
        port = free_port()
        proc = subprocess.Popen([*PALISADE, "dev", "--data-dir", str(data_dir), "--port", str(port), "--pg-port", str(free_port())],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={k: v for k, v in os.environ.items() if not k.startswith("PALISADE_")})
        try:
            output = ""
            deadline = time.monotonic() + 90
            while "try: curl" not in output and time.monotonic() < deadline and proc.poll() is None:
                output += proc.stdout.readline()
            token = re.search(r"^(eyJ[\w-]+\.[\w-]+\.[\w-]+)$", output, re.M)
            tenant = re.search(r"demo tenant: ([0-9a-f-]{36})", output)
            assert token and tenant, output
            for _ in range(100):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/tenants/{tenant[1]}/workspaces",
                               headers={"Authorization": f"Bearer {token[1]}"})
            assert answer.status_code == 200
            assert sorted(w["slug"] for w in answer.json()) == ["brand-a", "brand-b"]
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/tenants/{tenant[1]}/workspaces").status_code == 401
            # The quick-start server believes no X-Forwarded-For: the audit trail records the real peer.
            auth = {"Authorization": f"Bearer {token[1]}"}
            invited = httpx.post(f"http://127.0.0.1:{port}/api/v1/tenants/{tenant[1]}/invitations",
                                 json={"email": "someone@people.example", "tenant_role": "member"},
                                 headers={**auth, "X-Forwarded-For": "198.51.100.77"})
            assert invited.status_code == 201, invited.text
            trail = httpx.get(f"http://127.0.0.1:{port}/api/v1/tenants/{tenant[1]}/audit-events",
                              params={"category": "invitation"}, headers=auth).json()["items"]
            assert [e["client_ip"] for e in trail] == ["127.0.0.1"]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # the private cluster stopped too
            shutil.rmtree(data_dir, ignore_errors=True)


class TestMigrate:
    def test_sets_the_app_roles_password_as_a_scram_verifier(self, fresh_database):
        import base64
        import hashlib
        import hmac

        from sqlalchemy.engine import make_url

        app_url = make_url(fresh_database.app_url).set(password="s3cret-app-pw").render_as_string(hide_password=False)
        result = run("migrate", env={"PALISADE_DATABASE_URL": app_url, "PALISADE_ADMIN_DATABASE_URL": fresh_database.admin_url})
        assert result.returncode == 0, result.stderr
        assert "s3cret-app-pw" not in result.stdout + result.stderr
        engine = create_engine(fresh_database.superuser_db_url, poolclass=pool.NullPool)
        with engine.connect() as conn:
            stored = conn.scalar(text("select rolpassword from pg_authid where rolname = :r"), {"r": fresh_database.app_role})
        engine.dispose()
        # SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>; the password checks against it.
        scheme, iterations_salt, keys = stored.split("$")
        iterations, salt = iterations_salt.split(":")
        stored_key, _ = keys.split(":")
        salted = hashlib.pbkdf2_hmac("sha256", b"s3cret-app-pw", base64.b64decode(salt), int(iterations))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        assert scheme == "SCRAM-SHA-256" and base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


def _revision(db) -> tuple[str, ...]:
    engine = create_engine(db.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        found = tuple(conn.scalars(text("SELECT version_num FROM alembic_version")))
    engine.dispose()
    return found


@pytest.fixture
def database_one_release_behind(migrated_template):
    """A database the previous release migrated: at this release's head's down revision."""
    from alembic.script import ScriptDirectory

    from app.db.migrate import alembic_config, upgrade
    from tests.support.database import TestDatabase

    script = ScriptDirectory.from_config(alembic_config(admin_url="", app_role=migrated_template.app_role))
    head = script.get_revision(script.get_current_head())
    name = f"{migrated_template.name}_behind_{secrets.token_hex(3)}"
    superuser_execute(migrated_template.superuser_url, f"CREATE DATABASE {name} OWNER {migrated_template.admin_role}")
    db = TestDatabase(name=name, superuser_url=migrated_template.superuser_url,
                      admin_role=migrated_template.admin_role, app_role=migrated_template.app_role)
    upgrade(admin_url=db.admin_url, app_role=db.app_role, revision=head.down_revision)
    yield db, head.down_revision, head.revision
    superuser_execute(db.superuser_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class TestMigrationPlan:
    """`palisade migrate --list-pending` / `--check`: what an upgrade would apply, changing nothing."""

    def test_lists_what_an_upgrade_would_apply_and_changes_nothing(self, database_one_release_behind):
        db, current, head = database_one_release_behind
        listed = run("migrate", "--list-pending", env={"PALISADE_ADMIN_DATABASE_URL": db.admin_url})
        assert listed.returncode == 0, listed.stderr
        assert f"database at {current}; this release's head is {head}; 1 migration(s) to apply" in listed.stdout
        assert re.search(rf"^  {head}: \S", listed.stdout, re.M)
        as_json = run("migrate", "--list-pending", "--json", env={"PALISADE_ADMIN_DATABASE_URL": db.admin_url})
        import json

        planned = json.loads(as_json.stdout)
        assert planned["current"] == [current] and planned["head"] == head
        assert [m["revision"] for m in planned["pending"]] == [head] and planned["pending"][0]["needs_stop"] is None
        checked = run("migrate", "--check", env={"PALISADE_ADMIN_DATABASE_URL": db.admin_url})
        assert checked.returncode == 0, checked.stderr  # an expand step: no stop needed
        assert _revision(db) == (current,)  # nothing was applied

    def test_check_fails_when_a_pending_migration_needs_the_running_release_stopped(self, database_one_release_behind, tmp_path):
        db, _, _ = database_one_release_behind
        release = next_release(tmp_path, needs_stop="the previous release still inserts into audit_events")
        env = {"PALISADE_ADMIN_DATABASE_URL": db.admin_url}
        result = palisade(release, "migrate", "--check", env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert (f"{PROBE_REVISION}: Revoke what the previous release still uses. "
                "[NEEDS A STOP: the previous release still inserts") in result.stdout
        assert f"must be stopped before {PROBE_REVISION}" in result.stderr
        assert palisade(release, "migrate", "--list-pending", env=env).returncode == 0  # listing alone never fails on it

    def test_a_database_a_newer_release_migrated_is_named_with_exit_3(self, fresh_database):
        superuser_execute(fresh_database.superuser_db_url, "UPDATE alembic_version SET version_num = 'from_the_future'")
        result = run("migrate", "--check", env={"PALISADE_ADMIN_DATABASE_URL": fresh_database.admin_url})
        assert result.returncode == 3
        assert "the database is at from_the_future, which this release does not know" in result.stderr
        assert "Traceback" not in result.stderr

    def test_needs_the_admin_url(self):
        result = run("migrate", "--list-pending", env={"PALISADE_ADMIN_DATABASE_URL": ""})
        assert result.returncode == 1 and "PALISADE_ADMIN_DATABASE_URL" in result.stderr
