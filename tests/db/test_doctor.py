"""`palisade doctor`: passes on the migrated schema and names the object of every rule a broken one breaks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from app.db.doctor import CHECKS, Finding, Report, is_true_option, run_doctor, server_version_problem
from app.db.migrate import head_revision, release_revisions
from tests.support.database import superuser_execute
from tests.support.releases import PROBE_REVISION, next_release, palisade

if TYPE_CHECKING:  # imported at runtime, pytest would try to collect the Test* dataclass
    from tests.support.database import TestDatabase


def admin_execute(db: TestDatabase, *statements: str) -> None:
    """DDL as the schema owner, the role migrations run as."""
    superuser_execute(db.admin_url, *statements)


def doctor(db: TestDatabase) -> Report:
    return run_doctor(db.app_url, revisions=release_revisions())


def of(report: Report, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


def subjects(report: Report, check: str) -> list[str]:
    return [f.subject for f in of(report, check)]


class TestMigratedSchemaPasses:
    def test_no_findings_and_every_check_ran(self, database):
        report = doctor(database)
        assert report.findings == []
        assert report.ok
        assert report.checks_run == list(CHECKS)

    def test_head_check_is_skipped_without_a_head(self, database):
        report = run_doctor(database.app_url)
        assert report.ok
        assert "migration_head" not in report.checks_run
        assert report.checks_run == [c for c in CHECKS if c != "migration_head"]

    def test_plain_postgresql_scheme_is_accepted(self, database):
        assert run_doctor(database.app_url.replace("postgresql+psycopg://", "postgresql://", 1)).ok


class TestServerVersion:
    @pytest.mark.parametrize("num", [140013, 150000, 150013, 160009, 170005, 130020])
    def test_too_old(self, num):
        assert server_version_problem(num) is not None

    @pytest.mark.parametrize("num", [150014, 150020, 160010, 170006, 180000, 190001])
    def test_recent_enough(self, num):
        assert server_version_problem(num) is None

    def test_names_the_fixed_minor(self):
        assert "16.10" in server_version_problem(160009)


class TestForceRowLevelSecurity:
    def test_no_force_names_the_table(self, fresh_database):
        admin_execute(fresh_database, "ALTER TABLE documents NO FORCE ROW LEVEL SECURITY")
        report = doctor(fresh_database)
        assert not report.ok
        assert [(f.check, f.subject) for f in report.findings] == [("force_rls", "public.documents")]

    def test_disabled_rls_names_the_table(self, fresh_database):
        admin_execute(fresh_database, "ALTER TABLE workspaces DISABLE ROW LEVEL SECURITY")
        # The probe's INSERT for another tenant now gets in, and says so.
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("rls_enabled", "public.workspaces"), ("probe_with_check", "public.workspaces")]


class TestPolicyMissing:
    def test_tenant_table_without_policy(self, fresh_database):
        admin_execute(fresh_database, "DROP POLICY tenant_isolation ON audit_chain_heads")
        report = doctor(fresh_database)
        assert [(f.check, f.subject) for f in report.findings] == [
            ("policy_missing", "public.audit_chain_heads"), ("policy_expected", "public.audit_chain_heads.tenant_isolation")]

    def test_new_tenant_table_with_rls_but_no_policy(self, fresh_database):
        admin_execute(
            fresh_database,
            "CREATE TABLE notes (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id))",
            "ALTER TABLE notes ENABLE ROW LEVEL SECURITY",
            "ALTER TABLE notes FORCE ROW LEVEL SECURITY",
        )
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("policy_missing", "public.notes")]


class TestPolicyExpressions:
    def test_update_policy_without_with_check(self, fresh_database):
        admin_execute(fresh_database, "CREATE POLICY editable ON documents AS RESTRICTIVE FOR UPDATE USING (true)")
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [
            ("policy_with_check", "public.documents.editable"), ("policy_unexpected", "public.documents.editable")]

    def test_insert_policy_needs_no_using(self, fresh_database):
        # INSERT policies cannot have USING; only their WITH CHECK is required.
        admin_execute(fresh_database, "CREATE POLICY insertable ON documents AS RESTRICTIVE FOR INSERT WITH CHECK (true)")
        # Only the canonical-form check names it (it is not one of the expected policies).
        assert subjects(doctor(fresh_database), "policy_using") == []
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("policy_unexpected", "public.documents.insertable")]


class TestSinglePermissivePolicy:
    def test_second_permissive_policy_names_the_table(self, fresh_database):
        admin_execute(fresh_database, "CREATE POLICY everyone_reads ON documents AS PERMISSIVE FOR SELECT USING (true)")
        report = doctor(fresh_database)
        assert [(f.check, f.subject) for f in report.findings] == [
            ("permissive_policies", "public.documents"), ("policy_unexpected", "public.documents.everyone_reads")]
        assert "everyone_reads" in report.findings[0].message

    def test_further_restrictive_policy_must_be_an_expected_one(self, fresh_database):
        # Not a permissive_policies finding; but every policy must be in doctor's expected forms.
        admin_execute(fresh_database, "CREATE POLICY readable ON documents AS RESTRICTIVE FOR SELECT USING (true)")
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("policy_unexpected", "public.documents.readable")]


class TestRoleAttributes:
    def test_bypassrls_names_the_role(self, database):
        # The app role is shared by every database of the session: always put it back.
        try:
            superuser_execute(database.superuser_url, f"ALTER ROLE {database.app_role} BYPASSRLS")
            report = doctor(database)
        finally:
            superuser_execute(database.superuser_url, f"ALTER ROLE {database.app_role} NOBYPASSRLS")
        assert [(f.check, f.subject) for f in report.findings] == [("role_bypassrls", database.app_role)]
        assert doctor(database).ok

    def test_superuser_connection_is_refused(self, database):
        report = run_doctor(database.superuser_db_url)
        assert subjects(report, "role_superuser") == [make_url(database.superuser_url).username]


class TestRoleOwnership:
    def test_owned_table_names_the_table(self, fresh_database):
        superuser_execute(
            fresh_database.superuser_db_url,
            "CREATE TABLE public.app_owned (id int)",
            f"ALTER TABLE public.app_owned OWNER TO {fresh_database.app_role}",
        )
        report = doctor(fresh_database)
        assert subjects(report, "role_ownership") == ["public.app_owned"]
        # An owner holds every privilege, so TRUNCATE shows up too.
        assert subjects(report, "table_privileges") == ["public.app_owned"]

    def test_membership_in_the_owner_role(self, fresh_database):
        try:
            superuser_execute(fresh_database.superuser_url, f"GRANT {fresh_database.admin_role} TO {fresh_database.app_role}")
            report = doctor(fresh_database)
        finally:
            superuser_execute(fresh_database.superuser_url, f"REVOKE {fresh_database.admin_role} FROM {fresh_database.app_role}")
        # Also pg_database_owner, through the admin role owning the database (and so schema public).
        assert fresh_database.admin_role in subjects(report, "role_membership")


class TestTablePrivileges:
    def test_truncate_names_the_table(self, fresh_database):
        admin_execute(fresh_database, f"GRANT TRUNCATE ON documents TO {fresh_database.app_role}")
        report = doctor(fresh_database)
        assert [(f.check, f.subject) for f in report.findings] == [("table_privileges", "public.documents")]
        assert "TRUNCATE" in report.findings[0].message

    def test_column_references_names_the_table(self, fresh_database):
        admin_execute(fresh_database, f"GRANT REFERENCES (id) ON users TO {fresh_database.app_role}")
        report = doctor(fresh_database)
        assert [(f.check, f.subject) for f in report.findings] == [("table_privileges", "public.users")]
        assert "REFERENCES" in report.findings[0].message


class TestViewsUseSecurityInvoker:
    def test_view_without_security_invoker(self, fresh_database):
        admin_execute(fresh_database, "CREATE VIEW document_titles AS SELECT tenant_id, id, title FROM documents")
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("view_security_invoker", "public.document_titles")]

    def test_same_view_with_security_invoker_passes(self, fresh_database):
        admin_execute(
            fresh_database,
            "CREATE VIEW document_titles AS SELECT tenant_id, id, title FROM documents",
            "ALTER VIEW document_titles SET (security_invoker = true)",
        )
        assert doctor(fresh_database).ok

    def test_security_invoker_false_fails(self, fresh_database):
        admin_execute(fresh_database, "CREATE VIEW document_titles WITH (security_invoker = off) AS SELECT title FROM documents")
        assert subjects(doctor(fresh_database), "view_security_invoker") == ["public.document_titles"]

    @pytest.mark.parametrize(("value", "expected"), [("true", True), ("on", True), ("1", True), ("YES", True), ("t", True), ("false", False), ("off", False), ("0", False), ("", False)])
    def test_option_values(self, value, expected):
        assert is_true_option(value) is expected


class TestSecurityDefinerPinsSearchPath:
    def test_definer_without_search_path(self, fresh_database):
        admin_execute(fresh_database, "CREATE FUNCTION public.tenant_count(x int) RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'select 1::bigint'")
        # PUBLIC may execute it by default, and it is not on the callable list either.
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [
            ("definer_search_path", "public.tenant_count(x integer)"), ("unlisted_object", "public.tenant_count(x integer)")]

    def test_definer_with_search_path_passes(self, fresh_database):
        admin_execute(
            fresh_database,
            "CREATE FUNCTION public.tenant_count(x int) RETURNS bigint LANGUAGE sql SECURITY DEFINER "
            "SET search_path = pg_catalog AS 'select 1::bigint'",
            "REVOKE EXECUTE ON FUNCTION public.tenant_count(int) FROM PUBLIC",
        )
        assert doctor(fresh_database).ok


class TestKeysIncludeTenant:
    def test_unique_constraint_without_tenant_id(self, fresh_database):
        admin_execute(fresh_database, "ALTER TABLE documents ADD CONSTRAINT uq_documents_title UNIQUE (title)")
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("key_tenant_id", "public.documents.uq_documents_title")]

    def test_unique_index_with_tenant_id_only_included(self, fresh_database):
        # INCLUDE columns take no part in uniqueness: tenant_id must be a key column.
        admin_execute(fresh_database, "CREATE UNIQUE INDEX ux_documents_title ON documents (title) INCLUDE (tenant_id)")
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("key_tenant_id", "public.documents.ux_documents_title")]

    def test_foreign_key_without_tenant_id(self, fresh_database):
        admin_execute(
            fresh_database,
            "ALTER TABLE documents ADD COLUMN reviewer_tenant_id uuid, ADD COLUMN reviewer_id uuid",
            "ALTER TABLE documents ADD CONSTRAINT fk_documents_reviewer FOREIGN KEY (reviewer_tenant_id, reviewer_id) REFERENCES users (tenant_id, id)",
        )
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("key_tenant_id", "public.documents.fk_documents_reviewer")]

    def test_foreign_key_mapping_tenant_id_to_another_column(self, fresh_database):
        # Both sides list tenant_id, but tenant_id points at users.id: still cross-tenant.
        admin_execute(
            fresh_database,
            "ALTER TABLE documents ADD CONSTRAINT fk_documents_crossed FOREIGN KEY (tenant_id, author_id) REFERENCES users (id, tenant_id)",
        )
        assert [(f.check, f.subject) for f in doctor(fresh_database).findings] == [("key_tenant_id", "public.documents.fk_documents_crossed")]


class TestMigrationHead:
    def test_a_schema_behind_this_release_is_refused(self, database):
        report = run_doctor(database.app_url, revisions=(*release_revisions(), "9999"))
        assert [(f.check, f.subject) for f in report.findings] == [("migration_head", "alembic_version")]
        assert f"at {head_revision()}, not the migrations' head 9999; run palisade migrate" in report.findings[0].message

    def test_a_newer_release_with_expand_steps_only_is_run_on(self, fresh_database, tmp_path):
        """A host still on this release (or rolled back to it) after the next release migrated."""
        migrated = palisade(next_release(tmp_path), "migrate", env={
            "PALISADE_ADMIN_DATABASE_URL": fresh_database.admin_url, "PALISADE_DATABASE_URL": fresh_database.app_url})
        assert migrated.returncode == 0, migrated.stderr
        assert run_doctor(fresh_database.app_url, revisions=release_revisions()).ok

    def test_a_newer_release_with_a_contract_step_is_refused(self, fresh_database, tmp_path):
        migrated = palisade(next_release(tmp_path, needs_stop="drops a column this release reads"), "migrate", env={
            "PALISADE_ADMIN_DATABASE_URL": fresh_database.admin_url, "PALISADE_DATABASE_URL": fresh_database.app_url})
        assert migrated.returncode == 0, migrated.stderr
        report = run_doctor(fresh_database.app_url, revisions=release_revisions())
        assert [(f.check, f.subject) for f in report.findings] == [("migration_head", "alembic_version")]
        assert (f"The schema is at {PROBE_REVISION}, from a newer release than this one (head {head_revision()}), and a "
                f"migration that needs this release stopped ({PROBE_REVISION}) was applied") in report.findings[0].message

    def test_the_compatibility_record_is_for_the_schema_owner_to_write(self, database):
        engine = create_engine(database.app_url, poolclass=pool.NullPool)
        with engine.connect() as conn:
            assert conn.scalar(text("select compatible_since from schema_compatibility")) == "0011"
            with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
                conn.execute(text("update schema_compatibility set compatible_since = 'x'"))
        engine.dispose()
