"""A real OpenID Provider (panva's oidc-provider, tests/idp/server.mjs) for the test-suite."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

IDP_DIR = Path(__file__).resolve().parents[1] / "idp"
SERVER_SCRIPT = IDP_DIR / "server.mjs"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
# Attempts at starting on a fresh port: the port is chosen here, then bound by node,
# so another process can take it in between.
PORT_ATTEMPTS = 3


class IdPStartupError(RuntimeError):
    """The test IdP could not be started."""


def _b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _generate_signing_key() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    """Fresh RSA-2048 key and its private JWK (kid = RFC 7638 thumbprint)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    # PyJWT marks private JWKs key_ops=["sign"]; oidc-provider would copy that onto the
    # published public key, which verifiers may then refuse to use for verification.
    jwk.pop("key_ops", None)
    thumbprint_input = json.dumps(
        {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    jwk.update(kid=_b64url(hashlib.sha256(thumbprint_input.encode()).digest()), alg="RS256", use="sig")
    return key, jwk


def _free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestIdP:
    """Handle on a running test IdP process: real tokens, forged tokens, key rotation."""

    # Not a test class, despite the name.
    __test__ = False

    def __init__(
        self,
        *,
        process: subprocess.Popen,
        config_path: Path,
        config: dict[str, Any],
        private_key: rsa.RSAPrivateKey,
        private_jwk: dict[str, Any],
        discovery: dict[str, Any],
        log_files: list,
    ) -> None:
        self._process = process
        self._config_path = config_path
        self._config = config
        self._private_key = private_key
        self._private_jwk = private_jwk
        self._log_files = log_files
        self._http = httpx.Client(timeout=10.0, verify=_verify(config))
        # subject -> (canonical claims JSON, client_secret) of the client registered now.
        self._registrations: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.issuer: str = discovery["issuer"]
        self.audience: str = config["audience"]
        self.ttl: int = config["access_token_ttl"]
        self.discovery_url: str = f"{self.issuer}/.well-known/openid-configuration"
        self.jwks_uri: str = discovery["jwks_uri"]
        self.token_endpoint: str = discovery["token_endpoint"]

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        """The current signing key."""
        return self._private_key

    @property
    def kid(self) -> str:
        """Key id of the current signing key."""
        return self._private_jwk["kid"]

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The current signing key as a public JWK, as published on the jwks_uri."""
        return {k: self._private_jwk[k] for k in ("kty", "kid", "alg", "use", "n", "e")}

    def token(self, subject: str, *, claims: dict[str, Any] | None = None) -> str:
        """A real access token from the token endpoint with `sub` = subject plus the given claims."""
        # `scope` is issued through real OAuth scope, so it is requested, not registered as a
        # claim; provider-set claims (iss, sub, aud, exp, iat, jti, client_id) need forge().
        extra = dict(claims or {})
        scope = extra.pop("scope", None)
        if scope is not None and not isinstance(scope, str):
            raise TypeError("claims['scope'] must be a space-separated string")
        secret = self._ensure_client(subject, extra, scope)
        form = {"grant_type": "client_credentials", "client_id": subject, "client_secret": secret}
        if scope:
            form["scope"] = scope
        response = self._http.post(self.token_endpoint, data=form)
        if response.status_code != 200:
            raise RuntimeError(f"token request for {subject!r} failed: {response.status_code} {response.text}")
        return response.json()["access_token"]

    def _ensure_client(self, subject: str, claims: dict[str, Any], scope: str | None) -> str:
        """Register (or re-register) the client whose client_id is the subject; return its secret."""
        fingerprint = json.dumps({"claims": claims, "scope": scope}, sort_keys=True)
        with self._lock:
            registered = self._registrations.get(subject)
            if registered and registered[0] == fingerprint:
                return registered[1]
            secret = secrets.token_urlsafe(32)
            body = {"client_id": subject, "client_secret": secret, "claims": claims, "scope": scope}
            response = self._http.post(f"{self.issuer}/__test/clients", json=body)
            if response.status_code != 204:
                raise ValueError(f"IdP refused client for {subject!r}: {response.status_code} {response.text}")
            self._registrations[subject] = (fingerprint, secret)
            return secret

    def default_claims(self, subject: str) -> dict[str, Any]:
        """A valid claim set, shaped like a real token from this IdP, to forge from."""
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "client_id": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }

    def forge(
        self,
        claims: dict[str, Any],
        *,
        header: dict[str, Any] | None = None,
        key: Any = None,
        algorithm: str = "RS256",
    ) -> str:
        """Sign claims locally; defaults: current key, its kid, typ at+jwt (header None values remove entries)."""
        merged = {"kid": self.kid, "typ": "at+jwt", **(header or {})}
        # PyJWT drops a falsy typ itself (and would otherwise add typ=JWT).
        headers = {k: v for k, v in merged.items() if v is not None or k == "typ"}
        if algorithm == "none":
            signing_key = None
        else:
            signing_key = self._private_key if key is None else key
        return jwt.encode(claims, signing_key, algorithm=algorithm, headers=headers)

    def rotate_key(self) -> str:
        """Replace the signing key with a fresh one; the JWKS then holds only it. Returns the new kid."""
        private_key, private_jwk = _generate_signing_key()
        jwks = {"keys": [private_jwk]}
        response = self._http.post(f"{self.issuer}/__test/keys", json=jwks)
        if response.status_code != 204:
            raise RuntimeError(f"IdP refused the new key: {response.status_code} {response.text}")
        self._private_key, self._private_jwk = private_key, private_jwk
        # Keep the config file truthful for anyone restarting the process by hand.
        self._config["jwks"] = jwks
        self._config_path.write_text(json.dumps(self._config))
        return private_jwk["kid"]

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """The IdP stops answering (SIGSTOP: connections are accepted by the kernel, never served), then resumes."""
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def jwks_hits(self) -> int:
        """Number of requests the IdP has served on its jwks_uri."""
        response = self._http.get(f"{self.issuer}/__test/jwks-hits")
        response.raise_for_status()
        return response.json()["hits"]

    def stop(self) -> None:
        """Terminate the node process (idempotent)."""
        self._http.close()
        _terminate(self._process)
        for handle in self._log_files:
            handle.close()

    def __repr__(self) -> str:
        return f"<TestIdP issuer={self.issuer} audience={self.audience!r} kid={self.kid}>"


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _verify(config: dict[str, Any]) -> ssl.SSLContext | bool:
    """Trust for the CA that signs the IdP's certificate when it serves https, else httpx's default."""
    return ssl.create_default_context(cafile=config["tls"]["ca"]) if "tls" in config else True


def start_idp(*, audience: str, workdir: Path, ttl: int = 300, tls: dict[str, str] | None = None) -> TestIdP:
    """Start a test IdP on a free 127.0.0.1 port with a fresh RSA key; wait until it serves discovery.

    `tls` ({"cert", "key", "ca"}: PEM file paths): serve https, as production mode requires of an
    issuer; the certificate must be valid for 127.0.0.1.
    """
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise IdPStartupError(f"{IDP_DIR / 'node_modules'} is missing: run `npm ci --prefix tests/idp`")
    node = shutil.which("node")
    if node is None:
        raise IdPStartupError("`node` is not on PATH; the test IdP needs Node.js")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    private_key, private_jwk = _generate_signing_key()

    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        config = {
            "port": port,
            "issuer": f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            "audience": audience,
            **({"tls": tls} if tls else {}),
            "jwks": {"keys": [private_jwk]},
            "access_token_ttl": ttl,
        }
        config_path = workdir / f"idp-{port}.json"
        config_path.write_text(json.dumps(config))
        stdout_path, stderr_path = workdir / f"idp-{port}.out", workdir / f"idp-{port}.err"
        # Log to files: an unread pipe would block the server once its buffer fills.
        log_files = [stdout_path.open("wb"), stderr_path.open("wb")]
        process = subprocess.Popen(
            [node, str(SERVER_SCRIPT), str(config_path)],
            cwd=IDP_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log_files[0],
            stderr=log_files[1],
        )
        try:
            discovery = _wait_for_discovery(process, config["issuer"], stderr_path, verify=_verify(config))
        except BaseException as exc:
            _terminate(process)
            for handle in log_files:
                handle.close()
            if isinstance(exc, IdPStartupError) and "EADDRINUSE" in str(exc) and attempt < PORT_ATTEMPTS:
                continue
            raise
        return TestIdP(
            process=process,
            config_path=config_path,
            config=config,
            private_key=private_key,
            private_jwk=private_jwk,
            discovery=discovery,
            log_files=log_files,
        )
    raise AssertionError("unreachable")


def _wait_for_discovery(process: subprocess.Popen, issuer: str, stderr_path: Path, *, verify: ssl.SSLContext | bool = True) -> dict[str, Any]:
    """Poll the discovery document until it answers with our issuer, or fail with node's stderr."""
    url = f"{issuer}/.well-known/openid-configuration"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=2.0, verify=verify) as client:
        while True:
            if process.poll() is not None:
                raise IdPStartupError(
                    f"test IdP exited with code {process.returncode} during startup; stderr:\n"
                    f"{stderr_path.read_text(errors='replace')}"
                )
            try:
                response = client.get(url)
                if response.status_code == 200 and response.json().get("issuer") == issuer:
                    return response.json()
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise IdPStartupError(
                    f"test IdP did not serve {url} within {STARTUP_TIMEOUT:.0f}s; stderr:\n"
                    f"{stderr_path.read_text(errors='replace')}"
                )
            time.sleep(0.1)
