"""The boundary at the database: the app role under the migrations' policies, no app code involved."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from app.audit.service import ANONYMOUS, Category, RequestMeta, record
from app.db.session import DbContext, apply_context, make_session_factory
from tests.support.database import clone, superuser_execute

TENANT_TABLES_SQL = """
select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind = 'r'
  and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
order by 1
"""


@pytest.fixture(scope="module")
def database(migrated_template):
    """A database of this module's own: the rows written here (audit events outside any chain
    among them) must not reach the tests that read the whole shared database."""
    db = clone(migrated_template, "rls")
    yield db
    superuser_execute(db.superuser_url, f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")


@pytest.fixture(scope="module")
def app_sessions(database):
    engine = create_engine(database.app_url)
    yield make_session_factory(engine)
    engine.dispose()


def seed_tenant(factory) -> dict[str, uuid.UUID]:
    """One tenant with a user, two workspaces and a document in each, written as the app role."""
    ids = {k: uuid.uuid4() for k in ("tenant", "user", "ws1", "ws2", "doc1", "doc2")}
    with factory() as s, s.begin():
        apply_context(s, DbContext(tenant_id=ids["tenant"]))
        s.execute(text("insert into tenants (id, name, slug) values (:tenant, 'T', :slug)"), {**ids, "slug": f"t-{ids['tenant'].hex[:12]}"})
        s.execute(text("insert into users (tenant_id, id, issuer, subject) values (:tenant, :user, 'https://idp', :sub)"), {**ids, "sub": str(ids["user"])})
        s.execute(text("insert into tenant_memberships (tenant_id, user_id, role) values (:tenant, :user, 'member')"), ids)
        for ws, doc in (("ws1", "doc1"), ("ws2", "doc2")):
            s.execute(text("insert into workspaces (tenant_id, id, name, slug) values (:tenant, :ws, 'W', :slug)"), {"tenant": ids["tenant"], "ws": ids[ws], "slug": ws})
            s.execute(text("insert into workspace_memberships (tenant_id, workspace_id, user_id, role) values (:tenant, :ws, :user, 'owner')"), {"tenant": ids["tenant"], "ws": ids[ws], "user": ids["user"]})
            apply_context(s, DbContext(tenant_id=ids["tenant"], workspace_id=ids[ws], user_id=ids["user"]))
            s.execute(text("insert into documents (tenant_id, id, workspace_id, title, body, author_id) values (:tenant, :doc, :ws, 'D', 'body', :user)"), {"tenant": ids["tenant"], "doc": ids[doc], "ws": ids[ws], "user": ids["user"]})
            apply_context(s, DbContext(tenant_id=ids["tenant"]))
        # Through the appliance's own path: the app role may not INSERT into audit_events (issue 16).
        record(s, tenant_id=ids["tenant"], actor=ANONYMOUS, meta=RequestMeta(), category=Category.configuration_change, action="seed")
    return ids


@pytest.fixture(scope="module")
def tenants(app_sessions):
    return seed_tenant(app_sessions), seed_tenant(app_sessions)


class TestNoContextNoRows:
    def test_every_tenant_table_is_empty_without_a_tenant(self, app_sessions, tenants):
        with app_sessions() as s, s.begin():
            tables = s.execute(text(TENANT_TABLES_SQL)).scalars().all()
            assert {"users", "tenant_memberships", "workspaces", "workspace_memberships", "invitations", "documents", "audit_events"} <= set(tables)
            for table in [*tables, "tenants"]:
                assert s.execute(text(f"select count(*) from {table}")).scalar_one() == 0, table

    def test_context_does_not_outlive_its_transaction(self, app_sessions, tenants):
        a, _ = tenants
        with app_sessions() as s:
            with s.begin():
                apply_context(s, DbContext(tenant_id=a["tenant"]))
                assert s.execute(text("select count(*) from workspaces")).scalar_one() == 2
            with s.begin():  # same pooled connection, next transaction
                assert s.execute(text("select count(*) from workspaces")).scalar_one() == 0


class TestTenantSeesOnlyItself:
    def test_rows_of_the_set_tenant_only(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            assert set(s.execute(text("select id from workspaces")).scalars()) == {a["ws1"], a["ws2"]}
            assert s.execute(text("select id from tenants")).scalars().all() == [a["tenant"]]
            assert s.execute(text("select count(*) from users where id = :id"), {"id": b["user"]}).scalar_one() == 0

    def test_documents_also_need_the_workspace(self, app_sessions, tenants):
        a, _ = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            assert s.execute(text("select count(*) from documents")).scalar_one() == 0
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"], user_id=a["user"]))
            assert s.execute(text("select id from documents")).scalars().all() == [a["doc1"]]


class TestWithCheck:
    def test_insert_carrying_another_tenants_id_is_rejected(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("insert into workspaces (tenant_id, id, name, slug) values (:t, :id, 'x', 'x')"), {"t": b["tenant"], "id": uuid.uuid4()})

    def test_update_moving_a_row_to_another_tenant_is_rejected(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("update workspaces set tenant_id = :b where id = :id"), {"b": b["tenant"], "id": a["ws1"]})

    def test_update_of_another_tenants_row_touches_nothing(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            assert s.execute(text("update workspaces set name = 'pwned' where id = :id"), {"id": b["ws1"]}).rowcount == 0
            assert s.execute(text("delete from documents where id = :id"), {"id": b["doc1"]}).rowcount == 0

    def test_document_written_into_an_unselected_workspace_is_rejected(self, app_sessions, tenants):
        a, _ = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"], user_id=a["user"]))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("insert into documents (tenant_id, id, workspace_id, title, body) values (:t, :id, :w, 'x', 'y')"), {"t": a["tenant"], "id": uuid.uuid4(), "w": a["ws2"]})


class TestForeignKeysStayInTheTenant:
    def test_document_cannot_point_at_another_tenants_workspace(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=b["ws1"], user_id=a["user"]))
            with pytest.raises((IntegrityError, ProgrammingError), match="foreign key|row-level security"):
                s.execute(text("insert into documents (tenant_id, id, workspace_id, title, body) values (:t, :id, :w, 'x', 'y')"), {"t": a["tenant"], "id": uuid.uuid4(), "w": b["ws1"]})

    def test_membership_cannot_name_another_tenants_user(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            with pytest.raises(IntegrityError, match="foreign key"):
                s.execute(text("insert into workspace_memberships (tenant_id, workspace_id, user_id, role) values (:t, :w, :u, 'viewer')"), {"t": a["tenant"], "w": a["ws1"], "u": b["user"]})


class TestAppRoleLimits:
    @pytest.mark.parametrize("statement", [
        "truncate documents",
        "update audit_events set outcome = 'failure'",
        "delete from audit_events",
        "alter table documents no force row level security",
        "set row_security = off; select 1",
    ])
    def test_refused(self, app_sessions, tenants, statement):
        a, _ = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"]))
            if statement.startswith("set row_security"):
                # row_security=off does not switch RLS off for a NOBYPASSRLS role: it raises instead.
                s.execute(text("set local row_security = off"))
                with pytest.raises(DBAPIError, match="row-level security"):
                    s.execute(text("select count(*) from documents"))
                return
            with pytest.raises(ProgrammingError, match="permission denied|must be owner"):
                s.execute(text(statement))


WORKSPACE_TABLES_SQL = """
select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind = 'r'
  and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'workspace_id' and not a.attisdropped)
  and has_table_privilege(:role, c.oid, 'SELECT')
order by 1
"""
# Tenant-level tables a context naming a non-member may still read, and why: the membership check
# reads them (a policy on them reading themselves would recurse), or they hold no tenant content.
MEMBERSHIP_ROOTS = {
    "tenant_memberships": "what every membership check reads",
    "vendor_access_grants": "what every vendor check reads",
    "audit_chain_heads": "one hash and a counter per tenant",
}
# Workspace-keyed tables that are tenant-level (their workspace_id names, it does not own).
TENANT_LEVEL_WITH_WORKSPACE = {"workspace_memberships", "invitations", "audit_events", "vendor_access_grants"}


def add_outsider(factory, ids: dict[str, uuid.UUID]) -> uuid.UUID:
    """A user of the same tenant who is a member of no workspace."""
    outsider = uuid.uuid4()
    with factory() as s, s.begin():
        apply_context(s, DbContext(tenant_id=ids["tenant"]))
        s.execute(text("insert into users (tenant_id, id, issuer, subject) values (:t, :u, 'https://idp', :sub)"),
                  {"t": ids["tenant"], "u": outsider, "sub": str(outsider)})
        s.execute(text("insert into tenant_memberships (tenant_id, user_id, role) values (:t, :u, 'member')"),
                  {"t": ids["tenant"], "u": outsider})
    return outsider


class TestMembershipIsEnforcedByTheDatabase:
    """Application code that sets a wrong context (right tenant and workspace, wrong user) reads nothing."""

    def test_every_workspace_owned_table_is_covered(self, app_sessions, database):
        with app_sessions() as s, s.begin():
            tables = set(s.execute(text(WORKSPACE_TABLES_SQL), {"role": database.app_role}).scalars())
        owned = tables - TENANT_LEVEL_WITH_WORKSPACE
        # A new workspace-keyed table lands in one of the two sets, or this fails and says which.
        assert owned == {"documents", "uploaded_files", "provider_credentials"}, owned

    @pytest.mark.parametrize("table", ["documents", "uploaded_files", "provider_credentials"])
    def test_non_member_sees_no_row_and_cannot_insert(self, app_sessions, tenants, table):
        a, _ = tenants
        outsider = add_outsider(app_sessions, a)
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"], user_id=a["user"]))
            member_sees = s.execute(text(f"select count(*) from {table}")).scalar_one()
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"], user_id=outsider))
            assert s.execute(text(f"select count(*) from {table}")).scalar_one() == 0
            if s.execute(text("select has_table_privilege(current_user, :t, 'UPDATE')"), {"t": table}).scalar_one():
                assert s.execute(text(f"update {table} set tenant_id = tenant_id")).rowcount == 0
            assert s.execute(text(f"delete from {table}")).rowcount == 0
            s.execute(text("savepoint probe"))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text(f"insert into {table} (tenant_id, workspace_id) values (:t, :w)"), {"t": a["tenant"], "w": a["ws1"]})
            s.execute(text("rollback to savepoint probe"))
            # No user at all is no better.
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"]))
            assert s.execute(text(f"select count(*) from {table}")).scalar_one() == 0
        if table == "documents":
            assert member_sees == 1  # the check above is not empty by accident

    def test_removed_member_loses_access_at_the_next_statement(self, app_sessions, tenants):
        a, _ = tenants
        outsider = add_outsider(app_sessions, a)
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"], user_id=a["user"]))
            s.execute(text("insert into workspace_memberships (tenant_id, workspace_id, user_id, role) values (:t, :w, :u, 'viewer')"),
                      {"t": a["tenant"], "w": a["ws1"], "u": outsider})
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"], user_id=outsider))
            assert s.execute(text("select id from documents")).scalars().all() == [a["doc1"]]
            # Removed in another transaction, committed: this one's next statement sees nothing.
            with app_sessions() as other, other.begin():
                apply_context(other, DbContext(tenant_id=a["tenant"], user_id=a["user"]))
                other.execute(text("delete from workspace_memberships where user_id = :u"), {"u": outsider})
            assert s.execute(text("select count(*) from documents")).scalar_one() == 0

    def test_a_user_of_another_tenant_sees_no_tenant_level_row(self, app_sessions, tenants, database):
        a, b = tenants
        with app_sessions() as s, s.begin():
            tables = s.execute(text(TENANT_TABLES_SQL)).scalars().all()
            apply_context(s, DbContext(tenant_id=a["tenant"], user_id=a["user"]))
            seen_by_member = {t: s.execute(text(f"select count(*) from {t}")).scalar_one() for t in tables}
            # A's tenant, B's user: no member of A.
            apply_context(s, DbContext(tenant_id=a["tenant"], user_id=b["user"]))
            leaked = {t: n for t in tables if t not in MEMBERSHIP_ROOTS
                      and (n := s.execute(text(f"select count(*) from {t}")).scalar_one())}
        assert leaked == {}
        assert seen_by_member["users"] >= 1 and seen_by_member["workspaces"] == 2


VENDOR = {"platform_role": "internal_admin", "vendor_issuer": "https://vendor.example", "vendor_subject": "alice"}


def add_grant(factory, ids: dict[str, uuid.UUID], scope: str, *, subject: str = "alice", workspace: str | None = None,
              approved: bool = True, expires: str = "now() + interval '1 hour'") -> uuid.UUID:
    """A grant row as the API leaves it after a request and a customer_admin's decision."""
    grant = uuid.uuid4()
    with factory() as s, s.begin():
        apply_context(s, DbContext(tenant_id=ids["tenant"], user_id=ids["user"]))
        s.execute(text(
            "insert into vendor_access_grants (tenant_id, id, requester_issuer, requester_subject, scope, workspace_id, hours,"
            " reason, decision, decided_by, decided_at, expires_at) values (:t, :g, 'https://vendor.example', :sub, :scope,"
            f" :ws, 1, 'ticket', :decision, :u, :at, {expires if approved else 'null'})"),
            {"t": ids["tenant"], "g": grant, "sub": subject, "scope": scope, "ws": ids[workspace] if workspace else None,
             "decision": "approved" if approved else None, "u": ids["user"] if approved else None,
             "at": datetime.now(UTC) if approved else None})
    return grant


def vendor_sees(factory, ids: dict[str, uuid.UUID], workspace: str | None = None, **who: str) -> dict[str, int]:
    tables = ("users", "tenant_memberships", "workspaces", "workspace_memberships", "invitations", "audit_events",
              "tenant_data_keys", "documents", "uploaded_files", "provider_credentials")
    with factory() as s, s.begin():
        apply_context(s, DbContext(tenant_id=ids["tenant"], workspace_id=ids[workspace] if workspace else None, **{**VENDOR, **who}))
        return {t: n for t in tables if (n := s.execute(text(f"select count(*) from {t}")).scalar_one())}


class TestVendorGrantsAreCheckedByTheDatabase:
    def test_without_a_grant_vendor_staff_see_nothing_of_the_tenant(self, app_sessions, tenants):
        a, _ = tenants
        assert vendor_sees(app_sessions, a, "ws1") == {}
        add_grant(app_sessions, a, "audit", approved=False)  # requested, not decided
        assert vendor_sees(app_sessions, a, "ws1") == {}

    def test_each_scope_admits_its_tables_for_the_named_person_only(self, app_sessions):
        ids = seed_tenant(app_sessions)
        add_grant(app_sessions, ids, "metadata")
        assert set(vendor_sees(app_sessions, ids)) == {"users", "tenant_memberships", "workspaces", "workspace_memberships"}
        assert vendor_sees(app_sessions, ids, vendor_subject="bob") == {}
        ids = seed_tenant(app_sessions)
        add_grant(app_sessions, ids, "audit")
        assert set(vendor_sees(app_sessions, ids)) == {"audit_events"}
        ids = seed_tenant(app_sessions)
        add_grant(app_sessions, ids, "content", workspace="ws1")
        assert vendor_sees(app_sessions, ids, "ws1") == {"documents": 1}
        assert vendor_sees(app_sessions, ids, "ws2") == {}

    def test_expired_or_revoked_grants_admit_nothing(self, app_sessions):
        ids = seed_tenant(app_sessions)
        add_grant(app_sessions, ids, "audit", expires="now() - interval '1 second'")
        assert vendor_sees(app_sessions, ids) == {}
        grant = add_grant(app_sessions, ids, "audit")
        assert vendor_sees(app_sessions, ids) == {"audit_events": 1}
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=ids["tenant"], user_id=ids["user"]))
            s.execute(text("update vendor_access_grants set revoked_at = now() where id = :g"), {"g": grant})
        assert vendor_sees(app_sessions, ids) == {}

    def test_vendor_staff_cannot_approve_their_own_request(self, app_sessions):
        ids = seed_tenant(app_sessions)
        grant = add_grant(app_sessions, ids, "audit", approved=False)
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=ids["tenant"], **VENDOR))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("update vendor_access_grants set decision = 'approved', decided_at = now(),"
                               " expires_at = now() + interval '1 hour' where id = :g"), {"g": grant})
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=ids["tenant"], **VENDOR))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("insert into vendor_access_grants (tenant_id, id, requester_issuer, requester_subject, scope,"
                               " hours, reason, decision, decided_at, expires_at) values (:t, :g, 'https://vendor.example',"
                               " 'alice', 'audit', 1, 'x', 'approved', now(), now() + interval '1 hour')"),
                          {"t": ids["tenant"], "g": uuid.uuid4()})

    def test_a_content_grant_is_read_only(self, app_sessions):
        ids = seed_tenant(app_sessions)
        add_grant(app_sessions, ids, "content", workspace="ws1")
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=ids["tenant"], workspace_id=ids["ws1"], **VENDOR))
            assert s.execute(text("select id from documents")).scalars().all() == [ids["doc1"]]
            assert s.execute(text("delete from documents")).rowcount == 0
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("update documents set title = 'changed'"))
