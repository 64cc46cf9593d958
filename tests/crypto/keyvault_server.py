"""Local stand-ins for Microsoft Entra ID and Azure Key Vault, over HTTPS on 127.0.0.1.

The real azure-identity and azure-keyvault-* clients talk to these servers unchanged; only public
client options point them here (`authority=` or AZURE_AUTHORITY_HOST, `connection_verify=<CA file>`,
`verify_challenge_resource=False` because a loopback address can never end in `.vault.azure.net`).

- `TestPKI`: a throwaway CA and a server certificate for IP 127.0.0.1 (cryptography).
- `ClusterIssuer`: the Kubernetes service-account token issuer of workload identity: signs the
  federated token that the pod finds in AZURE_FEDERATED_TOKEN_FILE.
- `FakeEntraID`: the token authority. Serves the OpenID configuration
  (`/{tenant}/v2.0/.well-known/openid-configuration`), MSAL instance discovery
  (`/common/discovery/instance`), its JWKS, and the token endpoint `/{tenant}/oauth2/v2.0/token`
  for `client_credentials` with `client_assertion` = the federated token, which it verifies as Entra
  does against the app's federated identity credential (issuer, subject, audience
  `api://AzureADTokenExchange`, signature). It issues RS256 access tokens for `https://vault.azure.net`.
- `FakeKeyVault`: the Key Vault REST subset: the bearer challenge (401 with
  `WWW-Authenticate: Bearer authorization="<authority>/<tenant>", resource="https://vault.azure.net"`),
  `GET/PUT /secrets/{name}[/{version}]`, `GET /keys/{name}[/{version}]`, `POST /keys/{name}/create`,
  `POST /keys/{name}/rotate`, `POST /keys/{name}/{version}/wrapkey|unwrapkey` (RSA-OAEP-256 with an RSA
  key generated here; the private key never leaves this object), `GET /keys/{name}/versions` and
  `POST /keys/{name}/{version}/sign` (ES256 with an EC P-256 key made by `create_key(kty="EC")`). Every request must carry
  `api-version` and a bearer token signed by the authority for this vault's resource and tenant;
  optional per-client permissions emulate RBAC (403 ForbiddenByRbac).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VAULT_RESOURCE = "https://vault.azure.net"
STORAGE_RESOURCE = "https://storage.azure.com"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NAME_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


# --- TLS ----------------------------------------------------------------------------------------


@dataclass
class TestPKI:
    """A CA (its certificate in `ca_file`, for `connection_verify=`) and a 127.0.0.1 server certificate."""

    __test__ = False  # not a test class, despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path, *, dns_names: tuple[str, ...] = ()) -> TestPKI:
        """`dns_names`: more names the server certificate is valid for (e.g. a vault's real host name)."""
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Palisade test CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                                             *(x509.DNSName(n) for n in dns_names)]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pki.key_file.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return pki

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass
class Exchange:
    """One request as a server saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response: bytes = b""


Reply = tuple[int, Any, dict[str, str]]  # status, JSON payload (or raw bytes), extra headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        exchange = Exchange(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            status, payload, headers = self.server.app(exchange)
        except Exception as exc:  # a bug in the fake: make it loud in the test, not a hang
            status, payload, headers = 500, {"error": {"code": "FakeServerBug", "message": repr(exc)}}, {}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        exchange.status, exchange.response = status, data
        with self.server.lock:
            self.server.exchanges.append(exchange)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, pki: TestPKI | None, app: Callable[[Exchange], Reply], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        if pki is not None:
            self.socket = pki.server_context().wrap_socket(self.socket, server_side=True)
        self.app = app
        self.lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        self.url = f"{'https' if pki else 'http'}://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# --- workload identity: the cluster's token issuer and the token authority ----------------------


class ClusterIssuer:
    """The Kubernetes service-account issuer (the AKS OIDC issuer) that signs federated tokens."""

    def __init__(self, issuer: str = "https://oidc.cluster.test/6b1c0b8e/") -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._key.public_key()

    def federated_token(self, subject: str, *, audience: str = TOKEN_EXCHANGE_AUDIENCE, lifetime: int = 3600) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": [audience], "iat": now, "nbf": now, "exp": now + lifetime,
                  "kubernetes.io": {"namespace": "palisade", "serviceaccount": {"name": subject.rsplit(":", 1)[-1]}}}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "cluster-1"})


@dataclass
class FederatedCredential:
    """An app registration's federated identity credential (what Entra matches the assertion against)."""

    issuer: str
    subject: str
    public_key: Any
    audience: str = TOKEN_EXCHANGE_AUDIENCE


@dataclass
class TokenRequest:
    tenant: str
    form: dict[str, str]
    status: int = 0


class FakeEntraID:
    """Microsoft Entra ID's token endpoint for workload identity, on loopback."""

    def __init__(self, pki: TestPKI, tenant_id: str | None = None) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._key.public_key()
        self.kid = "entra-" + uuid.uuid4().hex[:8]
        self.apps: dict[str, FederatedCredential] = {}
        self.token_requests: list[TokenRequest] = []
        self.issued: list[str] = []
        self._server = _TLSServer(pki, self._route)
        self.url = self._server.url  # the authority host: `authority=` / AZURE_AUTHORITY_HOST

    @property
    def issuer(self) -> str:
        return f"{self.url}/{self.tenant_id}/v2.0"

    @property
    def exchanges(self) -> list[Exchange]:
        return self._server.exchanges

    def register_workload(self, client_id: str, federated: FederatedCredential) -> None:
        self.apps[client_id] = federated

    def stop(self) -> None:
        self._server.stop()

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """What a resource server (the fake vault) does with a bearer token from this authority."""
        return jwt.decode(token, self.public_key, algorithms=["RS256"], audience=audience, issuer=self.issuer,
                          options={"require": ["exp", "iat", "aud", "iss", "tid"]})

    def managed_identity_token(self, client_id: str, principal_id: str, resource: str) -> str:
        """An access token for a managed identity, as Azure's identity endpoint hands out.

        Azure Storage is issued v1 tokens, whose issuer is `https://sts.windows.net/<tenant>/`
        (what Azurite, like Storage, requires of a bearer token)."""
        now = int(time.time())
        v1 = resource.rstrip("/") == STORAGE_RESOURCE
        issuer = f"https://sts.windows.net/{self.tenant_id}/" if v1 else self.issuer
        claims = {"aud": resource, "iss": issuer, "iat": now, "nbf": now, "exp": now + 3600, "tid": self.tenant_id,
                  "appid": client_id, "azp": client_id, "oid": principal_id, "sub": principal_id,
                  "ver": "1.0" if v1 else "2.0",
                  "idtyp": "app", "xms_mirid": f"managed-identity/{client_id}"}
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        self.issued.append(token)
        return token

    def _openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.url}/{tenant}"
        return {
            "issuer": f"{base}/v2.0",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "WW",
        }

    def _route(self, ex: Exchange) -> Reply:
        segments = [s for s in ex.path.split("/") if s]
        if ex.method == "GET" and segments[-3:] == ["v2.0", ".well-known", "openid-configuration"] and len(segments) == 4:
            return 200, self._openid_configuration(segments[0]), {}
        if ex.method == "GET" and segments == ["common", "discovery", "instance"]:
            host = urlsplit(self.url).netloc
            return 200, {
                "tenant_discovery_endpoint": f"{self.url}/{self.tenant_id}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }, {}
        if ex.method == "GET" and segments[1:] == ["discovery", "v2.0", "keys"]:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.public_key))
            jwk.update(kid=self.kid, use="sig")
            return 200, {"keys": [jwk]}, {}
        if ex.method == "POST" and segments[1:] == ["oauth2", "v2.0", "token"]:
            form = dict(parse_qsl(ex.body.decode()))
            request = TokenRequest(segments[0], form)
            status, payload = self._token(segments[0], form)
            request.status = status
            self.token_requests.append(request)
            return status, payload, {}
        return 404, {"error": "not_found", "error_description": f"no route for {ex.method} {ex.path}"}, {}

    def _error(self, status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
        return status, {"error": error, "error_description": description, "error_codes": [],
                        "timestamp": dt.datetime.now(dt.UTC).isoformat(), "trace_id": str(uuid.uuid4())}

    def _token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if tenant != self.tenant_id:
            return self._error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return self._error(400, "unsupported_grant_type", "AADSTS70003: only client_credentials here")
        if form.get("client_secret"):
            return self._error(401, "invalid_client", "AADSTS7000215: this fake accepts federated assertions only")
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            return self._error(400, "invalid_request", "AADSTS900144: client_assertion is missing")
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            return self._error(400, "unauthorized_client", "AADSTS700016: Application not found in the directory")
        try:
            assertion = jwt.decode(form["client_assertion"], app.public_key, algorithms=["RS256"],
                                   audience=app.audience, issuer=app.issuer,
                                   options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            return self._error(401, "invalid_client", f"AADSTS700211/700024: assertion rejected ({type(exc).__name__})")
        if assertion["sub"] != app.subject:
            return self._error(401, "invalid_client", "AADSTS700213: No matching federated identity record found")
        scopes = form.get("scope", "").split()
        if scopes != [f"{VAULT_RESOURCE}/.default"]:
            return self._error(400, "invalid_scope", f"AADSTS70011: scope {form.get('scope')!r} is not valid here")
        now = int(time.time())
        claims = {
            "aud": VAULT_RESOURCE,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": tenant,
            "appid": form["client_id"],
            "azp": form["client_id"],
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, form["client_id"])),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, form["client_id"])),
            "ver": "2.0",
        }
        if "CP1" in form.get("claims", ""):
            claims["xms_cc"] = ["CP1"]
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        self.issued.append(token)
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}


# --- Key Vault ---------------------------------------------------------------------------------


@dataclass
class _SecretVersion:
    version: str
    value: str
    created: int
    enabled: bool = True
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _KeyVersion:
    version: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey  # RSA (wrap/unwrap) or EC P-256 (sign)
    created: int
    key_ops: list[str]
    enabled: bool = True


def _data_action(collection: str, method: str, rest: list[str]) -> str:
    """The Key Vault data action an operation needs (what an Azure role definition grants)."""
    if collection == "secrets":
        return "secrets/getSecret/action" if method == "GET" else "secrets/setSecret/action"
    operation = rest[-1] if rest else ""
    if operation in ("wrapkey", "unwrapkey"):
        return f"keys/{'wrapKey' if operation == 'wrapkey' else 'unwrapKey'}/action"
    if operation == "sign":
        return "keys/sign/action"
    return "keys/read" if method == "GET" else "keys/write"


def _kv_error(status: int, code: str, message: str, inner: str | None = None) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return status, {"error": error}, {}


class FakeKeyVault:
    """An Azure Key Vault on loopback that trusts tokens from one `FakeEntraID`."""

    DEFAULT_KEY_OPS = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
    SUPPORTED_WRAP = {"RSA-OAEP-256"}

    def __init__(self, pki: TestPKI, authority: FakeEntraID, *, key_size: int = 2048, port: int = 0,
                 name: str | None = None) -> None:
        """`name`: the vault's own URL (https://<vault>.vault.azure.net), which the ids in its answers
        carry, as Key Vault's do, when clients reach it by that name; default: its loopback URL."""
        self.authority = authority
        self.key_size = key_size
        self.secrets: dict[str, list[_SecretVersion]] = {}
        self.keys: dict[str, list[_KeyVersion]] = {}
        # client id -> allowed data actions ("secrets/get", "keys/unwrapKey", ...); absent = all.
        self.permissions: dict[str, set[str]] = {}
        # Azure RBAC by scope, when set: (principal object id, data action, "secrets/<name>" or
        # "keys/<name>") -> allowed? Replaces `permissions`.
        self.authorize: Callable[[str, str, str], bool] | None = None
        self.lock = threading.Lock()
        self._server = _TLSServer(pki, self._route, port)
        self.url = name.rstrip("/") if name else self._server.url

    @property
    def exchanges(self) -> list[Exchange]:
        return self._server.exchanges

    def stop(self) -> None:
        self._server.stop()

    # test helpers (the same state the REST operations change) --------------------------------

    def set_secret(self, name: str, value: str) -> str:
        with self.lock:
            version = _SecretVersion(uuid.uuid4().hex, value, int(time.time()))
            self.secrets.setdefault(name.lower(), []).append(version)
            return version.version

    def create_key(self, name: str, *, key_ops: list[str] | None = None, kty: str = "RSA") -> str:
        """A new version of key `name`: RSA (wrap/unwrap), or `kty="EC"` for an EC P-256 key that signs (ES256)."""
        with self.lock:
            if kty == "EC":
                return self._new_key_version(name, 0, key_ops or ["sign", "verify"], curve="P-256").version
            return self._new_key_version(name, self.key_size, key_ops or list(self.DEFAULT_KEY_OPS)).version

    def disable_key_version(self, name: str, version: str) -> None:
        with self.lock:
            for kv in self.keys[name.lower()]:
                if kv.version == version:
                    kv.enabled = False

    def private_numbers(self) -> list[rsa.RSAPrivateNumbers | ec.EllipticCurvePrivateNumbers]:
        """Every key version's private numbers, so a test can prove none of them ever left this object."""
        return [kv.private_key.private_numbers() for versions in self.keys.values() for kv in versions]

    # REST --------------------------------------------------------------------------------------

    def challenge(self) -> str:
        return f'Bearer authorization="{self.authority.url}/{self.authority.tenant_id}", resource="{VAULT_RESOURCE}"'

    def _unauthorized(self, message: str) -> Reply:
        status, body, _ = _kv_error(401, "Unauthorized", message)
        return status, body, {"WWW-Authenticate": self.challenge()}

    def _route(self, ex: Exchange) -> Reply:
        if not ex.query.get("api-version"):
            return _kv_error(400, "BadParameter", "The request URI contains an invalid version or is missing api-version")
        auth = ex.headers.get("authorization", "")
        if not auth:
            return self._unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
        try:
            claims = self.authority.verify(token, VAULT_RESOURCE)
        except jwt.PyJWTError as exc:
            return self._unauthorized(f"AKV10022: Invalid token ({type(exc).__name__}).")
        if claims["tid"] != self.authority.tenant_id:
            return self._unauthorized("AKV10032: Invalid issuer / tenant.")
        client = claims.get("appid", "")
        principal = claims.get("oid", "")
        body: dict[str, Any] = {}
        if ex.body:
            try:
                body = json.loads(ex.body)
            except ValueError:
                return _kv_error(400, "BadParameter", "The request body is not JSON")
        segments = ex.path.rstrip("/").split("/")[1:]
        if ex.path.endswith("/") and len(segments) == 2:
            segments.append("")  # "/keys/{name}/" is the SDK's "latest version"
        if len(segments) < 2 or any(c not in _NAME_CHARS for c in segments[1]) or not segments[1]:
            return _kv_error(400, "BadParameter", f"invalid path {ex.path}")
        collection, name, rest = segments[0], segments[1].lower(), segments[2:]
        if self.authorize is not None:
            action = _data_action(collection, ex.method, rest)
            if not self.authorize(principal, action, f"{collection}/{name}"):
                return self._forbidden(client, action)
        with self.lock:
            if collection == "secrets":
                return self._secrets(ex.method, name, rest, body, client)
            if collection == "keys":
                return self._keys(ex.method, name, rest, body, client)
        return _kv_error(404, "NotFound", f"no route for {ex.method} {ex.path}")

    def _allowed(self, client: str, action: str) -> bool:
        allowed = self.permissions.get(client)
        return allowed is None or action in allowed

    def _forbidden(self, client: str, action: str) -> Reply:
        return _kv_error(403, "Forbidden", f"Caller is not authorized to perform action on resource. "
                         f"Caller: appid={client}; Action: 'Microsoft.KeyVault/vaults/{action}'", inner="ForbiddenByRbac")

    def _secret_bundle(self, name: str, sv: _SecretVersion, *, with_value: bool = True) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "id": f"{self.url}/secrets/{name}/{sv.version}",
            "attributes": {"enabled": sv.enabled, "created": sv.created, "updated": sv.created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
            "tags": sv.tags,
        }
        if sv.content_type:
            bundle["contentType"] = sv.content_type
        if with_value:
            bundle["value"] = sv.value
        return bundle

    def _secrets(self, method: str, name: str, rest: list[str], body: dict[str, Any], client: str) -> Reply:
        if method == "GET" and len(rest) <= 1:
            if not self._allowed(client, "secrets/getSecret/action"):
                return self._forbidden(client, "secrets/getSecret/action")
            versions = self.secrets.get(name, [])
            wanted = rest[0] if rest and rest[0] else None
            found = [sv for sv in versions if wanted in (None, sv.version)]
            if not found:
                label = f"{name}/{wanted}" if wanted else name
                return _kv_error(404, "SecretNotFound", f"A secret with (name/id) {label} was not found in this key vault. "
                                 "If you recently deleted this secret you may be able to recover it using the correct "
                                 "recovery command.")
            sv = found[-1]
            if not sv.enabled:
                return _kv_error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled")
            return 200, self._secret_bundle(name, sv), {}
        if method == "PUT" and not rest:
            if not self._allowed(client, "secrets/setSecret/action"):
                return self._forbidden(client, "secrets/setSecret/action")
            if not isinstance(body.get("value"), str):
                return _kv_error(400, "BadParameter", "Property 'value' is required")
            sv = _SecretVersion(uuid.uuid4().hex, body["value"], int(time.time()),
                                enabled=body.get("attributes", {}).get("enabled", True) is not False,
                                content_type=body.get("contentType"), tags=body.get("tags") or {})
            self.secrets.setdefault(name, []).append(sv)
            return 200, self._secret_bundle(name, sv), {}
        return _kv_error(405, "MethodNotAllowed", f"{method} is not supported on secrets here")

    def _new_key_version(self, name: str, size: int, key_ops: list[str], curve: str | None = None) -> _KeyVersion:
        private = (ec.generate_private_key(ec.SECP256R1()) if curve == "P-256"
                   else rsa.generate_private_key(public_exponent=65537, key_size=size))
        kv = _KeyVersion(uuid.uuid4().hex, private, int(time.time()), key_ops)
        self.keys.setdefault(name.lower(), []).append(kv)
        return kv

    def _key_bundle(self, name: str, kv: _KeyVersion) -> dict[str, Any]:
        public = kv.private_key.public_key().public_numbers()
        if isinstance(public, ec.EllipticCurvePublicNumbers):
            material = {"kty": "EC", "crv": "P-256", "x": b64url(public.x.to_bytes(32, "big")),
                        "y": b64url(public.y.to_bytes(32, "big"))}
        else:
            material = {"kty": "RSA", "n": _int_b64(public.n), "e": _int_b64(public.e)}
        return {
            "key": {"kid": f"{self.url}/keys/{name}/{kv.version}", "key_ops": kv.key_ops, **material},
            "attributes": {"enabled": kv.enabled, "created": kv.created, "updated": kv.created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90, "exportable": False},
            "tags": {},
        }

    def _find_key(self, name: str, version: str | None) -> _KeyVersion | None:
        found = [kv for kv in self.keys.get(name, []) if version in (None, kv.version)]
        return found[-1] if found else None

    def _key_not_found(self, name: str, version: str | None) -> Reply:
        label = f"{name}/{version}" if version else name
        return _kv_error(404, "KeyNotFound", f"A key with (name/id) {label} was not found in this key vault. If you "
                         "recently deleted this key you may be able to recover it using the correct recovery command.")

    def _sign(self, name: str, version: str | None, body: dict[str, Any], client: str) -> Reply:
        """ES256 over the digest the client sent (Key Vault signs digests): the raw r || s, as JWS has it."""
        if not self._allowed(client, "keys/sign/action"):
            return self._forbidden(client, "keys/sign/action")
        kv = self._find_key(name, version)
        if kv is None:
            return self._key_not_found(name, version)
        if not kv.enabled or "sign" not in kv.key_ops or not isinstance(kv.private_key, ec.EllipticCurvePrivateKey):
            return _kv_error(403, "Forbidden", "Operation sign is not permitted on this key.", inner="KeyOperationForbidden")
        if body.get("alg") != "ES256" or not isinstance(body.get("value"), str):
            return _kv_error(400, "BadParameter", f"Unsupported algorithm or missing value: {body.get('alg')!r}")
        digest = b64url_decode(body["value"])
        if len(digest) != 32:
            return _kv_error(400, "BadParameter", "ES256 signs a SHA-256 digest (32 bytes)")
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

        r, s_ = decode_dss_signature(kv.private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        return 200, {"kid": f"{self.url}/keys/{name}/{kv.version}", "value": b64url(r.to_bytes(32, "big") + s_.to_bytes(32, "big"))}, {}

    def _keys(self, method: str, name: str, rest: list[str], body: dict[str, Any], client: str) -> Reply:
        if method == "GET" and rest == ["versions"]:
            if not self._allowed(client, "keys/read"):
                return self._forbidden(client, "keys/read")
            return 200, {"value": [{"kid": f"{self.url}/keys/{name}/{kv.version}",
                                    "attributes": {"enabled": kv.enabled, "created": kv.created, "updated": kv.created}}
                                   for kv in self.keys.get(name, [])], "nextLink": None}, {}
        if method == "POST" and len(rest) == 2 and rest[1] == "sign":
            return self._sign(name, rest[0] or None, body, client)
        if method == "GET" and len(rest) <= 1:
            if not self._allowed(client, "keys/read"):
                return self._forbidden(client, "keys/read")
            version = rest[0] if rest and rest[0] else None
            kv = self._find_key(name, version)
            if kv is None:
                return self._key_not_found(name, version)
            if not kv.enabled:
                return _kv_error(403, "Forbidden", "Operation get is not allowed on a disabled key.", inner="KeyDisabled")
            return 200, self._key_bundle(name, kv), {}
        if method == "POST" and rest in (["create"], ["rotate"]):
            if not self._allowed(client, "keys/create/action"):
                return self._forbidden(client, "keys/create/action")
            if rest == ["create"]:
                if body.get("kty") not in ("RSA", "RSA-HSM"):
                    return _kv_error(400, "BadParameter", "This fake vault creates RSA keys only")
                size = int(body.get("key_size") or self.key_size)
                ops = body.get("key_ops") or list(self.DEFAULT_KEY_OPS)
            else:
                latest = self._find_key(name, None)
                if latest is None:
                    return self._key_not_found(name, None)
                if isinstance(latest.private_key, ec.EllipticCurvePrivateKey):
                    return 200, self._key_bundle(name, self._new_key_version(name, 0, latest.key_ops, curve="P-256")), {}
                size, ops = latest.private_key.key_size, latest.key_ops
            return 200, self._key_bundle(name, self._new_key_version(name, size, ops)), {}
        if method == "POST" and len(rest) == 2 and rest[1] in ("wrapkey", "unwrapkey"):
            operation = "wrapKey" if rest[1] == "wrapkey" else "unwrapKey"
            if not self._allowed(client, f"keys/{operation}/action"):
                return self._forbidden(client, f"keys/{operation}/action")
            kv = self._find_key(name, rest[0] or None)
            if kv is None:
                return self._key_not_found(name, rest[0])
            if not kv.enabled:
                return _kv_error(403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.",
                                 inner="KeyDisabled")
            if operation not in kv.key_ops:
                return _kv_error(403, "Forbidden", f"Operation {operation} is not permitted on this key.",
                                 inner="KeyOperationForbidden")
            if body.get("alg") not in self.SUPPORTED_WRAP or not isinstance(body.get("value"), str):
                return _kv_error(400, "BadParameter", f"Unsupported algorithm or missing value: {body.get('alg')!r}")
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
            data = b64url_decode(body["value"])
            try:
                out = (kv.private_key.public_key().encrypt(data, oaep) if operation == "wrapKey"
                       else kv.private_key.decrypt(data, oaep))
            except ValueError:
                return _kv_error(400, "BadParameter", f"{operation} failed: the value cannot be processed with this key")
            return 200, {"kid": f"{self.url}/keys/{name}/{kv.version}", "value": b64url(out)}, {}
        return _kv_error(405, "MethodNotAllowed", f"{method} is not supported on keys here")


# --- the platform's identity endpoint -------------------------------------------------------------


class ContainerAppsIdentityEndpoint:
    """What Azure Container Apps gives a container for its managed identities: an HTTP endpoint on
    loopback (`IDENTITY_ENDPOINT`) that answers, for a request carrying `X-IDENTITY-HEADER`
    (`IDENTITY_HEADER`), a token for one of the identities assigned to that app or job, chosen by
    `client_id` (App Service protocol, api-version 2019-08-01, which azure-identity speaks).

    `identities` maps each assigned identity's client id to its principal (object) id. A client id
    not assigned here gets the platform's 400, like a real replica asking for a stranger's identity.
    """

    def __init__(self, authority: FakeEntraID, identities: dict[str, str]) -> None:
        self.authority = authority
        self.identities = dict(identities)
        self.header = uuid.uuid4().hex
        self.requests: list[tuple[str | None, str | None]] = []
        self._server = _TLSServer(None, self._route)
        self.url = f"{self._server.url}/msi/token"

    @property
    def environment(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    def stop(self) -> None:
        self._server.stop()

    def _route(self, ex: Exchange) -> Reply:
        if ex.headers.get("x-identity-header") != self.header:
            return 401, {"error": "unauthorized", "error_description": "missing or wrong X-IDENTITY-HEADER"}, {}
        client_id = (ex.query.get("client_id") or [None])[0]
        resource = (ex.query.get("resource") or [None])[0]
        self.requests.append((client_id, resource))
        if not resource:
            return 400, {"error": "invalid_request", "error_description": "resource is required"}, {}
        if client_id is None and len(self.identities) == 1:
            client_id = next(iter(self.identities))
        if client_id not in self.identities:
            return 400, {"error": "invalid_request",
                         "error_description": "Identity not found: no such user-assigned identity on this app"}, {}
        token = self.authority.managed_identity_token(client_id, self.identities[client_id], resource)
        expires_on = int(time.time()) + 3600
        return 200, {"access_token": token, "expires_on": str(expires_on), "resource": resource,
                     "token_type": "Bearer", "client_id": client_id}, {}
