"""The checks behind `palisade doctor`: prove, as the app role, that the database enforces the data rules.

Everything here reads the catalogs (pg_class, pg_namespace, pg_attribute, pg_policy, pg_proc,
pg_constraint, pg_index, pg_roles, has_table_privilege) through the role the app runs with, because
what matters is what *that* role can do; nothing here writes or runs DDL. Each broken rule becomes
a `Finding` naming the object, so an operator can fix it without reading SQL.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy
from sqlalchemy import create_engine, pool, text


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
    "table_privileges",
    "rls_enabled",
    "force_rls",
    "policy_missing",
    "policy_using",
    "policy_with_check",
    "permissive_policies",
    "view_security_invoker",
    "definer_search_path",
    "key_tenant_id",
    "migration_head",
)

# The first minor of each major with the RLS fixes (CVE-2024-10976, CVE-2024-10978, CVE-2025-8713).
# Majors after 17 were released with them; 15 is the floor anyway (security_invoker views need it).
MINIMUM_MINOR = {15: 14, 16: 10, 17: 6}


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


def _check_migration_head(conn: sqlalchemy.Connection, expected_head: str) -> list[Finding]:
    exists, readable = conn.execute(_SQL_ALEMBIC_READABLE).one()
    if not exists:
        return [Finding("migration_head", "alembic_version", "The database has no alembic_version table; run palisade migrate.")]
    if not readable:
        return [Finding("migration_head", "alembic_version", "The app role cannot read alembic_version, so the schema revision is unknown.")]
    current = conn.execute(_SQL_ALEMBIC_VERSION).scalars().all()
    if current != [expected_head]:
        at = ", ".join(current) or "no revision"
        return [Finding("migration_head", "alembic_version", f"The schema is at {at}, not the migrations' head {expected_head}; run palisade migrate.")]
    return []


def run_checks(connection: sqlalchemy.Connection, *, expected_head: str | None = None) -> Report:
    """Run every check on an open connection (as the app role) and report what is wrong."""
    steps = [
        (("server_version",), _check_server_version),
        (("role_superuser", "role_bypassrls"), _check_role_attributes),
        (("role_membership",), _check_role_membership),
        (("role_ownership",), _check_role_ownership),
        (("table_privileges",), _check_table_privileges),
        (("rls_enabled", "force_rls", "policy_missing", "policy_using", "policy_with_check", "permissive_policies"), _check_row_level_security),
        (("view_security_invoker",), _check_views),
        (("definer_search_path",), _check_definer_functions),
        (("key_tenant_id",), _check_keys),
    ]
    findings: list[Finding] = []
    checks_run: list[str] = []
    for ids, check in steps:
        findings.extend(check(connection))
        checks_run.extend(ids)
    # Without a head to compare with, the check is not run, and checks_run says so.
    if expected_head is not None:
        findings.extend(_check_migration_head(connection, expected_head))
        checks_run.append("migration_head")
    return Report(findings=findings, checks_run=checks_run)


def run_doctor(app_url: str, *, expected_head: str | None = None) -> Report:
    """Connect with the app's own URL, run the checks read-only, and dispose of the connection."""
    if app_url.startswith("postgresql://"):
        # The bare scheme would pick psycopg2; the project runs on psycopg 3 (as app.config does).
        app_url = "postgresql+psycopg://" + app_url.removeprefix("postgresql://")
    engine = create_engine(app_url, poolclass=pool.NullPool)
    try:
        # One read-only snapshot: the checks see a consistent catalog and cannot change anything.
        with engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True) as conn:
            try:
                return run_checks(conn, expected_head=expected_head)
            finally:
                conn.rollback()
    finally:
        engine.dispose()
