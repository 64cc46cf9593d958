"""The `palisade` command: migrate, serve, doctor, tenant create, dev, dev-token."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

from app.config import DEV_ISSUER, MIGRATION_SECRETS, Mode, Settings, get_settings, load_settings

# Tracebacks never print local variables: they may hold secrets.
cli = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Palisade: multi-tenant AI workspace appliance.")
tenant_cli = typer.Typer(no_args_is_help=True, help="Tenants (operator commands).")
cli.add_typer(tenant_cli, name="tenant")
audit_cli = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
cli.add_typer(audit_cli, name="audit")

DEV_DIR = Path(".palisade")
DEV_DB, DEV_ADMIN_ROLE, DEV_APP_ROLE = "palisade", "palisade_admin", "palisade_app"
DEMO_SLUG, DEMO_ADMIN_SUBJECT = "demo", "demo-admin"


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _settings(secrets: tuple[str, ...] | None = None) -> Settings:
    """The app's settings, or with `secrets` a one-off load reading exactly those secrets."""
    from app.crypto.secrets import SecretError
    from app.db import entra

    try:
        settings = get_settings() if secrets is None else load_settings(secrets=secrets)
    except (ValueError, SecretError) as exc:  # these name settings and secrets, never their values
        raise _fail(f"configuration error: {exc}") from None
    entra.configure(settings)
    return settings


@cli.command()
def migrate(
    list_pending: Annotated[bool, typer.Option("--list-pending", help="Only list the migrations an upgrade would apply; change nothing.")] = False,
    check: Annotated[bool, typer.Option("--check", help="List them, and exit 2 if one needs the running release stopped first; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list-pending or --check: the plan as one JSON object.")] = False,
) -> None:
    """Apply database migrations with the admin URL (creates the app role if missing, sets its password).

    With --list-pending or --check, only report what would be applied (exit 3: the database is at
    a revision this release does not know, so a newer release migrated it).
    """
    from sqlalchemy.engine import make_url

    from app.db.migrate import create_entra_app_role, set_app_password, upgrade

    if list_pending or check:
        _report_migration_plan(fail_on_stop=check, as_json=as_json)
        return
    settings = _settings(MIGRATION_SECRETS)
    try:
        settings.require("admin_database_url", "database_url")
        if settings.database_auth == "entra":
            settings.require("database_app_principal_id")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if settings.database_auth == "entra":
        create_entra_app_role(admin_url=settings.admin_database_url, app_role=settings.app_role,
                              object_id=str(settings.database_app_principal_id))
    upgrade(admin_url=settings.admin_database_url, app_role=settings.app_role)
    password = make_url(settings.database_url).password
    if password:  # the app role signs in with what its URL says (SCRAM verifier, never the plaintext)
        set_app_password(admin_url=settings.admin_database_url, app_role=settings.app_role, password=str(password))
    typer.echo("migrations applied")


def _report_migration_plan(*, fail_on_stop: bool, as_json: bool) -> None:
    import dataclasses
    import json

    from app.db.migrate import UnknownRevision, plan

    settings = _settings(("admin_database_url",))
    try:
        settings.require("admin_database_url")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        found = plan(admin_url=settings.admin_database_url)
    except UnknownRevision as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=3) from None
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(found)))
    else:
        typer.echo(f"database at {', '.join(found.current) or 'an empty schema'}; this release's head is {found.head}; "
                   f"{len(found.pending)} migration(s) to apply")
        for m in found.pending:
            typer.echo(f"  {m.revision}: {m.doc}" + (f" [NEEDS A STOP: {m.needs_stop}]" if m.needs_stop else ""))
    if fail_on_stop and found.stops:
        typer.secho(f"the running release must be stopped before {', '.join(m.revision for m in found.stops)} "
                    "(a contract step it cannot run against); a rolling upgrade would break it", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)


@cli.command()
def doctor() -> None:
    """Check, as the app role, that the database enforces tenant isolation; exit 1 if not."""
    settings = _settings()
    try:
        settings.require("database_url")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    report = _doctor(settings.database_url)
    for finding in report.findings:
        typer.secho(f"FAIL {finding.check}: {finding.subject}: {finding.message}", fg=typer.colors.RED, err=True)
    if not report.ok:
        raise typer.Exit(code=1)
    typer.echo(f"doctor: all {len(report.checks_run)} checks passed")
    if settings.turnstile == "off":
        typer.echo("note: PALISADE_TURNSTILE=off: public routes (invitation acceptance) get no human check, "
                   "only their rate limits")


def _doctor(app_url: str):
    from app.db.doctor import run_doctor
    from app.db.migrate import release_revisions

    return run_doctor(app_url, revisions=release_revisions())


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Listen address; behind a proxy keep it on localhost.")] = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
) -> None:
    """Run the API server (refuses to start in production mode when doctor fails)."""
    import uvicorn

    from app.edge.serving import server_options

    settings = _settings()
    try:
        settings.check_can_serve()  # refused here once, not by a traceback in every worker
    except ValueError as exc:
        raise _fail(f"configuration error: {exc}") from None
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, **server_options(settings))


@tenant_cli.command("create")
def tenant_create(
    name: Annotated[str, typer.Option(help="Display name.")],
    slug: Annotated[str, typer.Option(help="Unique short name: lower-case letters, digits, dashes.")],
    admin_issuer: Annotated[str, typer.Option(help="Issuer of the first customer_admin's tokens.")],
    admin_subject: Annotated[str, typer.Option(help="Subject (`sub`) of the first customer_admin.")],
) -> None:
    """Create a tenant with its first customer_admin (as the app role, audited)."""
    from pydantic import TypeAdapter, ValidationError

    from app.schemas import Name, Slug

    try:
        TypeAdapter(Name).validate_python(name)
        TypeAdapter(Slug).validate_python(slug)
    except ValidationError:
        raise _fail("invalid name or slug (slug: lower-case letters, digits and dashes, at most 63)") from None
    settings = _settings()
    tenant_id = _create_tenant(settings.database_url, name=name, slug=slug, issuer=admin_issuer, subject=admin_subject)
    typer.echo(str(tenant_id))


def _create_tenant(app_url: str, *, name: str, slug: str, issuer: str, subject: str):
    from app.db.session import make_engine, make_session_factory
    from app.tenancy import service

    engine = make_engine(app_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session, session.begin():
            return service.bootstrap_tenant(session, name=name, slug=slug, admin_issuer=issuer, admin_subject=subject).id
    finally:
        engine.dispose()


@audit_cli.command("verify")
def audit_verify(
    tenant: Annotated[list[str], typer.Option(help="Only this tenant's chain (repeatable); default: every chain.")] = [],  # noqa: B006
) -> None:
    """Recompute the hash chains; name the first altered, missing or reordered event; exit 1 on any break."""

    from app.audit.anchor import CheckpointError, read_checkpoints, sink_from_settings, verifier_keys
    from app.audit.verify import verify
    from app.crypto.secrets import SecretError
    from app.db.session import make_engine, make_session_factory

    settings = _settings()
    tenant_ids = _tenant_ids(tenant)
    checkpoints, bad_lines = None, []
    try:
        sink = sink_from_settings(settings)
        if sink is not None:
            checkpoints, bad_lines = read_checkpoints(sink, verifier_keys(settings))
    except (CheckpointError, SecretError) as exc:
        raise _fail(f"checkpoints: {exc}") from None
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        results = verify(make_session_factory(engine), tenant_ids or None, checkpoints)
    finally:
        engine.dispose()
    broken = [r for r in results if r.broken]
    for r in results:
        if r.broken:
            typer.secho(f"BROKEN {r.tenant_id}: {r.broken.kind}: {r.broken.message}", fg=typer.colors.RED, err=True)
        elif r.anchored is not None:
            typer.echo(f"ok {r.tenant_id}: {r.events} events, anchored up to seq {r.anchored.seq}"
                       f" (checkpoint of {r.anchored.at.isoformat(timespec='seconds')})")
        else:
            typer.echo(f"ok {r.tenant_id}: {r.events} events" + (", not anchored (no checkpoint)" if sink is not None else ""))
    for bad in bad_lines:  # a line no known key signed: someone else wrote to the sink
        typer.secho(f"BROKEN checkpoint {bad.source}:{bad.line}: {bad.reason}", fg=typer.colors.RED, err=True)
    if broken:
        _alert_chain_broken(settings, broken)
    if broken or bad_lines:
        raise typer.Exit(code=1)


@audit_cli.command("checkpoint")
def audit_checkpoint(
    tenant: Annotated[list[str], typer.Option(help="Only this tenant's chain (repeatable); default: every chain.")] = [],  # noqa: B006
) -> None:
    """Sign each chain's head (seq, hash, time) and append it to the checkpoint sink, now."""

    from app.audit.anchor import CheckpointError, signer_from_settings, sink_from_settings, take_checkpoints
    from app.crypto.secrets import SecretError
    from app.db.session import make_engine, make_session_factory

    settings = _settings()
    tenant_ids = _tenant_ids(tenant)
    try:
        sink, signer = sink_from_settings(settings), signer_from_settings(settings)
    except (CheckpointError, SecretError) as exc:
        raise _fail(f"checkpoints: {exc}") from None
    if sink is None or signer is None:
        raise _fail("checkpoints need PALISADE_AUDIT_CHECKPOINT_SINK and PALISADE_AUDIT_CHECKPOINT_KEY_FILE (or _KEY_URL)")
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        taken = take_checkpoints(make_session_factory(engine), signer, sink, tenant_ids or None)
    except CheckpointError as exc:
        raise _fail(f"checkpoints: {exc}") from None
    finally:
        engine.dispose()
    for c in taken:
        typer.echo(f"checkpoint {c.tenant_id}: seq {c.seq} {c.hash} (key {c.key})")


def _tenant_ids(values: list[str]) -> list[uuid.UUID]:
    """The `--tenant` options as ids (an empty list: every chain)."""
    try:
        return [uuid.UUID(t) for t in values]
    except ValueError:
        raise _fail("--tenant takes a tenant id (UUID)") from None


def _alert_chain_broken(settings: Settings, broken) -> None:
    """Tell the alert webhook, when one is configured; verification fails either way."""
    if not settings.alert_webhook_url:
        return
    from app.alerts import AUDIT_CHAIN_BROKEN, AlertEngine
    from app.db.session import make_engine

    db = make_engine(settings.database_url, pool_size=1)
    engine = AlertEngine(db, settings, retry_base_delay=0.5).start()
    try:
        for result in broken:
            engine.observe(AUDIT_CHAIN_BROKEN, str(result.tenant_id),
                           details={"kind": result.broken.kind, "seq": result.broken.seq})
    finally:
        engine.stop(timeout=30)
        db.dispose()


keys_cli = typer.Typer(no_args_is_help=True, help="Data keys: re-wrapping, re-encryption, crypto-shredding.")
cli.add_typer(keys_cli, name="keys")


def _tenant_ids(values: list[str]) -> list[uuid.UUID] | None:
    try:
        return [uuid.UUID(v) for v in values] or None
    except ValueError:
        raise _fail("--tenant takes a tenant id (UUID)") from None


def _key_wrapper(settings):
    """The configured key-encryption key; exit 1 when none is configured."""
    from app.crypto.kek import key_wrapper_from_settings

    wrapper = key_wrapper_from_settings(settings)
    if wrapper is None:
        raise _fail("no key-encryption key configured (PALISADE_KEK_DIR or PALISADE_KEK_KEY_URL)")
    return wrapper


@keys_cli.command("rotate")
def keys_rotate(
    tenant: Annotated[list[str], typer.Option(help="Only this tenant (repeatable); default: every tenant.")] = [],  # noqa: B006
    new_version: Annotated[bool, typer.Option(help="Local key files: first add a new KEK version.")] = True,
    rewrap: Annotated[bool, typer.Option(help="Re-wrap now; --no-rewrap only adds the version (copy it to every "
                                              "host, then run this with --no-new-version).")] = True,
) -> None:
    """Re-wrap every tenant data key under the KEK's newest version; no downtime, old versions keep working.

    With local key files this first adds a new KEK version; with Key Vault, rotate the key in the
    vault (or let its rotation policy do it), then run this.
    """
    from app.crypto.datakeys import rewrap_all
    from app.crypto.kek import LocalKeyWrapper
    from app.db.session import make_engine, make_session_factory

    settings = _settings()
    if new_version and settings.kek_provider == "local" and settings.kek_dir:
        typer.echo(f"new local KEK version {LocalKeyWrapper.create_version(settings.kek_dir)}")
    if not rewrap:
        return
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        done = rewrap_all(make_session_factory(engine), _key_wrapper(settings), tenant_ids=_tenant_ids(tenant))
    finally:
        engine.dispose()
    for result in done:
        typer.echo(f"rewrapped {result.tenant_id}: data key versions {result.dek_versions} -> KEK {result.kek_version}")
    typer.echo(f"{len(done)} tenant(s) re-wrapped; older KEK versions may be retired once every host has run this")


@keys_cli.command("reencrypt")
def keys_reencrypt(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction.")] = 100,
    tenant: Annotated[list[str], typer.Option(help="Only this tenant (repeatable); default: every tenant.")] = [],  # noqa: B006
) -> None:
    """New data key version per tenant, rows re-encrypted in batches; rerun continues an interrupted run."""
    from app.crypto.datakeys import reencrypt
    from app.db.session import make_engine, make_session_factory

    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        rotations = reencrypt(make_session_factory(engine), _key_wrapper(settings), batch_size=batch_size,
                              tenant_ids=_tenant_ids(tenant),
                              on_batch=lambda b: typer.echo(f"  {b.tenant_id} {b.table}: {b.rows} row(s) -> v{b.dek_version}"))
    finally:
        engine.dispose()
    for r in rotations:
        typer.echo(f"reencrypted {r.tenant_id}: {r.reencrypted} row(s) on data key v{r.dek_version}; retired {r.retired}")


@keys_cli.command("destroy")
def keys_destroy(
    tenant: Annotated[str, typer.Option(help="The tenant whose data keys are destroyed.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: every ciphertext of the tenant becomes unrecoverable.")] = False,
) -> None:
    """Crypto-shred a tenant: destroy its data keys, making all its encrypted values unrecoverable."""
    from app.crypto.datakeys import destroy_tenant_keys
    from app.db.session import make_engine, make_session_factory

    (tenant_id,) = _tenant_ids([tenant]) or [None]
    if not yes:
        raise _fail("refusing without --yes: this cannot be undone")
    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session, session.begin():
            versions = destroy_tenant_keys(session, tenant_id)
    finally:
        engine.dispose()
    typer.echo(f"destroyed {tenant_id}: data key versions {versions}")


# --- development quick start ---------------------------------------------------------------------


@cli.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="Where the private cluster and dev keys live.")] = DEV_DIR,
    port: int = 8000,
    pg_port: Annotated[int, typer.Option(help="Port number of the private cluster's Unix socket.")] = 5433,
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the API after setting up.")] = True,
) -> None:
    """Quick start: private PostgreSQL, migrations, a demo tenant, a dev token, and the API."""
    from app.db.cluster import LocalCluster

    if get_settings().mode is Mode.production:
        raise _fail("palisade dev is a development command; PALISADE_MODE is production")
    data_dir = data_dir.resolve()
    cluster = LocalCluster(data_dir / "pgdata", port=pg_port)
    typer.echo(f"starting private PostgreSQL in {data_dir / 'pgdata'} (Unix socket only)")
    cluster.start()
    try:
        _dev(cluster, data_dir=data_dir, port=port, serve_api=serve_api)
    finally:
        cluster.stop()


def _dev(cluster, *, data_dir: Path, port: int, serve_api: bool) -> None:
    import uvicorn

    from app.auth import dev_issuer
    from app.main import create_app

    admin_url = cluster.url_for(user=DEV_ADMIN_ROLE, database=DEV_DB)
    app_url = cluster.url_for(user=DEV_APP_ROLE, database=DEV_DB)
    _ensure_dev_database(cluster.superuser_url)

    from app.db.migrate import upgrade

    upgrade(admin_url=admin_url, app_role=DEV_APP_ROLE)
    key_file = data_dir / "dev-issuer.pem"
    key = dev_issuer.load_or_create_key(key_file)
    tenant_id = _ensure_demo_tenant(cluster.superuser_url, app_url)
    report = _doctor(app_url)
    if not report.ok:
        raise _fail("doctor failed on the dev database: " + "; ".join(f.subject for f in report.findings))
    token = dev_issuer.mint_token(key, subject=DEMO_ADMIN_SUBJECT)
    typer.echo(
        f"\nPalisade (development) on http://127.0.0.1:{port}  (OpenAPI: /api/v1/docs)\n"
        f"demo tenant: {tenant_id}  (slug '{DEMO_SLUG}', two workspaces, user '{DEMO_ADMIN_SUBJECT}')\n"
        f"bearer token for {DEMO_ADMIN_SUBJECT} (12 h; more with `palisade dev-token`):\n\n{token}\n\n"
        f"try: curl -H 'Authorization: Bearer <token>' http://127.0.0.1:{port}/api/v1/tenants/{tenant_id}/workspaces\n"
    )
    if serve_api:
        settings = Settings(_env_file=None, mode=Mode.development, database_url=app_url, dev_issuer_key_file=key_file,
                            log_json=False)
        from app.edge.serving import server_options

        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, **server_options(settings))


def _ensure_dev_database(superuser_url: str) -> None:
    from sqlalchemy import create_engine, pool, text

    engine = create_engine(superuser_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT", hide_parameters=True)
    with engine.connect() as conn:
        if not conn.scalar(text("select 1 from pg_roles where rolname = :r"), {"r": DEV_ADMIN_ROLE}):
            # Like a managed service's admin: owns the database, may create roles, is no superuser.
            conn.execute(text(f"CREATE ROLE {DEV_ADMIN_ROLE} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS"))
        if not conn.scalar(text("select 1 from pg_database where datname = :d"), {"d": DEV_DB}):
            conn.execute(text(f"CREATE DATABASE {DEV_DB} OWNER {DEV_ADMIN_ROLE}"))
    engine.dispose()


def _ensure_demo_tenant(superuser_url: str, app_url: str):
    from sqlalchemy import create_engine, pool, text
    from sqlalchemy.engine import make_url

    from app.audit.service import RequestMeta
    from app.auth.principal import Principal
    from app.authz.roles import TenantRole
    from app.authz.scope import TenantScope
    from app.db.session import DbContext, apply_context, make_engine, make_session_factory
    from app.tenancy import repository as repo
    from app.tenancy import service

    engine = make_engine(app_url, pool_size=1)
    sessions = make_session_factory(engine)
    try:
        su = create_engine(make_url(superuser_url).set(database=DEV_DB), poolclass=pool.NullPool, hide_parameters=True)
        with su.connect() as conn:  # the superuser sees past RLS: is there a demo tenant at all?
            existing = conn.scalar(text("select id from tenants where slug = :s"), {"s": DEMO_SLUG})
        su.dispose()
        if existing is not None:
            return existing
        with sessions() as session, session.begin():
            tenant = service.bootstrap_tenant(session, name="Demo Agency", slug=DEMO_SLUG,
                                              admin_issuer=DEV_ISSUER, admin_subject=DEMO_ADMIN_SUBJECT)
            found = repo.find_member(session, issuer=DEV_ISSUER, subject=DEMO_ADMIN_SUBJECT)
            assert found is not None
            apply_context(session, DbContext(tenant_id=tenant.id, user_id=found[0].id))
            scope = TenantScope(session=session, tenant_id=tenant.id, principal=Principal(DEV_ISSUER, DEMO_ADMIN_SUBJECT),
                                meta=RequestMeta(), user_id=found[0].id, tenant_role=TenantRole.customer_admin)
            for name, slug in (("Brand A", "brand-a"), ("Brand B", "brand-b")):
                service.create_workspace(scope, name=name, slug=slug)
            return tenant.id
    finally:
        engine.dispose()


@cli.command("dev-token")
def dev_token(
    subject: str = DEMO_ADMIN_SUBJECT,
    role: Annotated[list[str], typer.Option(help="Platform role claim, e.g. internal_admin.")] = [],  # noqa: B006
    ttl: int = 12 * 3600,
    data_dir: Path = DEV_DIR,
) -> None:
    """Print a token from the development-only issuer (for `palisade dev`)."""
    from app.auth import dev_issuer

    key_file = data_dir.resolve() / "dev-issuer.pem"
    if not key_file.exists():
        raise _fail(f"no dev issuer key at {key_file}: run `palisade dev` first")
    typer.echo(dev_issuer.mint_token(dev_issuer.load_or_create_key(key_file), subject=subject, roles=role, ttl=ttl))


def main() -> None:
    cli(prog_name="palisade")


if __name__ == "__main__":
    sys.exit(main())
