"""`palisade audit verify`: recompute every chain and name the first break."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.audit import repository as repo
from app.audit.chain import PLATFORM_TENANT, Break, verify_chain
from app.auth.principal import INTERNAL_ADMIN
from app.db.session import DbContext, apply_context
from app.tenancy import repository as tenancy_repo


@dataclass(frozen=True)
class ChainResult:
    tenant_id: uuid.UUID
    events: int
    broken: Break | None


def all_chains(sessions: sessionmaker[Session]) -> list[uuid.UUID]:
    """The platform chain and every tenant's (taken from the tenants table, not the heads)."""
    with sessions() as session, session.begin():
        apply_context(session, DbContext(platform_role=INTERNAL_ADMIN))
        return [PLATFORM_TENANT, *(t.id for t in tenancy_repo.list_tenants(session))]


def verify_tenant(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> ChainResult:
    with sessions() as session, session.begin():
        # One snapshot for the head and the events: a writer commits both or neither.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        apply_context(session, DbContext(tenant_id=tenant_id))
        head = repo.head(session, tenant_id)
        count, broken = verify_chain(tenant_id, repo.chain_links(session, tenant_id), head)
    return ChainResult(tenant_id, count, broken)


def verify(sessions: sessionmaker[Session], tenant_ids: Sequence[uuid.UUID] | None = None) -> list[ChainResult]:
    return [verify_tenant(sessions, t) for t in (tenant_ids or all_chains(sessions))]
