"""Vendor staff (`internal_admin`) come only from the vendor's issuer: two real IdPs, the vendor's and a customer's."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import IssuerConfig, Settings
from app.main import create_app
from tests.auth.test_tokens import assert_rejected, bearer
from tests.support.api import Caller, make_world, person, settings_for
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP

STAFF = {"realm_access": {"roles": ["internal_admin"]}}


@pytest.fixture(scope="module")
def vendor_idp(idp_factory: Callable[..., TestIdP]) -> TestIdP:
    return idp_factory(ttl=3600)


@pytest.fixture(scope="module")
def customer_idp(idp_factory: Callable[..., TestIdP]) -> TestIdP:
    return idp_factory(ttl=3600)


@pytest.fixture(scope="module")
def app_client(database: TestDatabase, vendor_idp: TestIdP, customer_idp: TestIdP) -> Iterator[TestClient]:
    # settings_for: the first IdP is flagged `vendor: true`, the customer's is not.
    settings = settings_for(database, vendor_idp, customer_idp)
    assert [i.vendor for i in settings.issuers] == [True, False]
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def staff(app_client: TestClient, vendor_idp: TestIdP) -> Caller:
    return person(app_client, vendor_idp, roles=["internal_admin"])


def platform_events(staff: Caller, correlation_id: str) -> list[dict]:
    staff.client.app.state.audit_buffer.flush()  # failed sign-ins are buffered (app/audit/buffered.py)
    r = staff.get("/api/v1/audit-events", params={"correlation_id": correlation_id})
    assert r.status_code == 200, r.text
    return r.json()["items"]


class TestVendorIssuer:
    def test_the_vendors_idp_asserting_internal_admin_works_as_before(self, staff: Caller) -> None:
        r = staff.get("/api/v1/tenants")
        assert r.status_code == 200, r.text

    def test_a_customers_idp_asserting_internal_admin_is_refused_and_audited(
        self, app_client: TestClient, customer_idp: TestIdP, staff: Caller
    ) -> None:
        mallory = f"mallory-{secrets.token_hex(4)}"
        token = customer_idp.token(mallory, claims=STAFF)
        cid = f"vendor-forge-{secrets.token_hex(4)}"
        app_client.app.state.audit_buffer.flush()  # nothing else buffered with these attempts
        for method, url in (("GET", "/api/v1/tenants"), ("POST", "/api/v1/tenants")):
            r = app_client.request(method, url, headers={**bearer(token), "X-Correlation-ID": cid},
                                   json={"name": "Evil", "slug": f"evil-{secrets.token_hex(3)}"} if method == "POST" else None)
            assert_rejected(r)
        # The same body as any other unusable token: nothing says why.
        garbage = app_client.get("/api/v1/tenants", headers=bearer("not-a-token"))
        assert r.text == garbage.text and r.headers["www-authenticate"] == garbage.headers["www-authenticate"]
        events = platform_events(staff, cid)
        # Both attempts, aggregated into one event (same action, address and claimed party).
        assert [(e["category"], e["action"], e["outcome"], e["actor_issuer"], e["actor_subject"], e["details"]["count"])
                for e in events] == [("authentication", "token.vendor_role_refused", "denied", customer_idp.issuer, mallory, 2)]
        assert events[0]["details"]["correlation_ids"] == [cid, cid]

    def test_a_customers_token_without_the_role_is_unaffected(self, app_client: TestClient, customer_idp: TestIdP, staff: Caller) -> None:
        world = make_world(app_client, customer_idp, staff)
        r = world.admin.get(f"{world.base}/workspaces")
        assert r.status_code == 200 and len(r.json()) == 2
        # ... and it is no vendor staff.
        assert world.admin.get("/api/v1/tenants").status_code == 403

    def test_a_customer_issuer_listed_first_is_no_vendor(self, database: TestDatabase, vendor_idp: TestIdP, customer_idp: TestIdP) -> None:
        # Without any issuer flagged vendor, nobody is vendor staff.
        with TestClient(create_app(settings_for(database, customer_idp, vendor=False)), raise_server_exceptions=False) as c:
            assert_rejected(c.get("/api/v1/tenants", headers=bearer(customer_idp.token(f"s-{secrets.token_hex(4)}", claims=STAFF))))


@pytest.fixture(scope="module")
def grouped_client(database: TestDatabase, vendor_idp: TestIdP) -> Iterator[TestClient]:
    issuer = IssuerConfig(issuer=vendor_idp.issuer, audience=vendor_idp.audience, vendor=True,
                          vendor_claim="groups", vendor_claim_value="palisade-staff")
    settings = settings_for(database).model_copy(update={"issuers": [issuer]})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


class TestVendorClaim:
    @pytest.mark.parametrize("groups", [["palisade-staff"], ["other", "palisade-staff"], "palisade-staff"])
    def test_the_required_group_admits_vendor_staff(self, grouped_client: TestClient, vendor_idp: TestIdP, groups) -> None:
        token = vendor_idp.token(f"staff-{secrets.token_hex(4)}", claims={**STAFF, "groups": groups})
        assert grouped_client.get("/api/v1/tenants", headers=bearer(token)).status_code == 200

    @pytest.mark.parametrize("claims", [{}, {"groups": ["other"]}, {"groups": "palisade-staff-x"}, {"groups": [["palisade-staff"]]}],
                             ids=["none", "other-group", "lookalike", "nested"])
    def test_internal_admin_without_the_group_is_refused(self, grouped_client: TestClient, vendor_idp: TestIdP, claims: dict) -> None:
        token = vendor_idp.token(f"staff-{secrets.token_hex(4)}", claims={**STAFF, **claims})
        assert_rejected(grouped_client.get("/api/v1/tenants", headers=bearer(token)))

    def test_the_group_is_not_needed_without_the_role(self, grouped_client: TestClient, vendor_idp: TestIdP) -> None:
        token = vendor_idp.token(f"plain-{secrets.token_hex(4)}", claims={"realm_access": {"roles": []}})
        assert grouped_client.get("/api/v1/tenants", headers=bearer(token)).status_code == 403


class TestVendorSettings:
    def test_production_requires_https_of_the_vendor_issuer(self) -> None:
        common = {"mode": "production", "database_url": "postgresql://palisade_app@db.internal/palisade",
                  "turnstile_secret": "t", "secret_provider": "files", "secrets_dir": "/run/credentials/palisade"}
        with pytest.raises(ValidationError, match="https"):
            Settings(_env_file=None, **common, issuers=[IssuerConfig(issuer="http://vendor.example.com", audience="a", vendor=True)])
        ok = Settings(_env_file=None, **common, issuers=[IssuerConfig(issuer="https://vendor.example.com", audience="a", vendor=True)])
        assert ok.issuers[0].vendor

    def test_issuers_from_the_environment_carry_the_flag(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PALISADE_ISSUERS", '[{"issuer": "https://v.example", "audience": "a", "vendor": true,'
                                               ' "vendor_claim": "groups", "vendor_claim_value": "staff"},'
                                               ' {"issuer": "https://c.example", "audience": "a"}]')
        issuers = Settings(_env_file=None).issuers
        assert [(i.vendor, i.vendor_claim, i.vendor_claim_value) for i in issuers] == [(True, "groups", "staff"), (False, None, None)]

    @pytest.mark.parametrize("extra", [{"vendor_claim": "groups"}, {"vendor_claim_value": "x"},
                                       {"vendor": False, "vendor_claim": "groups", "vendor_claim_value": "x"}])
    def test_a_vendor_claim_needs_its_value_and_the_vendor_flag(self, extra: dict) -> None:
        with pytest.raises(ValidationError):
            IssuerConfig(issuer="https://v.example", audience="a", **({"vendor": True} | extra))


def test_the_development_issuer_counts_as_a_vendor_issuer(database: TestDatabase, tmp_path) -> None:
    from app.auth import dev_issuer

    key_file = tmp_path / "dev-issuer.pem"
    with TestClient(create_app(settings_for(database, dev_issuer_key_file=key_file)), raise_server_exceptions=False) as c:
        token = dev_issuer.mint_token(dev_issuer.load_or_create_key(key_file), subject="vendor", roles=["internal_admin"])
        assert c.get("/api/v1/tenants", headers=bearer(token)).status_code == 200
