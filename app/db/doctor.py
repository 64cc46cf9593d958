"""The checks behind `palisade doctor`: prove, as the app role, that the database enforces the data rules.

Three layers, all run through the role the app runs with, because what matters is what *that*
role can do. Each broken rule becomes a `Finding` naming the object, so an operator can fix it
without reading SQL.

1. Catalog shape (pg_class, pg_namespace, pg_attribute, pg_policy, pg_proc, pg_constraint,
   pg_index, pg_roles, has_table_privilege), read in one read-only snapshot.
2. Behaviour as written: every policy in pg_policies is compared with its expected canonical form
   (`TENANT_TABLES` below: command, PERMISSIVE/RESTRICTIVE, roles, and the USING / WITH CHECK text
   as PostgreSQL deparses it), and everything the app role can read, write or execute must be
   either one of `TENANT_TABLES` or on the short `GLOBAL_TABLES` / `CALLABLE_FUNCTIONS` lists.
3. Behaviour as run (`run_probe`): a live probe as the app role in a transaction that is always
   rolled back. It never relies on the database holding suitable rows of its own choosing:
   - the context is a *synthetic* tenant, workspace and user (fresh random UUIDs that own no row),
     so any row the app role can see in a tenant-keyed table belongs to someone else: a leak. On
     an empty database this proves nothing (there is nothing to leak), which is why layer 2 exists;
   - the same with `app.platform_role = 'internal_admin'` and no tenant: vendor staff see tenant
     metadata (the tables whose expected policy admits them) and no tenant content;
   - for workspace-keyed tables, up to `PROBE_TENANTS` real tenants (listed the way vendor staff
     list them) with a synthetic workspace: any visible row belongs to another workspace;
   - for every tenant-keyed table the app role may INSERT into, an INSERT carrying another
     (synthetic) tenant's id, and for workspace-keyed tables the own tenant with another
     workspace's id, must be refused by a row level security WITH CHECK (SQLSTATE 42501), under
     both the plain and the internal_admin context. PostgreSQL checks the RLS WITH CHECK before
     NOT NULL, CHECK and foreign key constraints, so a one-column INSERT is enough: any other
     outcome (the row goes in, or another constraint rejects it first) means WITH CHECK let it by.
   Each statement runs under its own SAVEPOINT, so one refusal does not end the probe; settings are
   transaction-local (`set_config(..., true)`), and the transaction is rolled back in a `finally`,
   so nothing the probe does survives it. A statement and lock timeout keep it fast.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import create_engine, pool, text

from app.db.session import DbContext, send_context


@dataclass(frozen=True)
class Finding:
    """One broken rule and the object that breaks it."""

    check: str
    subject: str
    message: str


@dataclass(frozen=True)
class Report:
    """What the doctor found, and which checks it ran to find it."""

    findings: list[Finding]
    checks_run: list[str]

    @property
    def ok(self) -> bool:
        """True when every check ran clean."""
        return not self.findings


# Every check id, in the order they run. `migration_head` runs only when the caller names a head.
CHECKS = (
    "server_version",
    "role_superuser",
    "role_bypassrls",
    "role_membership",
    "role_ownership",
    "role_timeouts",
    "table_privileges",
    "audit_append_only",
    "rls_enabled",
    "force_rls",
    "policy_missing",
    "policy_using",
    "policy_with_check",
    "permissive_policies",
    "view_security_invoker",
    "definer_search_path",
    "key_tenant_id",
    "tenant_key",
    "policy_expected",
    "policy_unexpected",
    "policy_canonical",
    "policy_setting",
    "function_canonical",
    "unlisted_object",
    "migration_head",
    "probe_visibility",
    "probe_with_check",
)

# The first minor of each major with the RLS fixes (CVE-2024-10976, CVE-2024-10978, CVE-2025-8713).
# Majors after 17 were released with them; 15 is the floor anyway (security_invoker views need it).
MINIMUM_MINOR = {15: 14, 16: 10, 17: 6}


# --- The expected policies -------------------------------------------------------------------
# Predicates as PostgreSQL deparses them into pg_policies (taken from a freshly migrated 15.x
# database), written here with the cosmetic column alias of each scalar subquery (`( SELECT ...
# AS "nullif")`) left out: `canonical()` removes it, and normalises whitespace, on both sides.
# The context settings, as the policies read them:
_T = "( SELECT (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid)"
_W = "( SELECT (NULLIF(current_setting('app.workspace_id'::text, true), ''::text))::uuid)"
_U = "( SELECT (NULLIF(current_setting('app.user_id'::text, true), ''::text))::uuid)"
_P = "( SELECT current_setting('app.platform_role'::text, true))"
_VI = "( SELECT current_setting('app.vendor_issuer'::text, true))"
_VS = "( SELECT current_setting('app.vendor_subject'::text, true))"

# The settings the app sets (app.db.session), and so the only ones a policy may read.
APP_SETTINGS = frozenset({"app.tenant_id", "app.workspace_id", "app.user_id", "app.platform_role", "app.vendor_issuer",
                          "app.vendor_subject"})


@dataclass(frozen=True)
class ExpectedPolicy:
    """One policy as it must read in pg_policies."""

    name: str
    permissive: bool
    using: str | None
    with_check: str | None
    command: str = "ALL"
    roles: tuple[str, ...] = ("public",)


@dataclass(frozen=True)
class TenantTable:
    """A tenant-keyed table: its tenant column (uuid not null), its workspace column, its policies."""

    policies: tuple[ExpectedPolicy, ...]
    key: str = "tenant_id"
    workspace_key: str | None = None


TENANT_POLICY = ExpectedPolicy("tenant_isolation", True, f"(tenant_id = {_T})", f"(tenant_id = {_T})")
WORKSPACE_POLICY = ExpectedPolicy(
    "workspace_isolation", False, f"(workspace_id = {_W})", f"(workspace_id = {_W})"
)
# A tenants row is its own tenant; vendor staff (internal_admin) read tenant metadata, never write it.
TENANTS_POLICY = ExpectedPolicy(
    "tenant_isolation", True, f"((id = {_T}) OR ({_P} = 'internal_admin'::text))", f"(id = {_T})"
)
# Revision 0007: membership and vendor grants, read by the policies themselves.
_USER_SET = f"({_U} IS NOT NULL)"
_VENDOR = f"({_P} = 'internal_admin'::text)"
_NOT_VENDOR = f"({_P} IS DISTINCT FROM 'internal_admin'::text)"
_TENANT_MEMBER = "( SELECT rls_tenant_member())"
_TENANT_ADMIN = "( SELECT rls_tenant_admin())"
_WORKSPACE_MEMBER = "( SELECT rls_workspace_member())"
_REQUESTER = f"((requester_issuer)::text = {_VI}) AND ((requester_subject)::text = {_VS})"


def _grant(scope: str, *, workspace: bool = False) -> str:
    return f"( SELECT rls_vendor_grant('{scope}'::text, {'true' if workspace else 'false'}))"


def _case(member: str, vendor: str, otherwise: str) -> str:
    return f"CASE WHEN {_USER_SET} THEN {member} WHEN {_VENDOR} THEN {vendor} ELSE {otherwise} END"


def _tenant_access(vendor_reads: str) -> ExpectedPolicy:
    """A named user must be a member; vendor staff read only what `vendor_reads` admits, never write."""
    return ExpectedPolicy("tenant_access", False, _case(_TENANT_MEMBER, vendor_reads, "true"), _case(_TENANT_MEMBER, "false", "true"))


_CONTENT_ACCESS = ExpectedPolicy(
    "workspace_access", False, _case(_WORKSPACE_MEMBER, _grant("content", workspace=True), "false"),
    f"CASE WHEN {_USER_SET} THEN {_WORKSPACE_MEMBER} ELSE false END",
)
_VENDOR_READ_ONLY = ExpectedPolicy("vendor_read_only", False, _NOT_VENDOR, None, command="DELETE")
_CREDENTIAL = (f"CASE WHEN {_USER_SET} THEN ({_WORKSPACE_MEMBER} OR {_TENANT_ADMIN})"
               f" WHEN ({_P} = 'key_custodian'::text) THEN true ELSE false END")
_OWN_EVENT = (f"((tenant_id = '00000000-0000-0000-0000-000000000000'::uuid)"
              f" OR (((actor_issuer)::text = {_VI}) AND ((actor_subject)::text = {_VS})))")
_AUDIT_ACCESS = ExpectedPolicy(
    "tenant_access", False,
    _case(_TENANT_MEMBER, _OWN_EVENT[:-1] + f" OR {_grant('audit')})", "true"), _case(_TENANT_MEMBER, _OWN_EVENT, "true"),
)

# The policies that check membership (or a vendor grant): the probe expects a non-member to see nothing.
_IDEMPOTENCY_ACCESS = _case(_TENANT_MEMBER, f"(((caller_issuer)::text = {_VI}) AND ((caller_subject)::text = {_VS}))", "true")
MEMBERSHIP_POLICIES = frozenset({"tenant_access", "workspace_access"})
# On the tables those checks read: closed to vendor staff without a grant, open to the tenant.
VENDOR_POLICY = "vendor_access"

TENANT_OWNED = TenantTable((TENANT_POLICY,))
# Rows visible only to members of the tenant (when the context names a user).
MEMBERS_ONLY = TenantTable((TENANT_POLICY, _tenant_access("false")))
METADATA = TenantTable((TENANT_POLICY, _tenant_access(_grant("metadata"))))
# Workspace content: the workspace in the context, and a user who is a member of it.
WORKSPACE_OWNED = TenantTable((TENANT_POLICY, WORKSPACE_POLICY, _CONTENT_ACCESS, _VENDOR_READ_ONLY), workspace_key="workspace_id")

# Every tenant-keyed table, one line each: a new one is added here, in the same change as its migration.
TENANT_TABLES: dict[str, TenantTable] = {
    "public.tenants": TenantTable((TENANTS_POLICY,), key="id"),
    "public.users": METADATA,
    # Read by every membership check, so checked for vendor staff only (a self-check would recurse).
    "public.tenant_memberships": TenantTable((TENANT_POLICY, ExpectedPolicy(
        "vendor_access", False, f"CASE WHEN {_VENDOR} THEN {_grant('metadata')} ELSE true END", _NOT_VENDOR))),
    "public.workspaces": METADATA,
    "public.workspace_memberships": METADATA,
    "public.invitations": MEMBERS_ONLY,
    "public.audit_events": TenantTable((TENANT_POLICY, _AUDIT_ACCESS)),
    "public.audit_chain_heads": TENANT_OWNED,  # one hash and a counter per tenant
    # Read by every vendor check: vendor staff see (and may only file) their own requests.
    "public.vendor_access_grants": TenantTable((TENANT_POLICY, ExpectedPolicy(
        "vendor_access", False, f"CASE WHEN {_VENDOR} THEN ({_REQUESTER}) ELSE true END",
        f"CASE WHEN {_VENDOR} THEN ({_REQUESTER} AND (decision IS NULL)) ELSE true END"))),
    "public.tenant_data_keys": MEMBERS_ONLY,
    "public.documents": WORKSPACE_OWNED,
    "public.uploaded_files": WORKSPACE_OWNED,
    # A caller's own keys: members of the tenant; vendor staff only the rows they made (migration 0009).
    "public.idempotency_keys": TenantTable((TENANT_POLICY, ExpectedPolicy(
        "tenant_access", False, _IDEMPOTENCY_ACCESS, _IDEMPOTENCY_ACCESS))),
    "public.provider_credentials": TenantTable(
        (TENANT_POLICY, WORKSPACE_POLICY, ExpectedPolicy("workspace_access", False, _CREDENTIAL, _CREDENTIAL)),
        workspace_key="workspace_id"),
}

# Relations the app role may touch that hold no tenant data, and why. Keep this list short.
GLOBAL_TABLES: dict[str, str] = {
    "public.alembic_version": "the schema revision, read by doctor",
    "public.alert_counters": "platform alert windows; tenant ids only inside opaque keys",
    "public.alert_firings": "platform alert state; tenant ids only inside opaque keys",
    "public.rate_limit_windows": "rate-limit buckets keyed by pseudonymous digests",
    "public.schema_compatibility": "the newest contract step applied, read by doctor (migration 0011)",
}

# Functions in our schemas the app role may EXECUTE (signature as format('%I.%I(%s)') prints it):
# the checks the policies call (migration 0007) and the audit append (0010, below), each with the
# body it must have. Doctor also requires them PL/pgSQL with search_path pinned to pg_catalog,
# pg_temp; the checks SECURITY INVOKER and STABLE, the append SECURITY DEFINER and VOLATILE.
_UUID_SETTING = "nullif(current_setting('app.{}', true), '')::uuid"
_TENANT_AND_USER = f"m.tenant_id = {_UUID_SETTING.format('tenant_id')} AND m.user_id = {_UUID_SETTING.format('user_id')}"
CALLABLE_FUNCTIONS: dict[str, str] = {
    "public.rls_tenant_member()":
        f"BEGIN RETURN (SELECT EXISTS (SELECT 1 FROM public.tenant_memberships m WHERE {_TENANT_AND_USER})); END",
    "public.rls_tenant_admin()":
        f"BEGIN RETURN (SELECT EXISTS (SELECT 1 FROM public.tenant_memberships m WHERE {_TENANT_AND_USER}"
        " AND m.role = 'customer_admin')); END",
    "public.rls_workspace_member()":
        f"BEGIN RETURN (SELECT EXISTS (SELECT 1 FROM public.workspace_memberships w WHERE w.tenant_id = {_UUID_SETTING.format('tenant_id')}"
        f" AND w.workspace_id = {_UUID_SETTING.format('workspace_id')} AND w.user_id = {_UUID_SETTING.format('user_id')})); END",
    "public.rls_vendor_grant(grant_scope text, in_workspace boolean)":
        f"BEGIN RETURN (SELECT EXISTS (SELECT 1 FROM public.vendor_access_grants g WHERE g.tenant_id = {_UUID_SETTING.format('tenant_id')}"
        " AND g.requester_issuer = current_setting('app.vendor_issuer', true)"
        " AND g.requester_subject = current_setting('app.vendor_subject', true)"
        " AND g.scope = grant_scope AND g.decision = 'approved' AND g.revoked_at IS NULL AND g.expires_at > now()"
        f" AND (NOT in_workspace OR g.workspace_id = {_UUID_SETTING.format('workspace_id')}))); END",
}
# The one SECURITY DEFINER function (migration 0010): the only way the app role appends to an audit
# chain. It must refuse any tenant but the context's, lock the head, and compute the link itself.
AUDIT_APPEND = (
    "private.audit_append(p_tenant_id uuid, p_id uuid, p_occurred_at timestamp with time zone, p_category text, p_action text,"
    " p_outcome text, p_before bytea, p_after bytea, p_workspace_id uuid, p_actor_type text, p_actor_user_id uuid,"
    " p_actor_issuer text, p_actor_subject text, p_actor_role text, p_target_type text, p_target_id text, p_client_ip inet,"
    " p_user_agent text, p_correlation_id text, p_trace_id text, p_details jsonb,"
    " OUT event_seq bigint, OUT event_prev_hash text, OUT event_hash text)"
)
CALLABLE_FUNCTIONS[AUDIT_APPEND] = (
    "DECLARE context_tenant uuid := nullif(current_setting('app.tenant_id', true), '')::uuid; head_seq bigint; head_hash text;"
    " BEGIN IF p_tenant_id IS NULL OR context_tenant IS NULL OR p_tenant_id <> context_tenant THEN"
    " RAISE EXCEPTION 'audit append: tenant % is not the tenant of this transaction', p_tenant_id"
    " USING ERRCODE = 'insufficient_privilege'; END IF;"
    " IF p_before IS NULL OR p_after IS NULL THEN"
    " RAISE EXCEPTION 'audit append: the canonical form is required' USING ERRCODE = 'null_value_not_allowed'; END IF;"
    " SELECT h.seq, h.hash INTO head_seq, head_hash FROM public.audit_chain_heads h WHERE h.tenant_id = p_tenant_id FOR UPDATE;"
    " IF NOT FOUND THEN INSERT INTO public.audit_chain_heads (tenant_id, seq, hash) VALUES (p_tenant_id, 0, repeat('0', 64))"
    " ON CONFLICT (tenant_id) DO NOTHING;"
    " SELECT h.seq, h.hash INTO head_seq, head_hash FROM public.audit_chain_heads h WHERE h.tenant_id = p_tenant_id FOR UPDATE;"
    " IF NOT FOUND THEN RAISE EXCEPTION 'audit chain head of tenant % is not visible to this transaction', p_tenant_id"
    " USING ERRCODE = 'serialization_failure'; END IF; END IF;"
    " event_seq := head_seq + 1; event_prev_hash := head_hash;"
    " event_hash := encode(pg_catalog.sha256(p_before || convert_to(to_json(head_hash)::text || ',\"seq\":' || event_seq::text,"
    " 'UTF8') || p_after), 'hex');"
    " INSERT INTO public.audit_events (tenant_id, id, seq, prev_hash, hash, occurred_at, category, action, outcome, workspace_id,"
    " actor_type, actor_user_id, actor_issuer, actor_subject, actor_role, target_type, target_id, client_ip, user_agent,"
    " correlation_id, trace_id, details)"
    " VALUES (p_tenant_id, p_id, event_seq, event_prev_hash, event_hash, p_occurred_at, p_category, p_action, p_outcome,"
    " p_workspace_id, p_actor_type, p_actor_user_id, p_actor_issuer, p_actor_subject, p_actor_role, p_target_type, p_target_id,"
    " p_client_ip, p_user_agent, p_correlation_id, p_trace_id, p_details);"
    " UPDATE public.audit_chain_heads SET seq = event_seq, hash = event_hash WHERE tenant_id = p_tenant_id; END"
)
# Functions that must run as their owner (SECURITY DEFINER, VOLATILE); every other callable one
# runs as the caller (SECURITY INVOKER, STABLE).
DEFINER_FUNCTIONS = frozenset({AUDIT_APPEND})
CALLABLE_CONFIG = ["search_path=pg_catalog, pg_temp"]
# What the app role must never hold on the audit trail's tables: events are never changed or
# removed, heads never removed (it appends through AUDIT_APPEND). INSERT on both and UPDATE on the
# heads are still held while a previous release may append directly (migration 0010: expand); the
# contract migration of a later release revokes them, and this list grows to every write then.
AUDIT_FORBIDDEN = {"public.audit_events": ("UPDATE", "DELETE", "TRUNCATE"), "public.audit_chain_heads": ("DELETE", "TRUNCATE")}

# The session timeouts the app role must start with (migration 0008 sets them on the database), and
# the most an operator may raise each to: 0 (no limit) or more lets one tenant's work hold others.
SESSION_TIMEOUTS_MAX_MS = {"statement_timeout": 300_000, "lock_timeout": 30_000, "idle_in_transaction_session_timeout": 600_000}

# How many real tenants (and workspaces of each) the probe borrows ids from.
PROBE_TENANTS = 3

_ALIAS = re.compile(r"\s+AS\s+(?:\"(?:[^\"]|\"\")*\"|[A-Za-z_][A-Za-z0-9_$]*)\)")
_SETTING = re.compile(r"current_setting\('((?:[^']|'')*)'")


def canonical(expression: str | None) -> str | None:
    """A deparsed predicate with whitespace and scalar-subquery aliases normalised away."""
    if expression is None:
        return None
    return _ALIAS.sub(")", " ".join(expression.split()))


def _user_schema(alias: str) -> str:
    """SQL that keeps the non-system schemas of namespace `alias`."""
    # Users cannot create schemas named pg_*, so this excludes pg_catalog, pg_toast and every
    # pg_temp_N / pg_toast_temp_N exactly, and nothing of ours.
    return f"({alias}.nspname <> 'information_schema' and {alias}.nspname !~ '^pg_')"


# The roles this connection acts as: session_user too, because a connection that logged in as a
# stronger role and then SET ROLE can RESET ROLE back to it.
_ME = "select oid, rolname from pg_roles where rolname in (current_user, session_user)"

# Objects whose owner can switch RLS off (ALTER TABLE ... NO FORCE / DISABLE), replace them, or
# drop them (schema owners may drop what lives in their schema).
_OWNED = f"""
select c.relowner as owner,
       case c.relkind when 'r' then 'table' when 'p' then 'table' when 'f' then 'foreign table'
                      when 'v' then 'view' when 'm' then 'materialized view' else 'sequence' end as kind,
       format('%I.%I', n.nspname, c.relname) as name
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where c.relkind in ('r', 'p', 'f', 'v', 'm', 'S') and {_user_schema('n')}
union all
select p.proowner, case p.prokind when 'p' then 'procedure' else 'function' end,
       format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where {_user_schema('n')}
union all
select n.nspowner, 'schema', format('%I', n.nspname)
  from pg_namespace n
 where {_user_schema('n')}
"""

# Every table-like relation with a tenant_id column holds tenant rows, whatever else it is:
# materialized and foreign tables are included because RLS cannot protect them, which is the point.
_TENANT_TABLES = f"""
select c.oid, format('%I.%I', n.nspname, c.relname) as name,
       c.relrowsecurity, c.relforcerowsecurity, a.attnum as tenant_attnum
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
  join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
 where c.relkind in ('r', 'p', 'f', 'm') and {_user_schema('n')}
"""

_SQL_VERSION = text("select current_setting('server_version_num')::int, current_setting('server_version')")

_SQL_ROLES = text("select rolname, rolsuper, rolbypassrls from pg_roles where rolname in (current_user, session_user) order by 1")

_SQL_OWNED_BY_ME = text(
    f"""
    with me as ({_ME}), owned as ({_OWNED})
    select me.rolname, owned.kind, owned.name
      from owned join me on me.oid = owned.owner
     order by 1, 3, 2
    """
)

# Membership in a role that is superuser, BYPASSRLS, an owner, or holds TRUNCATE/REFERENCES gives
# that power through SET ROLE (or inheritance), even if the app role itself has none of it.
_SQL_DANGEROUS_MEMBERSHIPS = text(
    f"""
    with me as ({_ME}),
         owners as (select distinct owner from ({_OWNED}) owned),
         tables as (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                     where c.relkind in ('r', 'p') and {_user_schema('n')})
    select me.rolname as member, r.rolname as role, r.rolsuper, r.rolbypassrls,
           r.oid in (select owner from owners) as owns,
           exists (select 1 from tables t
                    where has_table_privilege(r.oid, t.oid, 'TRUNCATE')
                       or has_any_column_privilege(r.oid, t.oid, 'REFERENCES')) as rls_bypassing_grants
      from me cross join pg_roles r
     where r.oid not in (select oid from me) and pg_has_role(me.oid, r.oid, 'MEMBER')
     order by 1, 2
    """
)

_SQL_RISKY_PRIVILEGES = text(
    f"""
    with me as ({_ME})
    select me.rolname, format('%I.%I', n.nspname, c.relname) as name,
           has_table_privilege(me.oid, c.oid, 'TRUNCATE') as can_truncate,
           -- a column-level REFERENCES grant is enough to build a foreign key that probes rows
           has_any_column_privilege(me.oid, c.oid, 'REFERENCES') as can_reference
      from pg_class c join pg_namespace n on n.oid = c.relnamespace cross join me
     where c.relkind in ('r', 'p') and {_user_schema('n')}
     order by 2, 1
    """
)

# Any write the app role (or a role it can become) holds on the audit tables, table- or column-level.
_SQL_AUDIT_WRITES = text(
    f"""
    with me as ({_ME})
    select me.rolname, want.name, p.privilege
      from unnest(cast(:tables as text[])) as want(name)
      cross join me
      cross join unnest(array['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) as p(privilege)
     where to_regclass(want.name) is not null
       and (has_table_privilege(me.oid, to_regclass(want.name), p.privilege)
            or (p.privilege in ('INSERT', 'UPDATE') and has_any_column_privilege(me.oid, to_regclass(want.name), p.privilege)))
     order by 2, 1, 3
    """
)

_SQL_TENANT_TABLES = text(f"select name, relrowsecurity, relforcerowsecurity from ({_TENANT_TABLES}) t order by name")

_SQL_POLICIES = text(
    f"""
    select t.name as table_name, p.polname, p.polcmd, p.polpermissive,
           p.polqual is not null as has_using, p.polwithcheck is not null as has_with_check
      from ({_TENANT_TABLES}) t join pg_policy p on p.polrelid = t.oid
     order by 1, 2
    """
)

_SQL_VIEWS = text(
    f"""
    select format('%I.%I', n.nspname, c.relname), c.reloptions
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind = 'v' and {_user_schema('n')}
     order by 1
    """
)

_SQL_DEFINER_FUNCTIONS = text(
    f"""
    select format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), p.proconfig
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where p.prosecdef and {_user_schema('n')}
     order by 1
    """
)

_SQL_TIMEOUTS = text("select name, setting::bigint from pg_settings where name in :names").bindparams(
    sqlalchemy.bindparam("names", expanding=True)
)

_SQL_CALLABLE = text(
    f"""
    select format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) as name,
           p.prosrc, p.prosecdef, p.provolatile, l.lanname, p.proconfig
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace join pg_language l on l.oid = p.prolang
     where {_user_schema('n')}
    """
)

# Only the key columns (the first indnkeyatts) decide uniqueness: an INCLUDE (tenant_id) does not.
# Indexes backing a primary key or unique constraint are named by the constraint.
_SQL_UNIQUE_KEYS = text(
    f"""
    select t.name as table_name, coalesce(con.conname, ic.relname) as key_name,
           case con.contype when 'p' then 'primary key' when 'u' then 'unique constraint' else 'unique index' end as kind,
           exists (select 1 from generate_series(0, i.indnkeyatts - 1) k where i.indkey[k] = t.tenant_attnum) as has_tenant
      from ({_TENANT_TABLES}) t
      join pg_index i on i.indrelid = t.oid and i.indisunique
      join pg_class ic on ic.oid = i.indexrelid
      left join pg_constraint con
        on con.conindid = i.indexrelid and con.conrelid = i.indrelid and con.contype in ('p', 'u')
     order by 1, 2
    """
)

# A foreign key from or to a tenant table. Pointing at a tenant table, the key must map tenant_id
# onto tenant_id (same position), or a row could reference another tenant's row, and the FK check,
# which ignores RLS, would confirm that row exists. Clones on partitions (conparentid) repeat
# their parent and are skipped.
_SQL_FOREIGN_KEYS = text(
    f"""
    with tenant_tables as ({_TENANT_TABLES})
    select format('%I.%I', ln.nspname, lc.relname) as table_name, con.conname,
           format('%I.%I', rn.nspname, rc.relname) as referenced,
           lt.tenant_attnum is not null and lt.tenant_attnum = any (con.conkey) as local_has_tenant,
           rt.oid is not null as references_tenant_table,
           exists (select 1 from generate_subscripts(con.conkey, 1) k
                    where con.conkey[k] = lt.tenant_attnum and con.confkey[k] = rt.tenant_attnum) as tenant_paired
      from pg_constraint con
      join pg_class lc on lc.oid = con.conrelid
      join pg_namespace ln on ln.oid = lc.relnamespace
      join pg_class rc on rc.oid = con.confrelid
      join pg_namespace rn on rn.oid = rc.relnamespace
      left join tenant_tables lt on lt.oid = con.conrelid
      left join tenant_tables rt on rt.oid = con.confrelid
     where con.contype = 'f' and con.conparentid = 0 and (lt.oid is not null or rt.oid is not null)
     order by 1, 2
    """
)

# Resolved through the search_path like the migrations' own `alembic_version`; checked for
# existence and SELECT first, so a missing grant is a finding rather than an aborted transaction.
_SQL_ALEMBIC_READABLE = text(
    "select to_regclass('alembic_version') is not null,"
    " coalesce(has_table_privilege(to_regclass('alembic_version'), 'SELECT'), false)"
)
_SQL_ALEMBIC_VERSION = text("select version_num from alembic_version order by 1")
# Written by `palisade migrate` since revision 0011; absent before it.
_SQL_COMPATIBILITY_READABLE = text("select coalesce(has_table_privilege(to_regclass('schema_compatibility'), 'SELECT'), false)")
_SQL_COMPATIBLE_SINCE = text("select compatible_since from schema_compatibility")

_POLICY_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def server_version_problem(version_num: int) -> str | None:
    """Why this server_version_num is too old for the RLS fixes, or None when it is recent enough."""
    major, minor = divmod(version_num, 10000)
    if major < 15:
        return "is older than 15; security_invoker views and the RLS fixes need 15.14, 16.10, 17.6 or later"
    floor = MINIMUM_MINOR.get(major)
    if floor is not None and minor < floor:
        return (
            f"lacks the row level security fixes for CVE-2024-10976, CVE-2024-10978 and CVE-2025-8713; "
            f"upgrade to {major}.{floor} or later"
        )
    return None


def is_true_option(value: str) -> bool:
    """Whether a reloption value reads as true the way PostgreSQL parses booleans."""
    # parse_bool accepts any unambiguous prefix of true/yes, plus on and 1, case-insensitively.
    v = value.strip().lower()
    return bool(v) and ("true".startswith(v) or "yes".startswith(v) or v in ("on", "1"))


def _security_invoker(reloptions: list[str] | None) -> bool:
    for option in reloptions or []:
        key, _, value = option.partition("=")
        if key.strip().lower() == "security_invoker":
            return is_true_option(value)
    return False


def _pins_search_path(proconfig: list[str] | None) -> bool:
    # `SET search_path = ...` (or FROM CURRENT) on the function lands in proconfig as search_path=...
    return any(entry.partition("=")[0].strip().lower() == "search_path" for entry in proconfig or [])


def _check_server_version(conn: sqlalchemy.Connection) -> list[Finding]:
    version_num, version = conn.execute(_SQL_VERSION).one()
    problem = server_version_problem(version_num)
    if problem is None:
        return []
    return [Finding("server_version", "server", f"PostgreSQL {version} (server_version_num {version_num}) {problem}.")]


def _check_role_attributes(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = []
    for rolname, rolsuper, rolbypassrls in conn.execute(_SQL_ROLES):
        if rolsuper:
            findings.append(Finding("role_superuser", rolname, f"The app connects as {rolname}, a superuser, which ignores row level security."))
        if rolbypassrls:
            findings.append(Finding("role_bypassrls", rolname, f"The app role {rolname} has BYPASSRLS, which ignores row level security."))
    return findings


def _check_role_membership(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = []
    for member, role, rolsuper, rolbypassrls, owns, grants in conn.execute(_SQL_DANGEROUS_MEMBERSHIPS):
        powers = [
            label
            for label, held in (
                ("is a superuser", rolsuper),
                ("has BYPASSRLS", rolbypassrls),
                ("owns objects", owns),
                ("holds TRUNCATE or REFERENCES", grants),
            )
            if held
        ]
        if powers:
            findings.append(
                Finding("role_membership", role, f"The app role {member} is a member of {role}, which {' and '.join(powers)}; SET ROLE gives the app that power.")
            )
    return findings


def _check_role_ownership(conn: sqlalchemy.Connection) -> list[Finding]:
    return [
        Finding("role_ownership", name, f"The app role {rolname} owns the {kind} {name}; an owner can switch off or replace its protections.")
        for rolname, kind, name in conn.execute(_SQL_OWNED_BY_ME)
    ]


def _check_table_privileges(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = []
    for rolname, name, can_truncate, can_reference in conn.execute(_SQL_RISKY_PRIVILEGES):
        held = [p for p, has in (("TRUNCATE", can_truncate), ("REFERENCES", can_reference)) if has]
        if held:
            findings.append(
                Finding("table_privileges", name, f"The app role {rolname} holds {' and '.join(held)} on {name}, which row level security does not govern.")
            )
    return findings


def _check_audit_writes(conn: sqlalchemy.Connection) -> list[Finding]:
    """No write on the audit tables that the trail forbids (`AUDIT_FORBIDDEN`)."""
    held: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rolname, name, privilege in conn.execute(_SQL_AUDIT_WRITES, {"tables": list(AUDIT_FORBIDDEN)}):
        if privilege in AUDIT_FORBIDDEN[name]:
            held[(name, rolname)].append(privilege)
    return [
        Finding("audit_append_only", name,
                f"The app role {rolname} holds {', '.join(privileges)} on {name}: it could rewrite or remove what the audit "
                f"trail recorded; it may only append, through {AUDIT_APPEND.partition('(')[0]}.")
        for (name, rolname), privileges in held.items()
    ]


def _check_row_level_security(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = []
    tables = conn.execute(_SQL_TENANT_TABLES).all()
    policies: dict[str, list] = defaultdict(list)
    for row in conn.execute(_SQL_POLICIES):
        policies[row.table_name].append(row)
    for name, enabled, forced in tables:
        if not enabled:
            findings.append(Finding("rls_enabled", name, f"{name} has a tenant_id column but row level security is not enabled."))
        if not forced:
            findings.append(Finding("force_rls", name, f"{name} does not FORCE row level security, so its owner bypasses the policies."))
        table_policies = policies.get(name, [])
        if not table_policies:
            findings.append(Finding("policy_missing", name, f"{name} has a tenant_id column but no row level security policy."))
            continue
        for p in table_policies:
            command = _POLICY_COMMANDS.get(p.polcmd, p.polcmd)
            subject = f"{name}.{p.polname}"
            # INSERT policies cannot carry USING; every other command filters rows with it.
            if command != "INSERT" and not p.has_using:
                findings.append(Finding("policy_using", subject, f"Policy {p.polname} on {name} ({command}) has no USING expression."))
            # Without WITH CHECK, PostgreSQL falls back to USING; the design wants it spelled out.
            if command in ("ALL", "INSERT", "UPDATE") and not p.has_with_check:
                findings.append(Finding("policy_with_check", subject, f"Policy {p.polname} on {name} ({command}) has no WITH CHECK expression."))
        permissive = [p.polname for p in table_policies if p.polpermissive]
        # PERMISSIVE policies are OR-ed: a second one widens access (and defeats the index).
        if len(permissive) > 1:
            findings.append(
                Finding("permissive_policies", name, f"{name} has {len(permissive)} PERMISSIVE policies ({', '.join(permissive)}); further rules must be RESTRICTIVE.")
            )
        elif not permissive:
            findings.append(Finding("permissive_policies", name, f"{name} has only RESTRICTIVE policies and no PERMISSIVE tenant policy."))
    return findings


def _check_views(conn: sqlalchemy.Connection) -> list[Finding]:
    return [
        Finding("view_security_invoker", name, f"View {name} lacks security_invoker=true, so it reads with its owner's rights.")
        for name, reloptions in conn.execute(_SQL_VIEWS)
        if not _security_invoker(reloptions)
    ]


def _check_definer_functions(conn: sqlalchemy.Connection) -> list[Finding]:
    return [
        Finding("definer_search_path", name, f"SECURITY DEFINER function {name} does not pin search_path.")
        for name, proconfig in conn.execute(_SQL_DEFINER_FUNCTIONS)
        if not _pins_search_path(proconfig)
    ]


def _check_keys(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = [
        Finding("key_tenant_id", f"{table}.{key}", f"The {kind} {key} on tenant table {table} does not include tenant_id.")
        for table, key, kind, has_tenant in conn.execute(_SQL_UNIQUE_KEYS)
        if not has_tenant
    ]
    for table, conname, referenced, local_has, references_tenant, paired in conn.execute(_SQL_FOREIGN_KEYS):
        subject = f"{table}.{conname}"
        if references_tenant and not paired:
            findings.append(
                Finding("key_tenant_id", subject, f"Foreign key {conname} on {table} does not map tenant_id to tenant_id of tenant table {referenced}.")
            )
        elif not references_tenant and not local_has:
            findings.append(Finding("key_tenant_id", subject, f"Foreign key {conname} on tenant table {table} does not include tenant_id."))
    return findings

_SQL_ALL_POLICIES = text(
    """
    select format('%I.%I', schemaname, tablename) as table_name, policyname, permissive, roles, cmd, qual, with_check
      from pg_policies
     where schemaname <> 'information_schema' and schemaname !~ '^pg_'
     order by 1, 2
    """
)

# The key columns of the expected tenant tables, with the table's RLS flags; a missing table or
# column comes back as NULLs.
_SQL_KEY_COLUMNS = text(
    """
    select want.table_name, want.column_name, c.oid is not null as table_exists,
           c.relrowsecurity, c.relforcerowsecurity, a.atttypid = 'uuid'::regtype as is_uuid, a.attnotnull
      from unnest(cast(:tables as text[]), cast(:columns as text[])) as want(table_name, column_name)
      left join pg_class c on c.oid = to_regclass(want.table_name)
      left join pg_attribute a on a.attrelid = c.oid and a.attname = want.column_name and not a.attisdropped
     order by 1, 2
    """
)

# What the app role can reach: relations it may read or write (any column), functions it may run.
_SQL_REACHABLE = text(
    f"""
    select case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'f' then 'foreign table'
                          else 'table' end as kind,
           format('%I.%I', n.nspname, c.relname) as name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p', 'v', 'm', 'f') and {_user_schema('n')}
       and (has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')
            or has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE'))
    union all
    select case p.prokind when 'p' then 'procedure' else 'function' end,
           format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where {_user_schema('n')} and has_function_privilege(p.oid, 'EXECUTE')
     order by 2
    """
)


def _describe_policy(permissive: bool, command: str, roles: tuple[str, ...]) -> str:
    return f"{'PERMISSIVE' if permissive else 'RESTRICTIVE'} FOR {command} TO {', '.join(roles)}"


def _predicate_problem(clause: str, actual: str | None, expected: str | None) -> str | None:
    got, want = canonical(actual), canonical(expected)
    if got == want:
        return None
    if want is None:
        return f"has a {clause} ({got}) where none is expected"
    if got is None:
        return f"has no {clause}; expected {want}"
    if got in ("true", "(true)"):
        return f"{clause} is constant true; expected {want}"
    if got.count(" OR ") > want.count(" OR "):
        return f"{clause} adds a disjunct (OR widens access): {got}; expected {want}"
    return f"{clause} is {got}; expected {want}"


def _check_policies_canonical(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = []
    actual: dict[str, dict[str, sqlalchemy.Row]] = defaultdict(dict)
    for row in conn.execute(_SQL_ALL_POLICIES):
        actual[row.table_name][row.policyname] = row
        unknown = sorted({m.group(1) for expr in (row.qual, row.with_check) if expr for m in _SETTING.finditer(expr)} - APP_SETTINGS)
        if unknown:
            findings.append(
                Finding("policy_setting", f"{row.table_name}.{row.policyname}",
                        f"Policy {row.policyname} on {row.table_name} reads {', '.join(unknown)}, which the app never sets.")
            )
    for table, present in sorted(actual.items()):
        expected = {p.name: p for p in TENANT_TABLES[table].policies} if table in TENANT_TABLES else {}
        for name in sorted(present.keys() - expected.keys()):
            row = present[name]
            findings.append(
                Finding("policy_unexpected", f"{table}.{name}",
                        f"Policy {name} on {table} ({row.permissive} FOR {row.cmd}) is not one of the expected policies; "
                        "add it to TENANT_TABLES in app/db/doctor.py if it is meant to be there.")
            )
    for table, spec in TENANT_TABLES.items():
        present = actual.get(table, {})
        for want in spec.policies:
            subject = f"{table}.{want.name}"
            row = present.get(want.name)
            if row is None:
                findings.append(
                    Finding("policy_expected", subject, f"{table} lacks its policy {want.name} ({_describe_policy(want.permissive, want.command, want.roles)}).")
                )
                continue
            problems = []
            shape = (row.permissive == "PERMISSIVE", row.cmd, tuple(row.roles or ()))
            if shape != (want.permissive, want.command, want.roles):
                problems.append(f"is {_describe_policy(*shape)}; expected {_describe_policy(want.permissive, want.command, want.roles)}")
            for clause, got, expected in (("USING", row.qual, want.using), ("WITH CHECK", row.with_check, want.with_check)):
                problem = _predicate_problem(clause, got, expected)
                if problem:
                    problems.append(problem)
            if problems:
                findings.append(Finding("policy_canonical", subject, f"Policy {want.name} on {table} " + "; ".join(problems) + "."))
    return findings


def _check_tenant_keys(conn: sqlalchemy.Connection) -> list[Finding]:
    wanted = [(table, spec.key) for table, spec in TENANT_TABLES.items()]
    wanted += [(table, spec.workspace_key) for table, spec in TENANT_TABLES.items() if spec.workspace_key]
    rows = conn.execute(_SQL_KEY_COLUMNS, {"tables": [t for t, _ in wanted], "columns": [c for _, c in wanted]}).all()
    findings = []
    missing: set[str] = set()
    for table, column, exists, enabled, forced, is_uuid, not_null in rows:
        if not exists:
            if table in missing:
                continue
            missing.add(table)
            findings.append(Finding("tenant_key", table, f"Tenant table {table} is expected but does not exist (or the app role cannot see it)."))
            continue
        if is_uuid is None:
            findings.append(Finding("tenant_key", f"{table}.{column}", f"Tenant table {table} has no {column} column."))
        elif not (is_uuid and not_null):
            findings.append(Finding("tenant_key", f"{table}.{column}", f"{table}.{column} must be uuid not null."))
        # Tables keyed by tenant_id get these from the rls_enabled/force_rls checks already.
        if column == TENANT_TABLES[table].key and column != "tenant_id":
            if not enabled:
                findings.append(Finding("rls_enabled", table, f"Tenant table {table} does not enable row level security."))
            if not forced:
                findings.append(Finding("force_rls", table, f"Tenant table {table} does not FORCE row level security."))
    return findings


def _check_timeouts(conn: sqlalchemy.Connection) -> list[Finding]:
    """The app role's sessions start with every timeout, each within its bound (milliseconds)."""
    values = dict(conn.execute(_SQL_TIMEOUTS, {"names": list(SESSION_TIMEOUTS_MAX_MS)}).all())
    return [
        Finding("role_timeouts", name,
                f"The app role's {name} is {values.get(name, 0)} ms; it must be between 1 ms and {limit} ms "
                "(palisade migrate sets it on the database).")
        for name, limit in SESSION_TIMEOUTS_MAX_MS.items()
        if not 0 < values.get(name, 0) <= limit
    ]


def _check_functions(conn: sqlalchemy.Connection) -> list[Finding]:
    """Each function the app calls (the policies' checks, the audit append) exists with exactly its expected body and properties."""
    found = {row.name: row for row in conn.execute(_SQL_CALLABLE)}
    findings = []
    for name, body in CALLABLE_FUNCTIONS.items():
        row = found.get(name)
        if row is None:
            findings.append(Finding("function_canonical", name, f"The function {name}, which the app calls, does not exist."))
            continue
        problems = []
        if " ".join(row.prosrc.split()) != body:
            problems.append(f"its body is {' '.join(row.prosrc.split())}; expected {body}")
        definer = name in DEFINER_FUNCTIONS
        if definer and not row.prosecdef:
            problems.append("it is not SECURITY DEFINER (the app role may not write the audit tables itself)")
        if not definer and row.prosecdef:
            problems.append("it is SECURITY DEFINER (it must run as the caller, under the caller's policies)")
        volatility, label = ("v", "VOLATILE") if definer else ("s", "STABLE")
        if row.provolatile != volatility or row.lanname != "plpgsql" or list(row.proconfig or []) != CALLABLE_CONFIG:
            problems.append(f"it must be {label}, plpgsql, with {CALLABLE_CONFIG[0]}")
        if problems:
            findings.append(Finding("function_canonical", name, f"The function {name} " + "; ".join(problems) + "."))
    return findings


def _check_reachable(conn: sqlalchemy.Connection) -> list[Finding]:
    findings = []
    for kind, name in conn.execute(_SQL_REACHABLE):
        if kind in ("procedure", "function"):
            if name not in CALLABLE_FUNCTIONS:
                findings.append(
                    Finding("unlisted_object", name, f"The app role may execute the {kind} {name}, which is not in CALLABLE_FUNCTIONS.")
                )
        elif name not in TENANT_TABLES and name not in GLOBAL_TABLES:
            findings.append(
                Finding("unlisted_object", name,
                        f"The app role can read or write the {kind} {name}, which is neither a tenant table (TENANT_TABLES) "
                        "nor an allowed global table (GLOBAL_TABLES).")
            )
    return findings


def _check_migration_head(conn: sqlalchemy.Connection, revisions: Sequence[str]) -> list[Finding]:
    """The schema is at this release's head, or at a newer release's head that this release can run
    on: every migration since its own head is an expand step (the newest contract step applied,
    recorded by `palisade migrate`, is one this release knows)."""
    exists, readable = conn.execute(_SQL_ALEMBIC_READABLE).one()
    if not exists:
        return [Finding("migration_head", "alembic_version", "The database has no alembic_version table; run palisade migrate.")]
    if not readable:
        return [Finding("migration_head", "alembic_version", "The app role cannot read alembic_version, so the schema revision is unknown.")]
    current = conn.execute(_SQL_ALEMBIC_VERSION).scalars().all()
    head = revisions[-1]
    if current == [head]:
        return []
    at = ", ".join(current) or "no revision"
    if len(current) == 1 and current[0] not in revisions:
        since = conn.execute(_SQL_COMPATIBLE_SINCE).scalar() if conn.execute(_SQL_COMPATIBILITY_READABLE).scalar() else None
        if since in revisions:
            return []  # a newer release migrated it with expand steps only
        reason = (f"a migration that needs this release stopped ({since}) was applied" if since
                  else "it records no compatibility")
        return [Finding("migration_head", "alembic_version",
                        f"The schema is at {at}, from a newer release than this one (head {head}), and {reason}; run the newer release.")]
    return [Finding("migration_head", "alembic_version", f"The schema is at {at}, not the migrations' head {head}; run palisade migrate.")]


# --- The live probe --------------------------------------------------------------------------

_SQL_PROBE_TABLES = text(
    f"""
    select format('%I.%I', n.nspname, c.relname) as name,
           has_table_privilege(c.oid, 'SELECT') as can_select, has_table_privilege(c.oid, 'INSERT') as can_insert,
           exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped) as has_tenant_id,
           exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'workspace_id' and not a.attisdropped) as has_workspace_id
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p') and {_user_schema('n')}
     order by 1
    """
)


@dataclass(frozen=True)
class _Probed:
    name: str
    key: str
    workspace_key: str | None
    can_select: bool
    can_insert: bool
    admin_may_read: bool  # its expected policy lets internal_admin read it without a tenant context
    members_only: bool  # its rows are for members of the tenant (or workspace) named in the context
    vendor_closed: bool  # vendor staff read its rows only under a grant


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _probe_tables(conn: sqlalchemy.Connection) -> list[_Probed]:
    probed = []
    for name, can_select, can_insert, has_tenant_id, has_workspace_id in conn.execute(_SQL_PROBE_TABLES):
        spec = TENANT_TABLES.get(name)
        if spec is None and not has_tenant_id:
            continue
        members_only = vendor_closed = True
        if spec is None:  # an unlisted table with tenant_id: probed as a tenant table anyway
            spec = TenantTable((), workspace_key="workspace_id" if has_workspace_id else None)
        else:
            members_only = any(p.name in MEMBERSHIP_POLICIES for p in spec.policies)
            vendor_closed = members_only or any(p.name == VENDOR_POLICY for p in spec.policies)
        admin = any(p.name == "tenant_isolation" and "app.platform_role" in (p.using or "") for p in spec.policies)
        probed.append(_Probed(name, spec.key, spec.workspace_key, can_select, can_insert, admin, members_only, vendor_closed))
    return probed


def _first_key(conn: sqlalchemy.Connection, table: _Probed) -> tuple[str | None, str | None]:
    """(a visible row's tenant key, None), or (None, the error) when the SELECT itself failed."""
    try:
        with conn.begin_nested():
            return conn.execute(text(f"select {_ident(table.key)}::text from {table.name} limit 1")).scalar(), None
    except sqlalchemy.exc.DBAPIError as exc:
        return None, " ".join(str(exc.orig).split())


def _insert_refused(conn: sqlalchemy.Connection, table: str, values: dict[str, str]) -> str | None:
    """None when row level security refuses the INSERT, else what happened instead."""
    columns = ", ".join(_ident(c) for c in values)
    params = {f"v{i}": v for i, v in enumerate(values.values())}
    placeholders = ", ".join(f":{p}" for p in params)
    try:
        with conn.begin_nested():
            conn.execute(text(f"insert into {table} ({columns}) values ({placeholders})"), params)
    except sqlalchemy.exc.DBAPIError as exc:
        message = " ".join(str(exc.orig).split())
        if getattr(exc.orig, "sqlstate", None) == "42501" and "row-level security" in message:
            return None
        return f"it was rejected by something else first ({message})"
    return "the row was inserted (then rolled back)"


def run_probe(conn: sqlalchemy.Connection) -> list[Finding]:
    """The live probe (see the module docstring); always rolls back what it did."""
    findings: list[Finding] = []
    tenant, workspace, user, other = (str(uuid.uuid4()) for _ in range(4))

    def context(tenant: str = "", workspace: str = "", user: str = "", platform_role: str = "") -> None:
        # Exactly the settings the app sets (app.db.session), the others cleared.
        send_context(conn, DbContext(tenant_id=uuid.UUID(tenant) if tenant else None,
                                     workspace_id=uuid.UUID(workspace) if workspace else None,
                                     user_id=uuid.UUID(user) if user else None, platform_role=platform_role or None))

    try:
        conn.execute(text("select set_config('statement_timeout', '5s', true), set_config('lock_timeout', '1s', true)"))
        tables = _probe_tables(conn)
        readable = [t for t in tables if t.can_select]

        def look(table: _Probed, who: str, leak: str) -> None:
            seen, error = _first_key(conn, table)
            if error is not None:
                findings.append(Finding("probe_visibility", table.name, f"{who}, reading {table.name} failed: {error}"))
            elif seen is not None:
                findings.append(Finding("probe_visibility", table.name, f"{who}, the app role sees a row of {table.name} {leak} (tenant {seen})."))

        context(tenant, workspace, user)
        for table in readable:
            look(table, "As a synthetic tenant that owns no rows", "belonging to another tenant")
        context(platform_role="internal_admin")
        for table in readable:
            if not table.admin_may_read:
                look(table, "As internal_admin without a tenant context", "that vendor staff must not read")
        # Real tenants, listed the way vendor staff list them, each with a workspace of no rows.
        real: list[str] = []
        tenants_table = next((t for t in readable if t.name == "public.tenants"), None)
        if tenants_table is not None and tenants_table.admin_may_read:
            try:
                with conn.begin_nested():
                    real = list(conn.execute(text(f"select id::text from public.tenants order by id limit {PROBE_TENANTS}")).scalars())
            except sqlalchemy.exc.DBAPIError:
                real = []
        real_workspaces: list[str] = []
        workspaces_table = next((t for t in readable if t.name == "public.workspaces"), None)
        for real_tenant in real:
            context(real_tenant, workspace, user)
            for table in readable:
                if table.workspace_key:
                    look(table, f"As tenant {real_tenant} in a workspace that owns no rows", "from another workspace")
            if workspaces_table is not None:
                context(real_tenant)  # no user: the workspaces policy shows the tenant's workspaces
                try:
                    with conn.begin_nested():
                        found = list(conn.execute(
                            text(f"select id::text from public.workspaces order by id limit {PROBE_TENANTS}")
                        ).scalars())
                except sqlalchemy.exc.DBAPIError:
                    found = []
                real_workspaces += found
                # The right tenant and workspace, but a user who is no member (or vendor staff
                # without a grant): the membership rules alone must hold.
                for real_workspace in found:
                    context(real_tenant, real_workspace, user)
                    for table in readable:
                        if table.members_only:
                            look(table, f"As a user who is no member of tenant {real_tenant}, workspace {real_workspace}",
                                 "that only members may read")
                    context(real_tenant, real_workspace, "", "internal_admin")
                    for table in readable:
                        if table.vendor_closed:
                            look(table, f"As internal_admin without a grant in tenant {real_tenant}, workspace {real_workspace}",
                                 "that vendor staff read only under a grant")
        # Someone else naming a real workspace (ids are not secrets): the tenant rule alone must hold.
        for real_workspace in real_workspaces:
            context(tenant, real_workspace, user)
            for table in readable:
                look(table, f"As a synthetic tenant naming workspace {real_workspace} of another tenant", "belonging to another tenant")
            context("", real_workspace, "", "internal_admin")
            for table in readable:
                if not table.admin_may_read:
                    look(table, f"As internal_admin without a tenant context, naming workspace {real_workspace}", "that vendor staff must not read")

        for platform_role in ("", "internal_admin"):
            context(tenant, workspace, user, platform_role)
            who = "as internal_admin" if platform_role else "as a tenant"
            for table in tables:
                if not table.can_insert:
                    continue
                # The own workspace, so only the tenant rule can refuse it.
                values = {table.key: other, **({table.workspace_key: workspace} if table.workspace_key else {})}
                problem = _insert_refused(conn, table.name, values)
                if problem:
                    findings.append(
                        Finding("probe_with_check", table.name, f"An INSERT into {table.name} {who} carrying another tenant's id was not refused by WITH CHECK: {problem}.")
                    )
                if table.workspace_key:
                    problem = _insert_refused(conn, table.name, {table.key: tenant, table.workspace_key: other})
                    if problem:
                        findings.append(
                            Finding("probe_with_check", table.name, f"An INSERT into {table.name} {who} carrying another workspace's id was not refused by WITH CHECK: {problem}.")
                        )
    finally:
        conn.rollback()
    # One finding per table and check is enough to name it; keep the first message.
    unique: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        unique.setdefault((finding.check, finding.subject), finding)
    return list(unique.values())


def run_checks(connection: sqlalchemy.Connection, *, revisions: Sequence[str] | None = None) -> Report:
    """Run every check on an open connection (as the app role) and report what is wrong."""
    # Catalog names resolve in pg_catalog first, and PostgreSQL deparses the policies against
    # this path, whatever search_path the role was given.
    connection.execute(text("select set_config('search_path', 'pg_catalog, public', true)"))
    steps = [
        (("server_version",), _check_server_version),
        (("role_superuser", "role_bypassrls"), _check_role_attributes),
        (("role_membership",), _check_role_membership),
        (("role_ownership",), _check_role_ownership),
        (("role_timeouts",), _check_timeouts),
        (("table_privileges",), _check_table_privileges),
        (("audit_append_only",), _check_audit_writes),
        (("rls_enabled", "force_rls", "policy_missing", "policy_using", "policy_with_check", "permissive_policies"), _check_row_level_security),
        (("view_security_invoker",), _check_views),
        (("definer_search_path",), _check_definer_functions),
        (("key_tenant_id",), _check_keys),
        (("tenant_key",), _check_tenant_keys),
        (("policy_expected", "policy_unexpected", "policy_canonical", "policy_setting"), _check_policies_canonical),
        (("function_canonical",), _check_functions),
        (("unlisted_object",), _check_reachable),
    ]
    findings: list[Finding] = []
    checks_run: list[str] = []
    for ids, check in steps:
        findings.extend(check(connection))
        checks_run.extend(ids)
    # Without a head to compare with, the check is not run, and checks_run says so.
    if revisions is not None:
        findings.extend(_check_migration_head(connection, revisions))
        checks_run.append("migration_head")
    return Report(findings=findings, checks_run=checks_run)


def run_doctor(app_url: str, *, revisions: Sequence[str] | None = None) -> Report:
    """Connect with the app's own URL, run the checks read-only, and dispose of the connection."""
    if app_url.startswith("postgresql://"):
        # The bare scheme would pick psycopg2; the project runs on psycopg 3 (as app.config does).
        app_url = "postgresql+psycopg://" + app_url.removeprefix("postgresql://")
    engine = create_engine(app_url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        # One read-only snapshot: the checks see a consistent catalog and cannot change anything.
        with engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True) as conn:
            try:
                report = run_checks(conn, revisions=revisions)
            finally:
                conn.rollback()
        # A role that bypasses row level security is failed already; probing its policies proves nothing.
        if any(f.check in ("role_superuser", "role_bypassrls") for f in report.findings):
            return report
        # The probe needs INSERT (to be refused), so its own read-write transaction, always rolled back.
        with engine.connect() as conn:
            probe = run_probe(conn)
        return Report(findings=[*report.findings, *probe], checks_run=[*report.checks_run, "probe_visibility", "probe_with_check"])
    finally:
        engine.dispose()
