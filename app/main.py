"""`create_app()`: the FastAPI application."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from sqlalchemy import text

from app import alerts, idempotency, openapi, problems
from app.audit import service as audit
from app.audit.buffered import AuditBuffer
from app.audit.router import router as audit_router
from app.auth.dependencies import authenticate, get_principal
from app.auth.oidc import TokenVerifier
from app.authz import denials
from app.config import Mode, Settings, get_settings
from app.credentials.router import router as credentials_router
from app.crypto import datakeys
from app.crypto.kek import key_wrapper_from_settings
from app.db import entra
from app.db.session import make_engine, make_session_factory
from app.edge import bodies, ratelimit
from app.edge import http as edge_http
from app.edge.turnstile import TurnstileVerifier
from app.knowledge.router import router as knowledge_router
from app.observability import http as observability_http
from app.observability.logging import configure_logging
from app.observability.sentry import init_sentry
from app.observability.tracing import (
    configure_tracing,
    instrument_app,
    instrument_engine,
    instrument_httpx_client,
    untraced,
)
from app.tenancy.router import router as tenancy_router
from app.uploads.router import router as uploads_router

log = logging.getLogger(__name__)


class StartupRefused(RuntimeError):
    """The app will not serve: production mode and `palisade doctor` found a problem."""


def _verifier(settings: Settings) -> TokenVerifier:
    static = {}
    if settings.dev_issuer_key_file is not None:
        from app.auth import dev_issuer

        key = dev_issuer.load_or_create_key(settings.dev_issuer_key_file)
        static[dev_issuer.DEV_ISSUER_CONFIG.issuer] = (dev_issuer.DEV_ISSUER_CONFIG, dev_issuer.public_jwks(key))
    return TokenVerifier(settings, static_issuers=static)


def _refuse_unsafe_database(settings: Settings) -> None:
    from app.db.doctor import run_doctor
    from app.db.migrate import release_revisions

    report = run_doctor(settings.database_url, revisions=release_revisions())
    if not report.ok:
        for finding in report.findings:
            log.error("doctor_finding", extra={"check": finding.check, "subject": finding.subject})
        raise StartupRefused("palisade doctor failed: " + "; ".join(f"{f.subject}: {f.message}" for f in report.findings))


def _checkpointer(settings: Settings, sessions: Any) -> Any:
    """The audit checkpointer, when a sink and a key are configured; a bad key or sink stops startup."""
    from app.audit.anchor import Checkpointer, signer_from_settings, sink_from_settings

    sink = sink_from_settings(settings)
    if sink is None:
        return None
    signer = signer_from_settings(settings)
    if signer is None:
        raise StartupRefused("PALISADE_AUDIT_CHECKPOINT_SINK is set but neither PALISADE_AUDIT_CHECKPOINT_KEY_FILE nor PALISADE_AUDIT_CHECKPOINT_KEY_URL is")
    checkpointer = Checkpointer(sessions, signer, sink, interval=settings.audit_checkpoint_seconds)
    return checkpointer.start() if settings.audit_checkpoint_seconds > 0 else checkpointer


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.require("database_url")
    entra.configure(settings)  # Entra ID sign-in to PostgreSQL, when the settings ask for it
    settings.check_can_serve()  # production: a Turnstile secret and the host names it answers for

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.mode is Mode.production:
            _refuse_unsafe_database(settings)
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size, pool_timeout=settings.db_pool_timeout_seconds)
        instrument_engine(engine)
        app.state.engine = engine
        app.state.sessions = make_session_factory(engine)
        audit.install_log_hooks(app.state.sessions)
        checkpointer = _checkpointer(settings, app.state.sessions)  # first: a bad key or sink stops startup here
        app.state.audit_buffer = AuditBuffer(app.state.sessions, interval=settings.audit_buffer_flush_seconds).start()
        wrapper = key_wrapper_from_settings(settings)
        data_keys = datakeys.DataKeys(wrapper, ttl_seconds=settings.data_key_cache_seconds,
                                      max_entries=settings.data_key_cache_size) if wrapper else None
        if data_keys is not None:
            datakeys.install(data_keys)
        app.state.verifier = _verifier(settings)
        instrument_httpx_client(app.state.verifier.http)
        app.state.turnstile = TurnstileVerifier(settings)
        if settings.turnstile == "off":
            log.warning("turnstile_off", extra={"public_routes": "no human check, rate limits only"})
        alert_engine = alerts.AlertEngine(engine, settings).start()
        alerts.install(alert_engine)
        # Issue 9: move everything alive after startup (modules, routes, schemas, the engine) out of
        # the GC's generations into its permanent one, so full collections under load stop walking
        # them (they took 100+ ms each); collections then see only what requests allocate.
        gc.freeze()
        try:
            yield
        finally:
            # Process-wide hooks: uninstall only what this app installed.
            if alerts.current() is alert_engine:
                alerts.install(None)
            if data_keys is not None and datakeys.current() is data_keys:
                datakeys.install(None)
            app.state.audit_buffer.stop()  # before the alert engine: its events feed alerts
            if checkpointer is not None:
                checkpointer.stop()  # after the last audit writes: they are anchored too
            alert_engine.stop(timeout=5)
            app.state.turnstile.close()
            app.state.verifier.close()
            engine.dispose()

    app = FastAPI(
        title="Palisade",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        # The interactive page loads Swagger UI from a CDN: development only.
        docs_url="/api/v1/docs" if settings.mode is Mode.development else None,
        redoc_url=None,
        # No "other slash form" redirect: Starlette builds its Location from the request's Host
        # header (issue 16). `/api/v1/tenants/` is a 404 problem like any unknown path.
        redirect_slashes=False,
    )
    app.state.settings = settings
    configure_logging(json=settings.log_json, level=settings.log_level)
    if settings.sentry_dsn:
        init_sentry(dsn=settings.sentry_dsn, environment=settings.sentry_environment,
                    traces_sample_rate=settings.sentry_traces_sample_rate, release=f"palisade@{app.version}")
    configure_tracing()  # once per process; exports only when OTEL_* settings ask for it
    instrument_app(app)
    problems.install(app, on_busy=denials.record_database_busy)  # audited, buffered (app/audit/buffered.py)
    denials.install(app)

    # The correlation id and the 5xx counter: the outermost user middlewares (app/observability/http.py).
    observability_http.install(app)

    # Public on purpose: probes carry no token and reveal nothing.
    @app.get("/health/live", tags=["health"], include_in_schema=False)
    def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"], include_in_schema=False)
    def ready(request: Request) -> Response:
        try:
            with untraced(), request.app.state.engine.connect() as conn:
                conn.execute(text("select 1"))
        except Exception:
            return problems.problem(503, detail="The database is not reachable.")
        return Response(content='{"status":"ok"}', media_type="application/json")

    # Authenticated by default: every API route carries the bearer-token dependency.
    # The rate limit runs after authentication has named the caller (it keys by user, else by address).
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(get_principal), Depends(ratelimit.limit)])
    api.include_router(tenancy_router)
    api.include_router(audit_router)
    api.include_router(credentials_router)
    api.include_router(knowledge_router)
    api.include_router(uploads_router)
    app.include_router(api)
    openapi.install(app)  # error responses as the routes really answer them (app/openapi.py)
    edge_http.install(app, settings)
    idempotency.install(app)
    ratelimit.install(app, settings, authenticate=authenticate)
    bodies.install(app)  # innermost: a body no route could accept is refused before it is parsed
    return app
