"""A minimal OpenID Provider for the converge test: a discovery document, a JWKS, and ES256 tokens.

The app on the test host verifies bearer tokens exactly as in production (discovery document, then
JWKS, then the signature, issuer, audience and expiry); this stub serves the two documents on the
host side of the test network (the app fetches them through the issuer's `discovery_url`) and
signs tokens with a fresh P-256 key made for this run. Nothing else is served.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class OidcStub:
    """Serves /.well-known/openid-configuration and /jwks for one issuer on (address, ephemeral port)."""

    def __init__(self, issuer: str, address: str) -> None:
        self.issuer = issuer
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex
        numbers = self._key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
               "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big"))}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                documents = {"/.well-known/openid-configuration": {"issuer": stub.issuer, "jwks_uri": f"{stub.base}/jwks"},
                             "/jwks": {"keys": [jwk]}}
                body = json.dumps(documents[self.path]).encode() if self.path in documents else b"{}"
                self.send_response(200 if self.path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
                pass

        self._server = ThreadingHTTPServer((address, 0), Handler)
        self.base = f"http://{address}:{self._server.server_address[1]}"
        self.discovery_url = f"{self.base}/.well-known/openid-configuration"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-stub", daemon=True)
        self._thread.start()

    def token(self, subject: str, *, audience: str = "palisade", ttl: int = 600) -> str:
        now = int(time.time())
        header = {"alg": "ES256", "typ": "at+jwt", "kid": self.kid}
        claims = {"iss": self.issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + ttl,
                  "jti": uuid.uuid4().hex}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
