"""Bearer tokens, seen through the real HTTP app: real IdP tokens work, every forgery is a bare 401.

Each attack is built so that exactly one thing is wrong with it: the same construction with that
one thing put right is accepted (see TestForgedTokenControl), so a 401 here means the defect was
noticed, not that the forging went wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import IssuerConfig, Settings
from app.main import create_app
from tests.support.api import World, make_world, person, settings_for
from tests.support.database import TestDatabase
from tests.support.idp import TestIdP

PROBLEM_JSON = "application/problem+json"
# Words that would tell an attacker which check caught the token.
REVEALING = (
    "expired",
    "expir",
    "signature",
    "kid",
    "audience",
    "issuer",
    "algorithm",
    "alg",
    "nbf",
    "not yet",
    "claim",
    "jwks",
    "key",
    "leeway",
    "decode",
)
DROP = object()


# --- building tokens by hand -------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64url_json(header)}.{b64url_json(claims)}.{b64url(signature)}"


def signed_by_hand(idp: TestIdP, claims: dict[str, Any]) -> str:
    """RS256 with the IdP's real key and kid, for claim values PyJWT refuses to encode."""
    signing_input = f"{b64url_json({'alg': 'RS256', 'typ': 'at+jwt', 'kid': idp.kid})}.{b64url_json(claims)}"
    signature = idp.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def rewritten(token: str, *, header: Callable[[dict], None] | None = None, claims: Callable[[dict], None] | None = None) -> str:
    """The token with its header and/or payload edited in place; the original signature is kept."""
    head, body, signature = token.split(".")
    if header is not None:
        decoded = unb64url_json(head)
        header(decoded)
        head = b64url_json(decoded)
    if claims is not None:
        decoded = unb64url_json(body)
        claims(decoded)
        body = b64url_json(decoded)
    return f"{head}.{body}.{signature}"


def claims_for(idp: TestIdP, subject: str, **changes: Any) -> dict[str, Any]:
    """A valid claim set for the subject with the given claims changed (DROP removes one)."""
    claims = idp.default_claims(subject)
    for name, value in changes.items():
        if value is DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def public_pem(idp: TestIdP, fmt: str) -> bytes:
    public = idp.private_key.public_key()
    if fmt == "spki":
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)


def hmac_signed_with_public_key(idp: TestIdP, subject: str, *, fmt: str = "spki", alg: str = "HS256") -> str:
    """The classic key-confusion forgery; built by hand because PyJWT refuses PEM keys as HMAC secrets."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64url_json({'alg': alg, 'typ': 'at+jwt', 'kid': idp.kid})}.{b64url_json(claims_for(idp, subject))}"
    signature = hmac.new(public_pem(idp, fmt), signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned(idp: TestIdP, subject: str, alg: str = "none") -> str:
    return hand_made({"alg": alg, "typ": "at+jwt", "kid": idp.kid}, claims_for(idp, subject))


def fresh_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def random_kid() -> str:
    return b64url(secrets.token_bytes(32))


# --- helpers on responses ---------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_rejected(response: httpx.Response) -> None:
    """What a client sees for any unusable credential: 401, a Bearer challenge, a reasonless problem."""
    assert response.status_code == 401, response.text
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM_JSON
    body = response.json()
    assert body["status"] == 401
    text = (response.text + " " + challenge).lower()
    for word in REVEALING:
        assert word not in text, f"401 reveals {word!r}: {response.text} / {challenge}"


def rejection_signature(response: httpx.Response) -> tuple[str, str, str]:
    return (response.text, response.headers.get("www-authenticate", ""), response.headers.get("content-type", ""))


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenant(client: TestClient, idp: TestIdP, vendor) -> World:
    """One tenant for the whole module: the tests here only read."""
    return make_world(client, idp, vendor)


@pytest.fixture(scope="module")
def foreign_idp(idp_factory: Callable[..., TestIdP]) -> TestIdP:
    """A second, real IdP with the same audience that the app is NOT configured to trust."""
    return idp_factory()


@pytest.fixture
def get_workspaces(client: TestClient, tenant: World) -> Callable[..., httpx.Response]:
    """GET the tenant's workspaces with the given headers (none by default)."""

    def call(headers: dict[str, str] | None = None) -> httpx.Response:
        return client.get(f"{tenant.base}/workspaces", headers=headers or {})

    return call


@pytest.fixture
def as_admin(get_workspaces: Callable[..., httpx.Response]) -> Callable[[str], httpx.Response]:
    """GET the tenant's workspaces with the given bearer token."""
    return lambda token: get_workspaces(bearer(token))


def dedicated_app(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False)


# --- behaviours --------------------------------------------------------------------------------


class TestRealToken:
    def test_a_real_idp_token_is_accepted(self, tenant: World, as_admin) -> None:
        response = as_admin(tenant.admin.token)
        assert response.status_code == 200, response.text
        assert len(response.json()) == 2

    def test_the_bearer_scheme_is_case_insensitive(self, tenant: World, get_workspaces) -> None:
        response = get_workspaces({"Authorization": f"bearer {tenant.admin.token}"})
        assert response.status_code == 200, response.text


class TestForgedTokenControl:
    """The forging used below is sound: a token forged with the IdP's key and valid claims works."""

    def test_a_correctly_forged_token_is_accepted(self, idp: TestIdP, tenant: World, as_admin) -> None:
        assert as_admin(idp.forge(claims_for(idp, tenant.admin.subject))).status_code == 200

    def test_a_correctly_hand_signed_token_is_accepted(self, idp: TestIdP, tenant: World, as_admin) -> None:
        assert as_admin(signed_by_hand(idp, claims_for(idp, tenant.admin.subject))).status_code == 200

    def test_the_hand_made_rewrite_keeps_a_token_valid_when_nothing_changes(self, tenant: World, as_admin) -> None:
        assert as_admin(rewritten(tenant.admin.token, claims=lambda c: None)).status_code == 200


class TestMissingOrMalformedCredentials:
    def test_no_authorization_header(self, get_workspaces) -> None:
        assert_rejected(get_workspaces())

    @pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT", "Digest"])
    def test_a_real_token_under_another_scheme(self, tenant: World, get_workspaces, scheme: str) -> None:
        assert_rejected(get_workspaces({"Authorization": f"{scheme} {tenant.admin.token}"}))

    def test_basic_credentials(self, get_workspaces) -> None:
        basic = base64.b64encode(b"admin:admin").decode()
        assert_rejected(get_workspaces({"Authorization": f"Basic {basic}"}))

    def test_a_token_without_a_scheme(self, tenant: World, get_workspaces) -> None:
        assert_rejected(get_workspaces({"Authorization": tenant.admin.token}))

    @pytest.mark.parametrize(
        "credentials",
        [
            "Bearer",
            "Bearer ",
            "Bearer garbage",
            "Bearer a.b.c",
            "Bearer ...",
            "Bearer eyJhbGciOiJSUzI1NiJ9",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
            "Bearer !!!!.????.****",
            "Bearer " + "A" * 4000,
            "Bearer " + b64url(b"[1,2]") + "." + b64url(b"{}") + ".",
            "Bearer " + b64url(b"not json") + "." + b64url(b"{}") + ".",
        ],
        ids=lambda c: c[:30],
    )
    def test_garbage(self, get_workspaces, credentials: str) -> None:
        assert_rejected(get_workspaces({"Authorization": credentials}))


class TestUnsignedToken:
    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
    def test_alg_none_is_refused(self, idp: TestIdP, tenant: World, as_admin, alg: str) -> None:
        assert_rejected(as_admin(unsigned(idp, tenant.admin.subject, alg)))

    def test_a_real_token_with_its_signature_stripped_is_refused(self, tenant: World, as_admin) -> None:
        head, body, _ = tenant.admin.token.split(".")
        assert_rejected(as_admin(f"{head}.{body}."))

    def test_a_real_token_relabelled_alg_none_is_refused(self, tenant: World, as_admin) -> None:
        relabelled = rewritten(tenant.admin.token, header=lambda h: h.update(alg="none"))
        head, body, _ = relabelled.split(".")
        assert_rejected(as_admin(f"{head}.{body}."))


class TestKeyConfusion:
    """HMAC signed with the IdP's public key as the secret: the verifier must never pick HS* from the token."""

    @pytest.mark.parametrize("fmt", ["spki", "pkcs1"])
    @pytest.mark.parametrize("alg", ["HS256", "HS512"])
    def test_hmac_signed_with_the_public_key_is_refused(self, idp: TestIdP, tenant: World, as_admin, fmt: str, alg: str) -> None:
        assert_rejected(as_admin(hmac_signed_with_public_key(idp, tenant.admin.subject, fmt=fmt, alg=alg)))


class TestExpiredToken:
    @pytest.mark.parametrize("seconds_ago", [120, 3600, 86400 * 30])
    def test_expired_beyond_the_leeway_is_refused(self, idp: TestIdP, tenant: World, as_admin, seconds_ago: int) -> None:
        now = int(time.time())
        claims = claims_for(idp, tenant.admin.subject, exp=now - seconds_ago, iat=now - seconds_ago - 300, nbf=now - seconds_ago - 300)
        assert_rejected(as_admin(idp.forge(claims)))

    def test_expired_just_past_the_leeway_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        # The default leeway is 30 s.
        now = int(time.time())
        claims = claims_for(idp, tenant.admin.subject, iat=now - 345, nbf=now - 345, exp=now - 45)
        assert_rejected(as_admin(idp.forge(claims)))


class TestNotYetValidToken:
    @pytest.mark.parametrize("seconds_ahead", [120, 3600])
    def test_nbf_in_the_future_beyond_the_leeway_is_refused(self, idp: TestIdP, tenant: World, as_admin, seconds_ahead: int) -> None:
        now = int(time.time())
        claims = claims_for(idp, tenant.admin.subject, nbf=now + seconds_ahead, exp=now + seconds_ahead + 300)
        assert_rejected(as_admin(idp.forge(claims)))


class TestClockSkewWithinLeeway:
    def test_expired_ten_seconds_ago_is_accepted(self, idp: TestIdP, tenant: World, as_admin) -> None:
        now = int(time.time())
        claims = claims_for(idp, tenant.admin.subject, iat=now - 310, nbf=now - 310, exp=now - 10)
        assert as_admin(idp.forge(claims)).status_code == 200

    def test_valid_from_ten_seconds_ahead_is_accepted(self, idp: TestIdP, tenant: World, as_admin) -> None:
        now = int(time.time())
        claims = claims_for(idp, tenant.admin.subject, nbf=now + 10)
        assert as_admin(idp.forge(claims)).status_code == 200


class TestWrongAudience:
    @pytest.mark.parametrize("aud", ["another-api", ["another-api"], "palisade-api-staging", "Palisade-API", ""])
    def test_a_token_for_another_audience_is_refused(self, idp: TestIdP, tenant: World, as_admin, aud: Any) -> None:
        assert_rejected(as_admin(idp.forge(claims_for(idp, tenant.admin.subject, aud=aud))))


class TestWrongIssuer:
    @pytest.mark.parametrize("suffix", ["/", "/realms/other", "x"])
    def test_a_lookalike_issuer_name_is_refused(self, idp: TestIdP, tenant: World, as_admin, suffix: str) -> None:
        assert_rejected(as_admin(idp.forge(claims_for(idp, tenant.admin.subject, iss=idp.issuer + suffix))))

    def test_another_issuer_name_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        claims = claims_for(idp, tenant.admin.subject, iss="https://idp.evil.example/realms/palisade")
        assert_rejected(as_admin(idp.forge(claims)))

    def test_a_real_token_from_an_idp_the_app_does_not_trust_is_refused(self, foreign_idp: TestIdP, tenant: World, as_admin) -> None:
        token = foreign_idp.token(tenant.admin.subject)
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == "palisade-api"
        assert_rejected(as_admin(token))

    def test_an_untrusted_idp_cannot_claim_the_trusted_issuer_name(self, idp: TestIdP, foreign_idp: TestIdP, tenant: World, as_admin) -> None:
        # Signed by the foreign IdP's real key (and its kid), naming the trusted issuer.
        assert_rejected(as_admin(foreign_idp.forge(claims_for(idp, tenant.admin.subject))))

    @pytest.mark.parametrize("iss", [["<trusted>"], {"iss": "<trusted>"}, 42, None])
    def test_an_issuer_claim_of_the_wrong_type_is_refused(self, idp: TestIdP, tenant: World, as_admin, iss: Any) -> None:
        value = json.loads(json.dumps(iss).replace('"<trusted>"', json.dumps(idp.issuer)))
        assert_rejected(as_admin(signed_by_hand(idp, claims_for(idp, tenant.admin.subject, iss=value))))


class TestUnknownKeyId:
    def test_a_token_signed_by_a_fresh_key_with_an_unknown_kid_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        token = idp.forge(claims_for(idp, tenant.admin.subject), header={"kid": random_kid()}, key=fresh_rsa_key())
        assert_rejected(as_admin(token))

    def test_a_token_signed_by_a_fresh_key_under_the_real_kid_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        assert_rejected(as_admin(idp.forge(claims_for(idp, tenant.admin.subject), key=fresh_rsa_key())))

    def test_a_token_without_a_kid_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        assert_rejected(as_admin(idp.forge(claims_for(idp, tenant.admin.subject), header={"kid": None})))


class TestTamperedPayload:
    def test_changing_the_subject_of_a_real_token_is_refused(self, client: TestClient, idp: TestIdP, tenant: World, as_admin) -> None:
        stranger = person(client, idp)
        assert as_admin(stranger.token).status_code != 200
        forged = rewritten(stranger.token, claims=lambda c: c.update(sub=tenant.admin.subject, client_id=tenant.admin.subject))
        assert_rejected(as_admin(forged))

    def test_adding_a_platform_role_to_a_real_token_is_refused(self, client: TestClient, tenant: World) -> None:
        token = tenant.admin.token
        assert client.get("/api/v1/tenants", headers=bearer(token)).status_code == 403
        forged = rewritten(token, claims=lambda c: c.update(realm_access={"roles": ["internal_admin"]}))
        assert_rejected(client.get("/api/v1/tenants", headers=bearer(forged)))

    def test_extending_the_expiry_of_a_real_token_is_refused(self, tenant: World, as_admin) -> None:
        forged = rewritten(tenant.admin.token, claims=lambda c: c.update(exp=c["exp"] + 86400))
        assert_rejected(as_admin(forged))


class TestMissingRequiredClaims:
    @pytest.mark.parametrize("claim", ["exp", "sub", "aud", "iss"])
    def test_a_token_missing_a_required_claim_is_refused(self, idp: TestIdP, tenant: World, as_admin, claim: str) -> None:
        assert_rejected(as_admin(idp.forge(claims_for(idp, tenant.admin.subject, **{claim: DROP}))))

    @pytest.mark.parametrize("exp", ["never", None, [9999999999]])
    def test_an_expiry_that_is_not_a_number_is_refused(self, idp: TestIdP, tenant: World, as_admin, exp: Any) -> None:
        assert_rejected(as_admin(idp.forge(claims_for(idp, tenant.admin.subject, exp=exp))))


class TestAlgorithmPinnedByTheKeySet:
    """The IdP publishes its key as RS256: right key, other algorithm in the header is refused."""

    def test_ps256_signed_with_the_right_key_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        token = idp.forge(claims_for(idp, tenant.admin.subject), algorithm="PS256")
        assert jwt.get_unverified_header(token)["kid"] == idp.kid
        assert_rejected(as_admin(token))

    @pytest.mark.parametrize("alg", ["PS256", "ES256", "RS384", "RS512", "EdDSA"])
    def test_a_real_token_relabelled_with_another_alg_is_refused(self, tenant: World, as_admin, alg: str) -> None:
        assert_rejected(as_admin(rewritten(tenant.admin.token, header=lambda h: h.update(alg=alg))))

    def test_es256_signed_by_a_fresh_ec_key_under_the_real_kid_is_refused(self, idp: TestIdP, tenant: World, as_admin) -> None:
        token = idp.forge(claims_for(idp, tenant.admin.subject), key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
        assert_rejected(as_admin(token))

    @pytest.mark.parametrize("alg", [["RS256"], {"RS256": True}, 256, None])
    def test_an_alg_header_of_the_wrong_type_is_refused(self, tenant: World, as_admin, alg: Any) -> None:
        assert_rejected(as_admin(rewritten(tenant.admin.token, header=lambda h: h.update(alg=alg))))


class TestRejectionsLookAlike:
    """Every reason for a 401 gives the very same answer: nothing tells an attacker what was caught."""

    def test_all_rejections_have_the_same_body_and_challenge(
        self, client: TestClient, idp: TestIdP, foreign_idp: TestIdP, tenant: World, get_workspaces
    ) -> None:
        subject = tenant.admin.subject
        real = tenant.admin.token
        now = int(time.time())
        attacks: dict[str, dict[str, str]] = {
            "no header": {},
            "basic scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
            "token scheme": {"Authorization": f"Token {real}"},
            "garbage": bearer("garbage"),
            "alg none": bearer(unsigned(idp, subject)),
            "hs256 with public key": bearer(hmac_signed_with_public_key(idp, subject)),
            "expired": bearer(idp.forge(claims_for(idp, subject, exp=now - 3600, iat=now - 7200, nbf=now - 7200))),
            "not yet valid": bearer(idp.forge(claims_for(idp, subject, nbf=now + 3600, exp=now + 7200))),
            "wrong audience": bearer(idp.forge(claims_for(idp, subject, aud="another-api"))),
            "wrong issuer": bearer(idp.forge(claims_for(idp, subject, iss="https://idp.evil.example"))),
            "untrusted idp": bearer(foreign_idp.token(subject)),
            "unknown kid": bearer(idp.forge(claims_for(idp, subject), header={"kid": random_kid()}, key=fresh_rsa_key())),
            "wrong key, real kid": bearer(idp.forge(claims_for(idp, subject), key=fresh_rsa_key())),
            "tampered": bearer(rewritten(real, claims=lambda c: c.update(realm_access={"roles": ["internal_admin"]}))),
            "missing exp": bearer(idp.forge(claims_for(idp, subject, exp=DROP))),
            "ps256 against pinned rs256": bearer(idp.forge(claims_for(idp, subject), algorithm="PS256")),
        }
        answers = {}
        for name, headers in attacks.items():
            response = get_workspaces(headers)
            assert_rejected(response)
            answers[name] = rejection_signature(response)
        distinct = set(answers.values())
        assert len(distinct) == 1, json.dumps({k: v[0] for k, v in answers.items()}, indent=1)


class TestKeyRotation:
    @pytest.fixture
    def rotating(self, idp_factory: Callable[..., TestIdP], database: TestDatabase) -> Iterator[tuple[TestIdP, TestClient]]:
        own_idp = idp_factory()
        with dedicated_app(settings_for(database, own_idp)) as app_client:
            yield own_idp, app_client

    def test_a_rotated_key_verifies_on_first_use_and_the_old_key_stops_working(self, rotating: tuple[TestIdP, TestClient]) -> None:
        own_idp, app_client = rotating
        staff = person(app_client, own_idp, roles=["internal_admin"])
        old_kid = own_idp.kid
        old_key = own_idp.private_key
        assert app_client.get("/api/v1/tenants", headers=bearer(staff.token)).status_code == 200  # keys now cached

        new_kid = own_idp.rotate_key()
        assert new_kid != old_kid
        fresh = own_idp.token(staff.subject, claims={"realm_access": {"roles": ["internal_admin"]}})
        assert jwt.get_unverified_header(fresh)["kid"] == new_kid
        response = app_client.get("/api/v1/tenants", headers=bearer(fresh))
        assert response.status_code == 200, response.text

        assert_rejected(app_client.get("/api/v1/tenants", headers=bearer(staff.token)))
        old_forged = own_idp.forge(
            claims_for(own_idp, staff.subject, realm_access={"roles": ["internal_admin"]}), header={"kid": old_kid}, key=old_key
        )
        assert_rejected(app_client.get("/api/v1/tenants", headers=bearer(old_forged)))
        # The new key keeps working after the old ones were turned away.
        assert app_client.get("/api/v1/tenants", headers=bearer(fresh)).status_code == 200


class TestUnknownKidFlood:
    def test_made_up_kids_do_not_hammer_the_idp(self, idp_factory: Callable[..., TestIdP], database: TestDatabase) -> None:
        own_idp = idp_factory()
        # Forged up front, so the flood itself is only requests.
        flood = [
            own_idp.forge(claims_for(own_idp, f"mallory-{n}"), header={"kid": random_kid()}, key=fresh_rsa_key())
            for n in range(30)
        ]
        with dedicated_app(settings_for(database, own_idp)) as app_client:
            staff = person(app_client, own_idp, roles=["internal_admin"])
            assert app_client.get("/api/v1/tenants", headers=bearer(staff.token)).status_code == 200
            before = own_idp.jwks_hits()
            for token in flood:
                assert_rejected(app_client.get("/api/v1/tenants", headers=bearer(token)))
            assert own_idp.jwks_hits() - before <= 2
            # Real users are unaffected by the flood.
            assert app_client.get("/api/v1/tenants", headers=bearer(staff.token)).status_code == 200


@pytest.fixture(scope="module")
def flat_roles_client(database: TestDatabase, idp: TestIdP) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,
        database_url=database.app_url,
        issuers=[IssuerConfig(issuer=idp.issuer, audience=idp.audience, roles_claim="roles", vendor=True)],
    )
    with dedicated_app(settings) as app_client:
        yield app_client


class TestRolesClaimMapping:
    def test_a_flat_roles_claim_grants_internal_admin_when_configured(self, flat_roles_client: TestClient, idp: TestIdP) -> None:
        token = idp.token(f"flat-{secrets.token_hex(4)}", claims={"roles": ["internal_admin"]})
        response = flat_roles_client.get("/api/v1/tenants", headers=bearer(token))
        assert response.status_code == 200, response.text

    def test_the_keycloak_claim_is_ignored_when_the_flat_claim_is_configured(self, flat_roles_client: TestClient, idp: TestIdP) -> None:
        token = idp.token(f"kc-{secrets.token_hex(4)}", claims={"realm_access": {"roles": ["internal_admin"]}})
        assert flat_roles_client.get("/api/v1/tenants", headers=bearer(token)).status_code == 403

    def test_a_flat_roles_claim_grants_nothing_under_the_keycloak_default(self, client: TestClient, idp: TestIdP) -> None:
        token = idp.token(f"flat-{secrets.token_hex(4)}", claims={"roles": ["internal_admin"]})
        assert client.get("/api/v1/tenants", headers=bearer(token)).status_code == 403

    def test_keycloak_realm_roles_grant_internal_admin_under_the_default(self, client: TestClient, idp: TestIdP) -> None:
        token = idp.token(f"kc-{secrets.token_hex(4)}", claims={"realm_access": {"roles": ["internal_admin"]}})
        response = client.get("/api/v1/tenants", headers=bearer(token))
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        "claims",
        [{"realm_access": {"roles": "internal_admin"}}, {"realm_access": ["internal_admin"]}, {"realm_access": {"roles": [["internal_admin"]]}}],
        ids=["roles-is-a-string", "realm_access-is-a-list", "nested-list"],
    )
    def test_a_misshapen_roles_claim_grants_nothing(self, client: TestClient, idp: TestIdP, claims: dict) -> None:
        token = idp.token(f"odd-{secrets.token_hex(4)}", claims=claims)
        assert client.get("/api/v1/tenants", headers=bearer(token)).status_code == 403


class TestProductionSettings:
    @pytest.fixture(autouse=True)
    def _no_palisade_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in list(os.environ):
            if name.upper().startswith("PALISADE_"):
                monkeypatch.delenv(name)

    @staticmethod
    def settings(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mode": "production",
            "database_url": "postgresql://palisade_app@db.internal/palisade",
            "issuers": [IssuerConfig(issuer="https://idp.example.com/realms/palisade", audience="palisade-api")],
            "turnstile_secret": "turnstile-test-secret",
            "secret_provider": "files",
            "secrets_dir": "/run/credentials/palisade",
        }
        return Settings(_env_file=None, **(values | overrides))

    def test_an_https_issuer_is_accepted(self) -> None:
        assert self.settings().mode == "production"

    def test_secrets_from_the_environment_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="never from the environment"):
            self.settings(secret_provider="env")

    def test_key_vault_must_be_https(self) -> None:
        with pytest.raises(ValidationError, match="https"):
            self.settings(secret_provider="keyvault", key_vault_url="http://vault.local/")

    @pytest.mark.parametrize("origin", ["*", "null"])
    def test_wildcard_or_null_cors_origin_is_refused_in_any_mode(self, origin: str) -> None:
        with pytest.raises(ValidationError, match="CORS"):
            self.settings(cors_allow_origins=[origin])
        with pytest.raises(ValidationError, match="CORS"):
            Settings(_env_file=None, cors_allow_origins=[origin])

    @pytest.mark.parametrize("issuer", ["http://idp.example.com/realms/palisade", "http://127.0.0.1:8080", "HTTP://idp.example.com"])
    def test_an_http_issuer_is_refused(self, issuer: str) -> None:
        with pytest.raises(ValidationError):
            self.settings(issuers=[IssuerConfig(issuer=issuer, audience="palisade-api")])

    def test_an_http_issuer_among_https_ones_is_refused(self) -> None:
        issuers = [
            IssuerConfig(issuer="https://idp.example.com/realms/palisade", audience="palisade-api"),
            IssuerConfig(issuer="http://idp.example.com/realms/legacy", audience="palisade-api"),
        ]
        with pytest.raises(ValidationError):
            self.settings(issuers=issuers)

    def test_an_http_issuer_from_the_environment_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PALISADE_ISSUERS", json.dumps([{"issuer": "http://idp.example.com", "audience": "palisade-api"}]))
        with pytest.raises(ValidationError):
            Settings(_env_file=None, mode="production", database_url="postgresql://palisade_app@db.internal/palisade")

    def test_the_dev_issuer_key_file_is_refused(self, tmp_path) -> None:
        with pytest.raises(ValidationError):
            self.settings(dev_issuer_key_file=tmp_path / "dev-issuer.pem")

    def test_the_dev_issuer_key_file_from_the_environment_is_refused(self, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
        monkeypatch.setenv("PALISADE_DEV_ISSUER_KEY_FILE", str(tmp_path / "dev-issuer.pem"))
        with pytest.raises(ValidationError):
            self.settings()

    def test_development_mode_allows_an_http_issuer(self) -> None:
        settings = self.settings(mode="development", issuers=[IssuerConfig(issuer="http://127.0.0.1:8080", audience="palisade-api")])
        assert settings.mode == "development"
