"""The development-only token issuer behind `palisade dev` (production mode refuses it).

It signs RS256 tokens with a local key file; the app trusts its public key directly. It exists
so the quick start works without an IdP; real installs configure Keycloak or another OIDC IdP.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.config import DEV_ISSUER, IssuerConfig

DEV_AUDIENCE = "palisade-dev"
# The development issuer stands in for the vendor's IdP too (`dev-token --role internal_admin`).
DEV_ISSUER_CONFIG = IssuerConfig(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, roles_claim="roles", vendor=True)


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


def _kid(key: rsa.RSAPrivateKey) -> str:
    numbers = key.public_key().public_numbers()
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{numbers.n:x}").hex[:16]


def public_jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": _kid(key), "use": "sig", "alg": "RS256"}]}


def mint_token(key: rsa.RSAPrivateKey, *, subject: str, roles: list[str] | None = None, ttl: int = 12 * 3600, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "roles": roles or [],
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": _kid(key), "typ": "at+jwt"})
