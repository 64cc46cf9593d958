"""Doctor proves behaviour, not shape: each weakening, alone on a fresh migrated clone, fails it.

Every mutant is applied as the schema owner (or the superuser where the owner cannot), then doctor
runs as the app role and must name the object. The first four are the ones issue 14 found passing
the catalog-only doctor; the rest cover the other rules a weakening could slip through.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, pool, text

from app.db.doctor import AUDIT_APPEND, TENANT_TABLES, Report, canonical, run_doctor
from app.db.migrate import release_revisions
from tests.support.database import superuser_execute

if TYPE_CHECKING:
    from tests.support.database import TestDatabase

_TENANT = "(select nullif(current_setting('app.tenant_id', true), '')::uuid)"
_WORKSPACE = "(select nullif(current_setting('app.workspace_id', true), '')::uuid)"
_APPEND = AUDIT_APPEND
_APPEND_TYPES = (
    "private.audit_append(uuid, uuid, timestamptz, text, text, text, bytea, bytea, uuid, text, uuid, text, text, text, text, text,"
    " inet, text, text, text, jsonb)"
)


def doctor(db: TestDatabase) -> Report:
    return run_doctor(db.app_url, revisions=release_revisions())


def named(report: Report) -> set[tuple[str, str]]:
    return {(f.check, f.subject) for f in report.findings}


# (id, statements as the schema owner ({app} is the app role), findings that must be among doctor's)
MUTANTS = [
    (
        "documents_tenant_policy_true",
        ["DROP POLICY tenant_isolation ON documents",
         "CREATE POLICY tenant_isolation ON documents AS PERMISSIVE FOR ALL USING (true) WITH CHECK (true)"],
        {("policy_canonical", "public.documents.tenant_isolation")},
    ),
    (
        "documents_workspace_policy_dropped",
        ["DROP POLICY workspace_isolation ON documents"],
        {("policy_expected", "public.documents.workspace_isolation")},
    ),
    (
        "documents_internal_admin_disjunct",
        ["DROP POLICY tenant_isolation ON documents",
         f"CREATE POLICY tenant_isolation ON documents AS PERMISSIVE FOR ALL USING (tenant_id = {_TENANT} "
         "OR current_setting('app.platform_role', true) = 'internal_admin') WITH CHECK (true)"],
        {("policy_canonical", "public.documents.tenant_isolation")},
    ),
    (
        # Both layers down: the probe's INSERT into another tenant gets through.
        "documents_tenant_policy_true_and_membership_dropped",
        ["DROP POLICY tenant_isolation ON documents", "DROP POLICY workspace_access ON documents",
         "CREATE POLICY tenant_isolation ON documents AS PERMISSIVE FOR ALL USING (true) WITH CHECK (true)"],
        {("policy_canonical", "public.documents.tenant_isolation"), ("policy_expected", "public.documents.workspace_access"),
         ("probe_with_check", "public.documents")},
    ),
    (
        "membership_policy_dropped",
        ["DROP POLICY workspace_access ON uploaded_files"],
        {("policy_expected", "public.uploaded_files.workspace_access")},
    ),
    (
        "membership_policy_made_true",
        ["DROP POLICY workspace_access ON documents",
         "CREATE POLICY workspace_access ON documents AS RESTRICTIVE FOR ALL USING (true) WITH CHECK (true)"],
        {("policy_canonical", "public.documents.workspace_access")},
    ),
    (
        "tenant_membership_check_without_user_check",
        ["DROP POLICY tenant_access ON users",
         "CREATE POLICY tenant_access ON users AS RESTRICTIVE FOR ALL USING (true) WITH CHECK (true)"],
        {("policy_canonical", "public.users.tenant_access")},
    ),
    (
        "vendor_reads_memberships_without_a_grant",
        ["DROP POLICY vendor_access ON tenant_memberships"],
        {("policy_expected", "public.tenant_memberships.vendor_access")},
    ),
    (
        "vendor_may_approve_own_request",
        ["DROP POLICY vendor_access ON vendor_access_grants",
         "CREATE POLICY vendor_access ON vendor_access_grants AS RESTRICTIVE FOR ALL USING (true) WITH CHECK (true)"],
        {("policy_canonical", "public.vendor_access_grants.vendor_access")},
    ),
    (
        "membership_function_answers_true",
        ["CREATE OR REPLACE FUNCTION public.rls_workspace_member() RETURNS boolean LANGUAGE plpgsql STABLE"
         " SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN true; END $$"],
        {("function_canonical", "public.rls_workspace_member()")},
    ),
    (
        "membership_function_made_security_definer",
        ["ALTER FUNCTION public.rls_tenant_member() SECURITY DEFINER"],
        {("function_canonical", "public.rls_tenant_member()")},
    ),
    (
        "grant_function_search_path_unpinned",
        ["ALTER FUNCTION public.rls_vendor_grant(text, boolean) RESET search_path"],
        {("function_canonical", "public.rls_vendor_grant(grant_scope text, in_workspace boolean)")},
    ),
    (
        "vendor_may_delete_content",
        ["DROP POLICY vendor_read_only ON documents"],
        {("policy_expected", "public.documents.vendor_read_only")},
    ),
    (
        "workspace_content_without_tenant_id",
        ["CREATE TABLE workspace_notes (workspace_id uuid NOT NULL, id uuid PRIMARY KEY, body text NOT NULL)",
         "GRANT SELECT, INSERT ON workspace_notes TO {app}"],
        {("unlisted_object", "public.workspace_notes")},
    ),
    (
        "second_permissive_policy",
        ["CREATE POLICY shared ON documents AS PERMISSIVE FOR SELECT USING (true)"],
        {("policy_unexpected", "public.documents.shared"), ("permissive_policies", "public.documents")},
    ),
    (
        "no_force_rls",
        ["ALTER TABLE documents NO FORCE ROW LEVEL SECURITY"],
        {("force_rls", "public.documents")},
    ),
    (
        "truncate_granted",
        ["GRANT TRUNCATE ON documents TO {app}"],
        {("table_privileges", "public.documents")},
    ),
    (
        "definer_function_without_search_path",
        ["CREATE FUNCTION public.count_documents() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
         "AS 'select count(*) from documents'",
         "GRANT EXECUTE ON FUNCTION public.count_documents() TO {app}"],
        {("definer_search_path", "public.count_documents()"), ("unlisted_object", "public.count_documents()")},
    ),
    (
        "view_without_security_invoker",
        ["CREATE VIEW document_titles AS SELECT tenant_id, id, title FROM documents",
         "GRANT SELECT ON document_titles TO {app}"],
        {("view_security_invoker", "public.document_titles"), ("unlisted_object", "public.document_titles")},
    ),
    (
        "policy_reads_unset_setting",
        ["DROP POLICY tenant_isolation ON users",
         "CREATE POLICY tenant_isolation ON users AS PERMISSIVE FOR ALL "
         "USING (tenant_id = nullif(current_setting('app.current_tenant', true), '')::uuid) "
         "WITH CHECK (tenant_id = nullif(current_setting('app.current_tenant', true), '')::uuid)"],
        {("policy_setting", "public.users.tenant_isolation"), ("policy_canonical", "public.users.tenant_isolation")},
    ),
    (
        "workspace_policy_made_permissive",
        ["DROP POLICY workspace_isolation ON uploaded_files",
         f"CREATE POLICY workspace_isolation ON uploaded_files AS PERMISSIVE FOR ALL "
         f"USING (workspace_id = {_WORKSPACE}) WITH CHECK (workspace_id = {_WORKSPACE})"],
        {("policy_canonical", "public.uploaded_files.workspace_isolation"), ("permissive_policies", "public.uploaded_files")},
    ),
    (
        "tenants_with_check_true",
        ["DROP POLICY tenant_isolation ON tenants",
         f"CREATE POLICY tenant_isolation ON tenants AS PERMISSIVE FOR ALL USING (id = {_TENANT}) WITH CHECK (true)"],
        {("policy_canonical", "public.tenants.tenant_isolation"), ("probe_with_check", "public.tenants")},
    ),
    (
        "tenants_rls_disabled",
        ["ALTER TABLE tenants DISABLE ROW LEVEL SECURITY"],
        {("rls_enabled", "public.tenants"), ("probe_with_check", "public.tenants")},
    ),
    (
        "tenant_policy_select_only",
        ["DROP POLICY tenant_isolation ON workspaces",
         f"CREATE POLICY tenant_isolation ON workspaces AS PERMISSIVE FOR SELECT USING (tenant_id = {_TENANT})"],
        {("policy_canonical", "public.workspaces.tenant_isolation")},
    ),
    (
        "tenant_policy_widened_to_another_tenant",
        ["DROP POLICY tenant_isolation ON audit_events",
         f"CREATE POLICY tenant_isolation ON audit_events AS PERMISSIVE FOR ALL "
         f"USING (tenant_id = {_TENANT} OR tenant_id = '00000000-0000-0000-0000-000000000001') "
         f"WITH CHECK (tenant_id = {_TENANT})"],
        {("policy_canonical", "public.audit_events.tenant_isolation")},
    ),
    (
        "extra_restrictive_policy",
        ["CREATE POLICY maybe ON documents AS RESTRICTIVE FOR SELECT USING (true)"],
        {("policy_unexpected", "public.documents.maybe")},
    ),
    (
        "materialized_view_readable",
        ["CREATE MATERIALIZED VIEW document_counts AS SELECT tenant_id, count(*) FROM documents GROUP BY tenant_id",
         "GRANT SELECT ON document_counts TO {app}"],
        {("unlisted_object", "public.document_counts")},
    ),
    (
        "tenant_table_dropped_policy_missing",
        ["DROP POLICY tenant_isolation ON audit_chain_heads"],
        {("policy_missing", "public.audit_chain_heads"), ("policy_expected", "public.audit_chain_heads.tenant_isolation")},
    ),
    (
        "tenant_policy_dropped_leaving_only_restrictive",
        ["DROP POLICY tenant_isolation ON tenant_data_keys"],
        {("permissive_policies", "public.tenant_data_keys"), ("policy_expected", "public.tenant_data_keys.tenant_isolation")},
    ),
    # Issue 16: the audit trail is append-only for the app role (appends go through private.audit_append).
    (
        "app_role_may_rewrite_audit_events",
        ["GRANT UPDATE (action) ON audit_events TO {app}"],
        {("audit_append_only", "public.audit_events")},
    ),
    (
        "app_role_may_remove_audit_events",
        ["GRANT DELETE ON audit_events TO {app}"],
        {("audit_append_only", "public.audit_events")},
    ),
    (
        "app_role_may_remove_chain_heads",
        ["GRANT TRUNCATE ON audit_chain_heads TO {app}"],
        {("audit_append_only", "public.audit_chain_heads")},
    ),
    (
        # The one weakening an insider would make: the function appends to whichever tenant it is given.
        "append_function_skips_the_tenant_check",
        [f"DO $do$ BEGIN EXECUTE replace(pg_get_functiondef('{_APPEND_TYPES}'::regprocedure),"
         " 'OR p_tenant_id <> context_tenant', ''); END $do$"],
        {("function_canonical", _APPEND)},
    ),
    (
        "append_function_made_security_invoker",
        [f"ALTER FUNCTION {_APPEND_TYPES} SECURITY INVOKER"],
        {("function_canonical", _APPEND)},
    ),
    (
        "append_function_search_path_unpinned",
        [f"ALTER FUNCTION {_APPEND_TYPES} RESET search_path"],
        {("function_canonical", _APPEND), ("definer_search_path", _APPEND)},
    ),
]


@pytest.mark.parametrize(("statements", "expected"), [pytest.param(s, e, id=i) for i, s, e in MUTANTS])
def test_each_weakening_fails_doctor_naming_the_object(fresh_database, statements, expected):
    superuser_execute(fresh_database.admin_url, *(s.format(app=fresh_database.app_role) for s in statements))
    report = doctor(fresh_database)
    assert not report.ok
    assert expected <= named(report), report.findings


def test_the_unmodified_database_passes(fresh_database):
    report = doctor(fresh_database)
    assert report.findings == []
    assert {"policy_canonical", "unlisted_object", "probe_visibility", "probe_with_check"} <= set(report.checks_run)


def test_expected_forms_match_a_freshly_migrated_database(fresh_database):
    """The stored canonical forms are what the migrations create, policy for policy."""
    engine = create_engine(fresh_database.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text("select 'public.' || tablename, policyname, qual, with_check from pg_policies")).all()
    engine.dispose()
    actual = {(t, p): (canonical(q), canonical(w)) for t, p, q, w in rows}
    expected = {(t, p.name): (canonical(p.using), canonical(p.with_check)) for t, spec in TENANT_TABLES.items() for p in spec.policies}
    assert actual == expected


def _seed_two_tenants(db: TestDatabase) -> None:
    """A victim tenant with two workspaces and a document in one, written as the superuser (no RLS)."""
    victim, ws_a, ws_b = (str(uuid.uuid4()) for _ in range(3))
    superuser_execute(
        db.superuser_db_url,
        f"INSERT INTO tenants (id, name, slug) VALUES ('{victim}', 'Victim', 'victim-{victim[:8]}')",
        *(f"INSERT INTO workspaces (tenant_id, id, name, slug) VALUES ('{victim}', '{ws}', 'W', 'w-{ws[:8]}')" for ws in (ws_a, ws_b)),
        f"INSERT INTO documents (tenant_id, id, workspace_id, title, body) VALUES ('{victim}', '{uuid.uuid4()}', '{ws_a}', 'secret', 'secret')",
    )


class TestTheProbeSeesLeaks:
    def test_with_data_the_unmodified_database_passes(self, fresh_database):
        _seed_two_tenants(fresh_database)
        assert doctor(fresh_database).findings == []

    # With the membership policy in place the tenant and workspace weakenings leak nothing (the
    # catalog checks name them); with it gone too, the probe sees the leak itself.
    def test_another_tenant_reads_the_victims_document(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(fresh_database.admin_url, "DROP POLICY workspace_access ON documents", *MUTANTS[0][1])
        report = doctor(fresh_database)
        assert {("probe_visibility", "public.documents"), ("policy_canonical", "public.documents.tenant_isolation")} <= named(report)

    def test_another_workspace_reads_the_document(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(fresh_database.admin_url, "DROP POLICY workspace_access ON documents",
                          "DROP POLICY workspace_isolation ON documents")
        msgs = [f.message for f in doctor(fresh_database).findings if (f.check, f.subject) == ("probe_visibility", "public.documents")]
        assert msgs and "another workspace" in msgs[0]

    def test_a_non_member_reads_the_document(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(fresh_database.admin_url, "DROP POLICY workspace_access ON documents")
        msgs = [f.message for f in doctor(fresh_database).findings if (f.check, f.subject) == ("probe_visibility", "public.documents")]
        assert msgs and "no member" in msgs[0]

    def test_a_membership_function_that_answers_true_lets_a_non_member_read(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(fresh_database.admin_url, *next(m for m in MUTANTS if m[0] == "membership_function_answers_true")[1])
        msgs = [f.message for f in doctor(fresh_database).findings if (f.check, f.subject) == ("probe_visibility", "public.documents")]
        assert msgs and "no member" in msgs[0]

    def test_vendor_staff_read_members_without_a_grant(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(
            fresh_database.superuser_db_url,
            "INSERT INTO users (tenant_id, id, issuer, subject) SELECT id, gen_random_uuid(), 'i', 's' FROM tenants",
            "INSERT INTO tenant_memberships (tenant_id, user_id, role) SELECT tenant_id, id, 'member' FROM users",
        )
        superuser_execute(fresh_database.admin_url, "DROP POLICY vendor_access ON tenant_memberships")
        msgs = [f.message for f in doctor(fresh_database).findings
                if (f.check, f.subject) == ("probe_visibility", "public.tenant_memberships")]
        assert msgs and "without a grant" in " ".join(msgs)

    def test_internal_admin_reads_tenant_content(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(fresh_database.admin_url, "DROP POLICY workspace_access ON documents", *MUTANTS[2][1])
        assert ("probe_visibility", "public.documents") in named(doctor(fresh_database))

    def test_the_probe_leaves_nothing_behind(self, fresh_database):
        _seed_two_tenants(fresh_database)
        superuser_execute(fresh_database.admin_url, *MUTANTS[0][1])  # WITH CHECK (true): the probe's INSERTs get through RLS
        before = _counts(fresh_database)
        doctor(fresh_database)
        assert _counts(fresh_database) == before


def _counts(db: TestDatabase) -> dict[str, int]:
    engine = create_engine(db.superuser_db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"select count(*) from {t}")).scalar() for t in TENANT_TABLES}
    engine.dispose()
    return counts
