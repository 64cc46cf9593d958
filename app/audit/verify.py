"""`palisade audit verify`: recompute every chain and name the first break."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.audit import repository as repo
from app.audit.chain import PLATFORM_TENANT, Anchor, Break, verify_chain
from app.auth.principal import INTERNAL_ADMIN
from app.db.session import DbContext, apply_context
from app.tenancy import repository as tenancy_repo


@dataclass(frozen=True)
class ChainResult:
    tenant_id: uuid.UUID
    events: int
    broken: Break | None
    anchored: Anchor | None = None  # the latest checkpoint the chain was checked against


def all_chains(sessions: sessionmaker[Session]) -> list[uuid.UUID]:
    """The platform chain and every tenant's (taken from the tenants table, not the heads)."""
    with sessions() as session, session.begin():
        apply_context(session, DbContext(platform_role=INTERNAL_ADMIN))
        return [PLATFORM_TENANT, *(t.id for t in tenancy_repo.list_tenants(session))]


def verify_tenant(sessions: sessionmaker[Session], tenant_id: uuid.UUID, anchors: Sequence[Anchor] = ()) -> ChainResult:
    with sessions() as session, session.begin():
        # One snapshot for the head and the events: a writer commits both or neither.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        apply_context(session, DbContext(tenant_id=tenant_id))
        head = repo.head(session, tenant_id)
        count, broken = verify_chain(tenant_id, repo.chain_links(session, tenant_id), head, anchors)
    return ChainResult(tenant_id, count, broken, anchors[-1] if anchors and broken is None else None)


def verify(sessions: sessionmaker[Session], tenant_ids: Sequence[uuid.UUID] | None = None,
           checkpoints: Mapping[uuid.UUID, Sequence[Anchor]] | None = None) -> list[ChainResult]:
    """Every chain (or those given); with `checkpoints`, each also against its own (sorted by seq).

    Checking every chain, the chains that have checkpoints are checked even if their tenant is no
    longer listed: a deleted tenants row does not hide its trail.
    """
    checkpoints = checkpoints or {}
    chains = list(tenant_ids or all_chains(sessions))
    if not tenant_ids:
        chains += sorted(set(checkpoints) - set(chains))
    return [verify_tenant(sessions, t, checkpoints.get(t, ())) for t in chains]
