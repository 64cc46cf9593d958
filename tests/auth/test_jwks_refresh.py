"""A hung IdP never holds requests: keys are refreshed off the request path.

Before: once the key cache expired, the refresh ran under the issuer's lock on the request path,
so every request of that issuer waited for the IdP's answer, up to the HTTP timeout, again and
again. Now a request keeps verifying with the cached keys while one background refresh runs; an
unknown `kid` waits for that refresh only briefly. The IdP here is really hung: its process is
stopped (SIGSTOP), so connections are accepted and never answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.auth.oidc import IssuerKeys
from app.config import IssuerConfig
from app.errors import Unauthenticated, WouldWait
from tests.support.idp import TestIdP

# Far longer than any bound the verifier may wait: a refresh on the request path would show.
IDP_HTTP_TIMEOUT = 60.0


@pytest.fixture
def own_idp(idp_factory: Callable[..., TestIdP]) -> TestIdP:
    return idp_factory()


@pytest.fixture
def keys(own_idp: TestIdP) -> Iterator[IssuerKeys]:
    http = httpx.Client(timeout=IDP_HTTP_TIMEOUT)
    yield IssuerKeys(IssuerConfig(issuer=own_idp.issuer, audience=own_idp.audience), http=http,
                     cache_seconds=0.2, cooldown_seconds=0.0)
    http.close()


def returns(call: Callable[[], Any]) -> dict[str, Any]:
    """Run `call` in a thread; fail (instead of waiting out the IdP) if it is still blocked after 10 s."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:  # the outcome is asserted by the caller
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the request is waiting for the hung IdP"
    return outcome


def test_cached_keys_keep_verifying_while_the_idp_hangs(keys: IssuerKeys, own_idp: TestIdP) -> None:
    first = keys.key_for(own_idp.kid)
    time.sleep(0.3)  # the cache has expired: the next use starts a refresh
    with own_idp.hung():
        for _ in range(3):
            assert returns(lambda: keys.key_for(own_idp.kid))["value"] == first


def test_an_unknown_kid_waits_only_briefly_for_a_hung_idp(keys: IssuerKeys, own_idp: TestIdP) -> None:
    keys.key_for(own_idp.kid)
    with own_idp.hung():
        outcome = returns(lambda: keys.key_for("a-kid-nobody-published"))
        assert isinstance(outcome.get("error"), Unauthenticated)
        # The known key still verifies meanwhile.
        assert returns(lambda: keys.key_for(own_idp.kid))["value"] is not None


def test_asked_not_to_wait_it_never_waits_for_a_hung_idp(keys: IssuerKeys, own_idp: TestIdP) -> None:
    # The rate limiter verifies a failing sign-in on the event loop (`wait=False`): while a fetch
    # is in flight an unknown kid raises WouldWait at once (then it is verified in a thread).
    keys.key_for(own_idp.kid)
    with own_idp.hung():
        # (Waiting, it would have ended in Unauthenticated after its 1 s bound.)
        assert isinstance(returns(lambda: keys.key_for("a-kid-nobody-published", wait=False)).get("error"), WouldWait)
        assert returns(lambda: keys.key_for(own_idp.kid, wait=False))["value"] is not None


def test_a_rotation_is_picked_up_once_the_idp_answers(keys: IssuerKeys, own_idp: TestIdP) -> None:
    keys.key_for(own_idp.kid)
    new_kid = own_idp.rotate_key()
    assert keys.key_for(new_kid) is not None  # an unknown kid: one refresh, waited for briefly
