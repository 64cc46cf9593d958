"""The boundary at the database: the app role under the migrations' policies, no app code involved."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from app.db.session import DbContext, apply_context, make_session_factory

TENANT_TABLES_SQL = """
select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind = 'r'
  and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
order by 1
"""


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
            apply_context(s, DbContext(tenant_id=ids["tenant"], workspace_id=ids[ws]))
            s.execute(text("insert into documents (tenant_id, id, workspace_id, title, body, author_id) values (:tenant, :doc, :ws, 'D', 'body', :user)"), {"tenant": ids["tenant"], "doc": ids[doc], "ws": ids[ws], "user": ids["user"]})
            apply_context(s, DbContext(tenant_id=ids["tenant"]))
        s.execute(text("insert into audit_events (tenant_id, id, category, action, outcome) values (:tenant, :id, 'test', 'seed', 'success')"), {"tenant": ids["tenant"], "id": uuid.uuid4()})
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
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"]))
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
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=a["ws1"]))
            with pytest.raises(ProgrammingError, match="row-level security"):
                s.execute(text("insert into documents (tenant_id, id, workspace_id, title, body) values (:t, :id, :w, 'x', 'y')"), {"t": a["tenant"], "id": uuid.uuid4(), "w": a["ws2"]})


class TestForeignKeysStayInTheTenant:
    def test_document_cannot_point_at_another_tenants_workspace(self, app_sessions, tenants):
        a, b = tenants
        with app_sessions() as s, s.begin():
            apply_context(s, DbContext(tenant_id=a["tenant"], workspace_id=b["ws1"]))
            with pytest.raises(IntegrityError, match="foreign key"):
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
