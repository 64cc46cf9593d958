"""The data-key cache and the making of a tenant's first key: short-lived and bounded, never holding a
key the database does not, and one first key however many writers race for it."""

from __future__ import annotations

import secrets
import threading
import uuid

from app.credentials.models import SECRET
from app.crypto.datakeys import DataKeys
from app.db.session import DbContext, apply_context
from app.tenancy import service as tenancy_service
from app.tenancy.models import Workspace
from tests.credentials.helpers import Api, new_secret, reveal, rows


class CountingWrapper:
    """The real KEK, counting unwraps (each one is a Key Vault call in production)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.unwraps = 0

    def current_version(self) -> str:
        return self.inner.current_version()

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        return self.inner.wrap(dek)

    def unwrap(self, version: str, wrapped: bytes) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(version, wrapped)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def seal_in(sessions, keys: DataKeys, tenant_id: uuid.UUID, workspace_id: uuid.UUID, value: bytes) -> None:
    with sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=tenant_id, workspace_id=workspace_id))
        context = SECRET.context(tenant_id=tenant_id, workspace_id=workspace_id, row_id=uuid.uuid4())
        keys.seal(session, context, value)


class TestCache:
    def test_unwraps_once_per_ttl(self, api: Api, sessions, wrapper):
        created = api.add(secret=(secret := new_secret()))
        counting, clock = CountingWrapper(wrapper), Clock()
        keys = DataKeys(counting, ttl_seconds=300, clock=clock)
        for _ in range(5):
            assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"], keys=keys) == secret
        assert counting.unwraps == 1
        clock.now += 301
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"], keys=keys) == secret
        assert counting.unwraps == 2

    def test_bounded(self, api: Api, other_api: Api, sessions, wrapper):
        mine, theirs = api.add(), other_api.add()
        counting = CountingWrapper(wrapper)
        keys = DataKeys(counting, ttl_seconds=300, max_entries=1)
        for _ in range(2):
            reveal(sessions, api.world.tenant_id, api.world.workspaces[0], mine["id"], keys=keys)
            reveal(sessions, other_api.world.tenant_id, other_api.world.workspaces[0], theirs["id"], keys=keys)
        assert counting.unwraps == 4  # each evicted the other
        assert len(keys._cache) == 1

    def test_zero_ttl_caches_nothing(self, api: Api, sessions, wrapper):
        created = api.add()
        counting = CountingWrapper(wrapper)
        keys = DataKeys(counting, ttl_seconds=0)
        for _ in range(3):
            reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"], keys=keys)
        assert counting.unwraps == 3 and not keys._cache


class TestFirstKey:
    def test_survives_the_rollback_of_the_request_that_made_it(self, api: Api, sessions, superuser, wrapper):
        keys = DataKeys(wrapper)
        tenant, ws = api.world.tenant_id, api.world.workspaces[0]
        with sessions() as session:
            with session.begin():
                apply_context(session, DbContext(tenant_id=tenant, workspace_id=ws))
                keys.seal(session, SECRET.context(tenant_id=tenant, workspace_id=ws, row_id=uuid.uuid4()), b"x")
                session.rollback()
        # Committed on its own: the key that may be cached is the key the database holds.
        [row] = rows(superuser, "select version, state from tenant_data_keys where tenant_id = :t", t=tenant)
        assert (row["version"], row["state"]) == (1, "active")
        created = api.add(secret=(secret := new_secret()))
        assert reveal(sessions, tenant, ws, created["id"], keys=keys) == secret

    def test_with_a_tenant_made_in_the_same_transaction_it_is_not_cached(self, sessions, superuser, wrapper):
        keys = DataKeys(wrapper)
        slug = f"t-{secrets.token_hex(5)}"
        with sessions() as session:
            with session.begin():
                tenant = tenancy_service.bootstrap_tenant(session, name="Same transaction", slug=slug, admin_issuer="i", admin_subject="s")
                workspace = Workspace(tenant_id=tenant.id, id=uuid.uuid4(), name="w", slug="w")
                session.add(workspace)
                session.flush()
                apply_context(session, DbContext(tenant_id=tenant.id, workspace_id=workspace.id))
                keys.seal(session, SECRET.context(tenant_id=tenant.id, workspace_id=workspace.id, row_id=uuid.uuid4()), b"x")
                assert keys._cache == {}
                session.rollback()
        assert rows(superuser, "select 1 from tenant_data_keys where tenant_id = :t", t=tenant.id) == []

    def test_racing_first_writers_make_one_key(self, api: Api, sessions, superuser, wrapper):
        tenant, ws = api.world.tenant_id, api.world.workspaces[0]
        start = threading.Barrier(6)
        failures: list[str] = []

        def first_write() -> None:
            try:
                start.wait()
                seal_in(sessions, DataKeys(wrapper), tenant, ws, b"x")
            except Exception as exc:  # noqa: BLE001 - asserted below
                failures.append(repr(exc))

        threads = [threading.Thread(target=first_write) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert [r["version"] for r in rows(superuser, "select version from tenant_data_keys where tenant_id = :t", t=tenant)] == [1]
