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


# --- Revision 0007: membership and vendor grants, checked by the policies themselves -----------
CURRENT_USER = "(select nullif(current_setting('app.user_id', true), '')::uuid)"
PLATFORM_ROLE = "(select current_setting('app.platform_role', true))"
VENDOR_ISSUER = "(select current_setting('app.vendor_issuer', true))"
VENDOR_SUBJECT = "(select current_setting('app.vendor_subject', true))"
PLATFORM_TENANT = "'00000000-0000-0000-0000-000000000000'::uuid"

# The checks the policies call. PL/pgSQL, SECURITY INVOKER (the app role's own RLS applies to what
# they read), STABLE, with a pinned search_path. Why functions and not inline subqueries: the
# planner expands every policy of every table a subquery reads, recursively, on every statement
# (0.46 ms of planning per documents query here); a PL/pgSQL function keeps its query's plan for
# the session, and the policy calls it once per statement as an InitPlan (0.05 ms).
_SETTING_UUID = "nullif(current_setting('app.{name}', true), '')::uuid"
RLS_FUNCTIONS = {
    "rls_tenant_member": ("", f"""
  SELECT EXISTS (SELECT 1 FROM public.tenant_memberships m
                  WHERE m.tenant_id = {_SETTING_UUID.format(name="tenant_id")}
                    AND m.user_id = {_SETTING_UUID.format(name="user_id")})"""),
    "rls_tenant_admin": ("", f"""
  SELECT EXISTS (SELECT 1 FROM public.tenant_memberships m
                  WHERE m.tenant_id = {_SETTING_UUID.format(name="tenant_id")}
                    AND m.user_id = {_SETTING_UUID.format(name="user_id")}
                    AND m.role = 'customer_admin')"""),
    "rls_workspace_member": ("", f"""
  SELECT EXISTS (SELECT 1 FROM public.workspace_memberships w
                  WHERE w.tenant_id = {_SETTING_UUID.format(name="tenant_id")}
                    AND w.workspace_id = {_SETTING_UUID.format(name="workspace_id")}
                    AND w.user_id = {_SETTING_UUID.format(name="user_id")})"""),
    "rls_vendor_grant": ("grant_scope text, in_workspace boolean", f"""
  SELECT EXISTS (SELECT 1 FROM public.vendor_access_grants g
                  WHERE g.tenant_id = {_SETTING_UUID.format(name="tenant_id")}
                    AND g.requester_issuer = current_setting('app.vendor_issuer', true)
                    AND g.requester_subject = current_setting('app.vendor_subject', true)
                    AND g.scope = grant_scope AND g.decision = 'approved' AND g.revoked_at IS NULL
                    AND g.expires_at > now()
                    AND (NOT in_workspace OR g.workspace_id = {_SETTING_UUID.format(name="workspace_id")}))"""),
}


def _identity(name: str) -> str:
    """`public.name(types)`: how PostgreSQL names the function in GRANT, REVOKE and DROP."""
    params = RLS_FUNCTIONS[name][0]
    return f"public.{name}({', '.join(p.split()[1] for p in params.split(', ') if p)})"


def create_rls_function(name: str, role: str) -> None:
    """One check as a PL/pgSQL function only the app role may call."""
    params, query = RLS_FUNCTIONS[name]
    op.execute(
        f"CREATE FUNCTION public.{name}({params}) RETURNS boolean LANGUAGE plpgsql STABLE SECURITY INVOKER"
        f" SET search_path = pg_catalog, pg_temp AS $body$\nBEGIN\n  RETURN ({query.strip()});\nEND\n$body$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {_identity(name)} FROM PUBLIC")
    op.execute(f'GRANT EXECUTE ON FUNCTION {_identity(name)} TO "{role}"')


def drop_rls_function(name: str) -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {_identity(name)}")


def call(name: str, *args: str) -> str:
    """The policy's call of a check: a scalar subquery, so it runs once per statement."""
    return f"(select public.{name}({', '.join(args)}))"


def restrict(table: str, name: str, *, using: str, with_check: str | None = None, command: str = "ALL") -> None:
    """One more RESTRICTIVE policy: every row must pass it as well as the tenant policy."""
    check = f" WITH CHECK ({with_check})" if with_check is not None else ""
    op.execute(f"CREATE POLICY {name} ON {table} AS RESTRICTIVE FOR {command} USING ({using}){check}")
