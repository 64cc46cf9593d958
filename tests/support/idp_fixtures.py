"""Pytest fixtures for the test IdP; load with `pytest_plugins = ["tests.support.idp_fixtures"]`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.idp import TestIdP, start_idp

DEFAULT_AUDIENCE = "palisade-api"


@pytest.fixture(scope="session")
def idp_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TestIdP]]:
    """Start extra IdPs (own issuer, key and port): factory(audience=..., ttl=...); all stopped at session end."""
    started: list[TestIdP] = []

    def factory(*, audience: str = DEFAULT_AUDIENCE, ttl: int = 300) -> TestIdP:
        idp = start_idp(audience=audience, workdir=tmp_path_factory.mktemp("idp"), ttl=ttl)
        started.append(idp)
        return idp

    yield factory
    for idp in started:
        idp.stop()


@pytest.fixture(scope="session")
def idp(idp_factory: Callable[..., TestIdP]) -> TestIdP:
    """The session's IdP for audience "palisade-api"; rotate keys on a factory IdP, not this one.

    Its tokens live an hour: session-scoped callers keep theirs for the whole run.
    """
    return idp_factory(audience=DEFAULT_AUDIENCE, ttl=3600)
