"""Helpers for the credentials tests: callers on the credentials app, service-level access, superuser SQL."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from app.audit.service import RequestMeta
from app.auth.principal import Principal
from app.authz.roles import TenantRole
from app.authz.scope import WorkspaceScope
from app.crypto.datakeys import DataKeys
from app.db.session import DbContext, apply_context
from app.tenancy.models import TenantMembership
from tests.support.api import Caller, World


class Api:
    """A world's callers, pointed at the app with the credentials routes."""

    def __init__(self, client: TestClient, world: World) -> None:
        self.client = client
        self.world = world

    def as_(self, caller: Caller) -> Caller:
        return Caller(self.client, caller.subject, caller.token)

    @property
    def admin(self) -> Caller:
        return self.as_(self.world.admin)

    def url(self, ws: int = 0, credential_id: uuid.UUID | str | None = None) -> str:
        base = f"{self.world.ws(ws)}/credentials"
        return f"{base}/{credential_id}" if credential_id is not None else base

    def add(self, ws: int = 0, *, secret: str | None = None, label: str | None = None, provider: str = "openai",
            caller: Caller | None = None, **kw: Any) -> dict[str, Any]:
        body = {"provider": provider, "label": label or f"key-{secrets.token_hex(4)}", "secret": secret or new_secret()}
        r = (caller or self.admin).post(self.url(ws), json=body, **kw)
        assert r.status_code == 201, r.text
        return r.json()


def new_secret(prefix: str = "plnt") -> str:
    """A made-up key without any vendor prefix, so the log scrubber cannot be what hides it."""
    return f"{prefix}{secrets.token_hex(20)}"


def workspace_scope(session: Session, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> WorkspaceScope:
    """What a pipeline holds: a session in the workspace's context, on behalf of the person who
    started it (here the tenant's first customer_admin: the policies admit only a member or a
    customer_admin to a workspace's credentials)."""
    apply_context(session, DbContext(tenant_id=tenant_id))
    user_id = session.scalars(
        select(TenantMembership.user_id).where(TenantMembership.role == "customer_admin").order_by(TenantMembership.created_at)
    ).first()
    apply_context(session, DbContext(tenant_id=tenant_id, workspace_id=workspace_id, user_id=user_id))
    return WorkspaceScope(session=session, tenant_id=tenant_id, principal=Principal(issuer="pipeline", subject="pipeline"),
                          meta=RequestMeta(), user_id=user_id, tenant_role=TenantRole.customer_admin, workspace_id=workspace_id)


def reveal(sessions: sessionmaker[Session], tenant_id: uuid.UUID, workspace_id: uuid.UUID, credential_id: uuid.UUID | str,
           keys: DataKeys | None = None) -> str:
    from app.credentials.service import use_credential

    with sessions() as session, session.begin():
        with use_credential(workspace_scope(session, tenant_id, workspace_id), uuid.UUID(str(credential_id)), keys=keys) as value:
            return value


def rows(engine: Any, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings().all()]


def superuser_exec(engine: Any, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)
