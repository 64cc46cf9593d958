"""Tests of the test IdP harness itself (tests/support/idp.py + tests/idp/server.mjs)."""

from __future__ import annotations

import httpx
import jwt
import pytest

from tests.support.idp import TestIdP, _generate_signing_key, start_idp


def fetch_jwks(idp: TestIdP) -> jwt.PyJWKSet:
    """The key set currently published on the IdP's jwks_uri."""
    response = httpx.get(idp.jwks_uri)
    response.raise_for_status()
    return jwt.PyJWKSet.from_dict(response.json())


def verify(idp: TestIdP, token: str) -> dict:
    """Verify a token the way a resource server would: JWKS key by kid, RS256, iss, aud."""
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(
        token,
        fetch_jwks(idp)[kid].key,
        algorithms=["RS256"],
        audience=idp.audience,
        issuer=idp.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )


def test_discovery_document_names_the_issuer_and_jwks_uri(idp: TestIdP) -> None:
    doc = httpx.get(idp.discovery_url).json()
    assert doc["issuer"] == idp.issuer
    assert doc["jwks_uri"] == idp.jwks_uri
    assert doc["jwks_uri"].startswith(f"{idp.issuer}/")
    assert "client_credentials" in doc["grant_types_supported"]


def test_token_is_an_rfc9068_jwt_with_subject_and_custom_claims(idp: TestIdP) -> None:
    claims = {"realm_access": {"roles": ["internal_admin"]}, "email": "ops@example.test"}
    token = idp.token("user-keycloak-style", claims=claims)

    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] == idp.kid

    payload = verify(idp, token)
    assert payload["iss"] == idp.issuer
    assert payload["aud"] == "palisade-api"
    assert payload["sub"] == "user-keycloak-style"
    assert payload["client_id"] == "user-keycloak-style"
    assert payload["realm_access"] == {"roles": ["internal_admin"]}
    assert payload["email"] == "ops@example.test"
    assert payload["exp"] - payload["iat"] == idp.ttl


def test_same_subject_with_different_claims_gets_the_requested_claims(idp: TestIdP) -> None:
    subject = "alice@example.test"
    assert verify(idp, idp.token(subject, claims={"roles": ["viewer"]}))["roles"] == ["viewer"]
    assert verify(idp, idp.token(subject, claims={"roles": ["admin", "viewer"]}))["roles"] == ["admin", "viewer"]
    assert verify(idp, idp.token(subject, claims={"roles": ["viewer"]}))["roles"] == ["viewer"]
    plain = verify(idp, idp.token(subject))
    assert plain["sub"] == subject
    assert "roles" not in plain


def test_scope_claim_is_issued_through_oauth_scope(idp: TestIdP) -> None:
    payload = verify(idp, idp.token("scoped-user", claims={"scope": "kb:read kb:write"}))
    assert set(payload["scope"].split()) == {"kb:read", "kb:write"}


def test_provider_controlled_claims_cannot_be_registered(idp: TestIdP) -> None:
    with pytest.raises(ValueError, match="sub"):
        idp.token("mallory", claims={"sub": "someone-else"})


def test_forged_default_claims_verify_and_attacks_are_detectable(idp: TestIdP) -> None:
    assert verify(idp, idp.forge(idp.default_claims("forged-user")))["sub"] == "forged-user"

    expired = {**idp.default_claims("forged-user"), "exp": 1}
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(idp, idp.forge(expired))

    stranger_key, _ = _generate_signing_key()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(idp, idp.forge(idp.default_claims("forged-user"), key=stranger_key))

    no_kid = idp.forge(idp.default_claims("forged-user"), header={"kid": None})
    assert "kid" not in jwt.get_unverified_header(no_kid)
    unknown_kid = idp.forge(idp.default_claims("forged-user"), header={"kid": "nope"})
    assert jwt.get_unverified_header(unknown_kid)["kid"] == "nope"


def test_rotate_key_publishes_only_the_new_key(idp_factory) -> None:
    rotating = idp_factory(ttl=120)
    old_kid = rotating.kid
    old_token = rotating.token("rotating-user", claims={"roles": ["r"]})
    assert [k.key_id for k in fetch_jwks(rotating).keys] == [old_kid]

    new_kid = rotating.rotate_key()

    assert new_kid == rotating.kid != old_kid
    assert [k.key_id for k in fetch_jwks(rotating).keys] == [new_kid]
    assert rotating.public_jwk["kid"] == new_kid
    new_token = rotating.token("rotating-user", claims={"roles": ["r"]})
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    payload = verify(rotating, new_token)
    assert payload["roles"] == ["r"]
    assert payload["exp"] - payload["iat"] == 120
    with pytest.raises(KeyError):
        verify(rotating, old_token)


def test_jwks_hits_counts_jwks_requests_only(idp: TestIdP) -> None:
    before = idp.jwks_hits()
    idp.token("counting-user")
    httpx.get(idp.discovery_url)
    assert idp.jwks_hits() == before
    fetch_jwks(idp)
    fetch_jwks(idp)
    assert idp.jwks_hits() == before + 2


def test_second_idp_is_a_distinct_issuer_with_its_own_key(idp: TestIdP, idp_factory) -> None:
    other = idp_factory(audience="other-api")
    assert other.issuer != idp.issuer
    assert other.kid != idp.kid
    payload = verify(other, other.token("user-1"))
    assert (payload["iss"], payload["aud"]) == (other.issuer, "other-api")


def test_stop_ends_the_process(tmp_path) -> None:
    short_lived = start_idp(audience="palisade-api", workdir=tmp_path)
    short_lived.stop()
    short_lived.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(short_lived.discovery_url)
