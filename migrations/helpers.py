"""Building blocks shared by revisions.

Frozen like the revisions that call them: changing what one of these emits would change history.
A different rule gets a new function.
"""

from __future__ import annotations

from alembic import context, op

CURRENT_TENANT = "(select nullif(current_setting('app.tenant_id', true), '')::uuid)"
CURRENT_WORKSPACE = "(select nullif(current_setting('app.workspace_id', true), '')::uuid)"


def app_role() -> str:
    """The app role's name, handed over by `palisade migrate` (taken from the app database URL)."""
    role = context.config.attributes.get("app_role") or context.get_x_argument(as_dictionary=True).get("app_role")
    if not role:
        raise RuntimeError("the app role name is required (palisade migrate takes it from the app database URL)")
    return role


def isolate(table: str, *, workspace: bool = False) -> None:
    """ENABLE + FORCE RLS: one PERMISSIVE tenant policy, a RESTRICTIVE workspace one where it applies."""
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} AS PERMISSIVE FOR ALL "
        f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
    )
    if workspace:
        op.execute(
            f"CREATE POLICY workspace_isolation ON {table} AS RESTRICTIVE FOR ALL "
            f"USING (workspace_id = {CURRENT_WORKSPACE}) WITH CHECK (workspace_id = {CURRENT_WORKSPACE})"
        )
