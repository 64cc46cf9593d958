"""RLS cost: the project's read path under its policies vs an explicit WHERE that bypasses them.

Measured side: the app role (NOBYPASSRLS) through the project's own session machinery
(`make_engine`, `apply_context`) and repository (`app.knowledge.repository`): PostgreSQL's policies
supply the tenant and workspace. Baseline: the admin role (BYPASSRLS, what an application that
filters in its own code would run as) with the same statements plus an explicit
`WHERE tenant_id = … AND workspace_id = …`, through the same engine setup and the same
transaction shape (BEGIN and the context settings ride with the first statement, then COMMIT):
the only difference left is who filters. Each call picks a random workspace of the data set (the
same sequence on both sides). EXPLAIN (ANALYZE) of every query is saved with the results.

Reads:
- latest 50 documents of a workspace (the documents list route);
- count a workspace's documents;
- count a tenant's documents. Documents are workspace-isolated (a RESTRICTIVE policy), so the app
  role counts a tenant one workspace at a time, each under its own context, in one transaction;
  the baseline counts the tenant in one statement. That difference is the design's, and this row
  shows what it costs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import DbContext, apply_context, make_engine, make_session_factory
from app.knowledge import repository as repo
from app.knowledge.models import Document
from bench.dataset import Dataset, TenantData
from bench.kit import Context, Row, Section, side_by_side

NAME = "rls"
TITLE = "RLS cost"
TARGET = 1.05


def _explain(session: Session, statement: Select[Any]) -> str:
    compiled = statement.compile(dialect=session.get_bind().dialect)
    rows = session.connection().exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), compiled.params).all()
    return "\n".join(r[0] for r in rows)


def _tenant_in_index_cond(plan: str) -> bool:
    """The tenant condition is applied inside an index scan's condition, not as a filter after it."""
    return any("tenant_id =" in line for line in re.findall(r"Index Cond: (.*)", plan))


class _Reads:
    """The three reads, as the app runs them (`rls=True`) or as a WHERE-filtering app would."""

    def __init__(self, sessions: sessionmaker[Session], dataset: Dataset, *, rls: bool, seed: int) -> None:
        self.sessions = sessions
        self.tenants = dataset.tenants
        self.rls = rls
        self.rng = random.Random(seed)

    def _pick(self) -> tuple[TenantData, Any]:
        tenant = self.tenants[self.rng.randrange(len(self.tenants))]
        return tenant, tenant.workspaces[self.rng.randrange(len(tenant.workspaces))]

    def _scoped(self, statement: Select[Any], tenant: TenantData, workspace: Any | None) -> Select[Any]:
        if self.rls:
            return statement
        statement = statement.where(Document.tenant_id == tenant.tenant_id)
        return statement if workspace is None else statement.where(Document.workspace_id == workspace)

    def _context(self, tenant: TenantData, workspace: Any) -> DbContext:
        return DbContext(tenant_id=tenant.tenant_id, workspace_id=workspace, user_id=tenant.user_id)

    def latest(self, explain: bool = False) -> Any:
        tenant, workspace = self._pick()
        with self.sessions() as session, session.begin():
            apply_context(session, self._context(tenant, workspace))
            # latest_query already names the workspace; the baseline adds the tenant.
            statement = self._scoped(repo.latest_query(workspace_id=workspace, limit=50), tenant, None)
            if explain:
                return _explain(session, statement)
            return [d.id for d in session.scalars(statement)]

    def count_workspace(self, explain: bool = False) -> Any:
        tenant, workspace = self._pick()
        with self.sessions() as session, session.begin():
            apply_context(session, self._context(tenant, workspace))
            statement = self._scoped(repo.count_query(), tenant, workspace)
            return _explain(session, statement) if explain else session.scalar(statement)

    def count_tenant(self, explain: bool = False) -> Any:
        tenant, _ = self._pick()
        with self.sessions() as session, session.begin():
            if not self.rls:
                apply_context(session, self._context(tenant, None))
                statement = self._scoped(repo.count_query(), tenant, None)
                return _explain(session, statement) if explain else session.scalar(statement)
            total, plans = 0, []
            for workspace in tenant.workspaces:
                apply_context(session, self._context(tenant, workspace))
                if explain:
                    plans.append(_explain(session, repo.count_query()))
                else:
                    total += repo.count(session)
            return "\n\n".join(plans) if explain else total


def run(ctx: Context) -> Section:
    dataset: Dataset = ctx.dataset
    section = Section(NAME, TITLE)
    engines = [make_engine(dataset.db.app_url, pool_size=1), make_engine(dataset.db.admin_url, pool_size=1)]
    try:
        app = _Reads(make_session_factory(engines[0]), dataset, rls=True, seed=1)
        admin = _Reads(make_session_factory(engines[1]), dataset, rls=False, seed=1)
        checks: list[tuple[str, str, Callable[[_Reads], Callable[..., Any]]]] = [
            ("latest", "latest 50 documents of a workspace", lambda r: r.latest),
            ("count_workspace", "count a workspace's documents", lambda r: r.count_workspace),
            ("count_tenant", "count a tenant's documents", lambda r: r.count_tenant),
        ]
        # Same answers first: the comparison is between two ways of reading the same rows.
        probe_app, probe_admin = _Reads(app.sessions, dataset, rls=True, seed=9), _Reads(admin.sessions, dataset, rls=False, seed=9)
        for _, _, pick in checks:
            assert pick(probe_app)() == pick(probe_admin)(), "RLS and the explicit WHERE disagree"
        plans: dict[str, Any] = {}
        for key, label, pick in checks:
            comparison = side_by_side(pick(app), pick(admin), scale=ctx.scale)
            measured = 1000 / comparison.rate(comparison.measured)
            baseline = 1000 / comparison.rate(comparison.baseline)
            ratio = measured / baseline
            app_plan = pick(_Reads(app.sessions, dataset, rls=True, seed=3))(explain=True)
            admin_plan = pick(_Reads(admin.sessions, dataset, rls=False, seed=3))(explain=True)
            in_index = _tenant_in_index_cond(app_plan)
            plans[key] = {"app_role_rls": app_plan, "admin_explicit_where": admin_plan, "tenant_in_index_cond": in_index}
            note = "" if in_index else "the tenant condition is NOT inside the index condition (see EXPLAIN)"
            if key == "count_tenant":
                note = (f"app role: one count per workspace ({len(dataset.tenants[0].workspaces)}), "
                        "each under its workspace context; baseline: one count of the tenant. " + note).strip()
            section.add(Row(metric=f"{label}: mean per transaction, app role under RLS vs admin + WHERE",
                            value=measured, unit="ms", baseline=baseline, ratio=ratio, target=f"≤ {TARGET}",
                            met=ratio <= TARGET, note=note))
        section.artifacts["explain"] = plans
    finally:
        for engine in engines:
            engine.dispose()
    return section
