"""The application edge (layer 3 of the request path): security headers, CORS, parameter pollution,
body size.

`install(app, settings)` adds five pure-ASGI middlewares (no BaseHTTPMiddleware: streaming responses
keep streaming, request bodies are never buffered here). From the outside in:

1. `SecurityHeadersMiddleware` — wraps the *whole* stack, outside Starlette's ServerErrorMiddleware,
   so even the bare 500 of an unhandled exception carries the headers. It only rewrites the
   `http.response.start` message (the docs page excepted, see below). HSTS only when the request
   came over TLS: scope scheme https, or `X-Forwarded-Proto: https` from a peer that
   `app.edge.client.from_trusted_proxy` vouches for (trusted_proxies or Cloudflare ranges).
   `Cache-Control: no-store` / `Pragma: no-cache` on every response: the surface is a tenant-data
   API, error answers included, and nothing on it is meant for a shared cache (Cloudflare, the
   on-prem nginx). A route that must be cacheable one day gets an explicit exemption here.
2. `AllowedHostsMiddleware` — with `settings.allowed_hosts`, a request for another host name (the
   platform's default name, a bare IP) is a 421 problem before routing; `/health/*` answers any
   host, since platform probes address the replica by IP.
3. `CorsMiddleware` — exact allow-list; refused preflights are a 403 problem without CORS headers.
4. `ParameterPollutionMiddleware` — any repeated query parameter is a 400 problem before routing.
5. `BodyLimitMiddleware` — `settings.max_body_bytes` (or a registered larger limit for a path
   subtree) enforced before the body is read: Content-Length over the limit is a 413 at once,
   otherwise the bytes are counted as they arrive and the app never receives more than the limit.

Layers 2-5 sit in the user-middleware list *after* whatever `create_app()` added (the correlation
id, the 5xx counter), so their refusals carry `X-Correlation-ID` and are traced; the design's rate
limiter belongs between 4 and 5 (`add_inner_middleware`).

Content-Security-Policy: every response gets `API_CSP` (`default-src 'none'`, nothing may load or
run) — except the two Swagger UI pages FastAPI serves (`app.docs_url` and its OAuth2 redirect page),
which get `docs_csp()`: the exact jsDelivr files FastAPI's page references (the file paths, not the
whole CDN host, which serves any npm package), `data:` images (Swagger's CSS icons), `connect-src
'self'` for the spec and "try it out", and the sha256 hash of each inline bootstrap `<script>` of
the page actually served (hashed from the response body; those pages are built from server-side
constants only, so there is nothing a client can inject into them). No `unsafe-inline`, no
`unsafe-eval`, no nonce. The favicon from fastapi.tiangolo.com is deliberately not allowed (no
third-party request per page view).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import problems
from app.config import Settings
from app.edge.client import from_trusted_proxy

__all__ = [
    "API_CSP",
    "CORS_ALLOW_HEADERS",
    "CORS_ALLOW_METHODS",
    "REPEATABLE_QUERY_PARAMS",
    "BodyLimitMiddleware",
    "CorsMiddleware",
    "ParameterPollutionMiddleware",
    "SecurityHeadersMiddleware",
    "add_inner_middleware",
    "body_limit_for",
    "canonical_origin",
    "docs_csp",
    "install",
    "register_body_limit",
    "repeated_query_params",
]

# --- security headers --------------------------------------------------------------------------

# `sandbox` too: whatever a browser is made to render from us (a downloaded file, an error page)
# runs in an opaque origin with no scripts, forms or plugins. Harmless on JSON.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox"

# Exactly what FastAPI's `get_swagger_ui_html()` loads by default (fastapi/openapi/docs.py).
DOCS_SCRIPT_FILES = ("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js",)
DOCS_STYLE_FILES = ("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css",)

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer", "ambient-light-sensor", "autoplay", "battery", "bluetooth", "browsing-topics", "camera",
        "display-capture", "document-domain", "encrypted-media", "fullscreen", "gamepad", "geolocation", "gyroscope",
        "hid", "identity-credentials-get", "idle-detection", "interest-cohort", "local-fonts", "magnetometer",
        "microphone", "midi", "otp-credentials", "payment", "picture-in-picture", "publickey-credentials-create",
        "publickey-credentials-get", "screen-wake-lock", "serial", "storage-access", "sync-xhr", "usb", "web-share",
        "window-management", "xr-spatial-tracking",
    )
)

_FIXED_HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
        ("Permissions-Policy", PERMISSIONS_POLICY),
        ("X-Permitted-Cross-Domain-Policies", "none"),
        ("Origin-Agent-Cluster", "?1"),
        ("Cache-Control", "no-store"),
        ("Pragma", "no-cache"),
    )
)
_CSP = b"content-security-policy"
_HSTS = b"strict-transport-security"
# Whatever the app set under these names is replaced (or, for the last two, dropped).
_OWNED_HEADERS = frozenset({name for name, _ in _FIXED_HEADERS} | {_CSP, _HSTS, b"server", b"x-powered-by"})

# The docs page is a few KiB; past this it is not the page we know, and gets the API policy.
_DOCS_BUFFER_LIMIT = 512 * 1024
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_csp(inline_scripts: Iterable[bytes] = ()) -> str:
    """The policy of the Swagger UI pages: their exact files, plus the hashes of their inline scripts."""
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline_scripts]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join([*DOCS_SCRIPT_FILES, *dict.fromkeys(hashes)]),
            "style-src " + " ".join(DOCS_STYLE_FILES),
            "img-src data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


# --- trusted proxies ---------------------------------------------------------------------------


def _check_networks(cidrs: Iterable[str], setting: str) -> None:
    """A malformed proxy CIDR fails at startup, not on every request."""
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{setting}: {cidr!r} is not an IP address or CIDR") from None


def _arrived_over_tls(scope: Scope) -> bool:
    if scope.get("scheme") in ("https", "wss"):
        return True
    values = _header_values(scope, b"x-forwarded-proto")
    # Believed only from a configured proxy (app.edge.client: trusted_proxies and Cloudflare ranges).
    if not values or "app" not in scope:
        return False
    try:
        trusted = from_trusted_proxy(Request(scope))
    except AttributeError:  # an app without `state.settings`: no proxy is trusted
        return False
    if not trusted:
        return False
    # The proxy next to us speaks last.
    return values[-1].split(b",")[-1].strip().lower() == b"https"


# --- small ASGI helpers ------------------------------------------------------------------------


def _header_values(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _strip(headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes] | set[bytes]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() not in names]


def _add_vary(headers: list[tuple[bytes, bytes]], *names: bytes) -> list[tuple[bytes, bytes]]:
    present: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"vary":
            present.update(token.strip().lower() for token in value.split(b","))
    if b"*" in present:
        return headers
    missing = [n for n in names if n.lower() not in present]
    return headers + [(b"vary", b", ".join(missing))] if missing else headers


async def _answer(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    await response(scope, receive, send)


# --- path templates (shared by the body-limit table and the repeatable-parameter list) ---------

_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _template_regex(template: str, *, subtree: bool) -> re.Pattern[str]:
    """`/api/v1/tenants/{tenant_id}/files` → a regex; `{name}` matches exactly one path segment."""
    literal = _TEMPLATE_PARAM.sub("", template)
    if not template.startswith("/") or "{" in literal or "}" in literal:
        raise ValueError(f"not a path template: {template!r} (use /literal/{{name}}/... segments)")
    if subtree:
        template = template.rstrip("/")
    pattern, position = "", 0
    for match in _TEMPLATE_PARAM.finditer(template):
        pattern += re.escape(template[position:match.start()]) + "[^/]+"
        position = match.end()
    pattern += re.escape(template[position:])
    return re.compile(f"^{pattern}(?:/.*)?$" if subtree else f"^{pattern}$", re.DOTALL)


# --- CORS ----------------------------------------------------------------------------------------

CORS_ALLOW_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Correlation-ID", "Idempotency-Key", "CF-Turnstile-Response")
# Headers the browser's script may read on a cross-origin response.
CORS_EXPOSE_HEADERS = ("X-Correlation-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
                       "RateLimit-Policy")
CORS_MAX_AGE_SECONDS = 600
# CORS-safelisted request headers: a browser may name them in a preflight, and they are harmless.
_SAFELISTED_REQUEST_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_origin(value: str) -> str | None:
    """`scheme://host[:port]`, lowercase, default port elided — or None when `value` is no origin.

    Refused: `null`, `*`, userinfo, a path other than "/", query, fragment, schemes other than http(s),
    empty or malformed hosts, percent-encoding, a trailing dot on the host (a different origin to a
    browser), whitespace, non-ASCII (configure IDNs in their xn-- form).
    """
    if not value or value != value.strip() or not value.isascii() or not value.isprintable():
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc or "?" in value or "#" in value or "\\" in value:
        return None
    host = (parts.hostname or "").lower()
    if not host:
        return None
    if ":" in host:  # an IPv6 literal
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return None
    elif not _HOST.match(host):
        return None
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def _allowed_origins(configured: Iterable[str]) -> frozenset[str]:
    allowed = set()
    for entry in configured:
        canonical = canonical_origin(entry)
        if canonical is None:
            raise ValueError(f"cors_allow_origins: {entry!r} is not an origin (scheme://host[:port])")
        allowed.add(canonical)
    return frozenset(allowed)


class CorsMiddleware:
    """Exact-match CORS for a credentialed (bearer-token) API.

    A request's Origin is allowed only when it is byte-for-byte one of the configured origins in
    canonical form — which is how browsers serialise origins. Anything else (uppercase, an explicit
    default port, a trailing dot, `null`, a look-alike) never matches. Every response gets
    `Vary: Origin`, so no cache can hand one origin's answer to another.
    """

    def __init__(self, app: ASGIApp, *, allow_origins: Iterable[str]) -> None:
        self.app = app
        self.allow_origins = _allowed_origins(allow_origins)
        self._allow_methods = ", ".join(CORS_ALLOW_METHODS).encode()
        self._allow_headers = ", ".join(CORS_ALLOW_HEADERS).encode()
        self._allowed_request_headers = frozenset(h.lower() for h in CORS_ALLOW_HEADERS) | _SAFELISTED_REQUEST_HEADERS

    def _origin(self, scope: Scope) -> tuple[bool, str | None]:
        """(carries an Origin header, the allowed origin or None)."""
        values = _header_values(scope, b"origin")
        if not values:
            return False, None
        if len(values) != 1:
            return True, None
        origin = values[0].decode("latin-1")
        return True, origin if origin in self.allow_origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carries_origin, origin = self._origin(scope)
        request_method = _header_values(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and carries_origin and request_method:
            await self._preflight(scope, receive, send, origin, request_method)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Only this layer speaks CORS: whatever an inner layer said is dropped.
                headers = [(k, v) for k, v in message.get("headers", ()) if not k.lower().startswith(b"access-control-")]
                headers = _add_vary(headers, b"Origin")
                if origin is not None:
                    headers += [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-allow-credentials", b"true"),
                        (b"access-control-expose-headers", ", ".join(CORS_EXPOSE_HEADERS).encode()),
                    ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, origin: str | None, method: list[bytes]) -> None:
        vary = {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
        requested_headers = {
            h.strip().lower()
            for value in _header_values(scope, b"access-control-request-headers")
            for h in value.decode("latin-1").split(",")
            if h.strip()
        }
        if (
            origin is None
            or len(method) != 1
            or method[0].decode("latin-1") not in CORS_ALLOW_METHODS  # case-sensitive, as browsers compare
            or not requested_headers <= self._allowed_request_headers
        ):
            refusal = problems.problem(403, detail="This cross-origin request is not allowed.", headers=vary)
            await _answer(refusal, scope, receive, send)
            return
        response = Response(
            status_code=204,
            headers={
                **vary,
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": self._allow_methods.decode(),
                "Access-Control-Allow-Headers": self._allow_headers.decode(),
                "Access-Control-Max-Age": str(CORS_MAX_AGE_SECONDS),
            },
        )
        await _answer(response, scope, receive, send)


# --- parameter pollution -----------------------------------------------------------------------

# (path template, parameter name) pairs whose parameter may repeat, i.e. a route declares it as a
# list (`Annotated[list[str], Query()]`). Nothing in Palisade does today; add the route here when
# one does. The template matches the whole route path (no subtree).
REPEATABLE_QUERY_PARAMS: tuple[tuple[str, str], ...] = ()

_NAME_SHOWN_CHARS = 64


def _base_name(name: str) -> str:
    # `a[]`, `a[0]`, `a[x]` are `a` to PHP/Rails-style parsers (and some WAFs/proxies): same parameter.
    return name.split("[", 1)[0]


def repeated_query_params(query_string: bytes) -> list[str]:
    """Parameter names (bracket suffixes folded) that occur more than once, parsed as Starlette does."""
    names = Counter(_base_name(name) for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    return [name for name, count in names.items() if count > 1]


class AllowedHostsMiddleware:
    """Only the configured host names are served: anything else is a 421 before routing.

    The `Host` header (HTTP/1.1) or `:authority` (HTTP/2, which uvicorn maps to the same header)
    is compared exactly, case-insensitively, port ignored. What is refused is never echoed back.
    """

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.strip().lower().rstrip(".") for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.hosts or scope["path"].startswith("/health/"):
            await self.app(scope, receive, send)
            return
        values = _header_values(scope, b"host")
        host = values[0].decode("latin-1").strip().lower() if len(values) == 1 else ""
        if host.startswith("["):  # an IPv6 literal never names this service
            host = ""
        host = host.rsplit(":", 1)[0].rstrip(".")
        if host in self.hosts:
            await self.app(scope, receive, send)
            return
        refusal = problems.problem(421, detail="This host name is not served here.")
        await _answer(refusal, scope, receive, send)


class ParameterPollutionMiddleware:
    """A query parameter given twice (`?limit=1&limit=2`, `?a=1&a[]=2`) is a 400, before routing.

    Frameworks disagree on which copy wins (first, last, all); a WAF or audit log reading one copy
    while the app reads another is how filters are bypassed. So there is only ever one.
    """

    def __init__(self, app: ASGIApp, *, repeatable: Iterable[tuple[str, str]] = REPEATABLE_QUERY_PARAMS) -> None:
        self.app = app
        self.repeatable = tuple((_template_regex(template, subtree=False), name) for template, name in repeatable)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        repeated = repeated_query_params(scope["query_string"])
        if repeated and self.repeatable:
            path = _route_path(scope)
            allowed = {name for regex, name in self.repeatable if regex.match(path)}
            repeated = [name for name in repeated if name not in allowed]
        if not repeated:
            await self.app(scope, receive, send)
            return
        errors = [
            {"loc": ["query", name[:_NAME_SHOWN_CHARS]], "msg": "repeated", "type": "query_param_repeated"}
            for name in repeated
        ]
        refusal = problems.problem(400, detail="A query parameter is given more than once.", errors=errors)
        await _answer(refusal, scope, receive, send)


# --- body size -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BodyLimitRule:
    template: str
    regex: re.Pattern[str]
    limit_setting: str
    overhead_bytes: int


_BODY_LIMIT_RULES: list[_BodyLimitRule] = []


def register_body_limit(template: str, limit_setting: str, *, overhead_bytes: int = 0) -> None:
    """Give a path subtree its own body limit: an integer Settings field, plus `overhead_bytes`.

    `template` is a path like FastAPI's, `{name}` matching one segment; the rule covers the path and
    everything under it: `register_body_limit("/api/v1/tenants/{tenant_id}/workspaces/{workspace_id}/files",
    "upload_max_bytes", overhead_bytes=16_384)` (the overhead: multipart framing around a file of up
    to `upload_max_bytes`). The first registered rule that matches wins; otherwise `max_body_bytes`.
    Registering the same rule again is a no-op (module reloads); another limit for a template is an error.
    """
    field = Settings.model_fields.get(limit_setting)
    if field is None or field.annotation is not int:
        raise ValueError(f"{limit_setting!r} is not an integer setting")
    if overhead_bytes < 0:
        raise ValueError("overhead_bytes must not be negative")
    for rule in _BODY_LIMIT_RULES:
        if rule.template == template:
            if (rule.limit_setting, rule.overhead_bytes) != (limit_setting, overhead_bytes):
                raise ValueError(f"{template!r} already has the body limit {rule.limit_setting!r} + {rule.overhead_bytes}")
            return
    _BODY_LIMIT_RULES.append(_BodyLimitRule(template, _template_regex(template, subtree=True), limit_setting, overhead_bytes))


def body_limit_for(path: str, settings: Settings) -> int:
    """The body limit (bytes) for a route path (without root_path)."""
    for rule in _BODY_LIMIT_RULES:
        if rule.regex.match(path):
            return int(getattr(settings, rule.limit_setting)) + rule.overhead_bytes
    return settings.max_body_bytes


class _BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413)


def _too_large(limit: int) -> Response:
    # Connection: close — the server need not read (or drain) the rest of a body nobody wants.
    return problems.problem(
        413, detail=f"The request body is larger than {limit} bytes.", max_body_bytes=limit, headers={"Connection": "close"}
    )


class BodyLimitMiddleware:
    """Request bodies over the limit are refused before anything reads or parses them."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit_for(_route_path(scope), self.settings)
        lengths = _header_values(scope, b"content-length")
        if lengths:
            if len(lengths) != 1 or not lengths[0].strip().isdigit():
                await _answer(problems.problem(400, detail="The Content-Length header is not valid."), scope, receive, send)
                return
            if int(lengths[0]) > limit:
                await _answer(_too_large(limit), scope, receive, send)
                return

        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                raise _BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # The chunk that crosses the limit is withheld: the app has seen at most `limit` bytes.
                    refused = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # whatever the app answers to the refusal is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused or started:
                raise
        if refused and not started:
            await _answer(_too_large(limit), scope, receive, send)


# --- security headers (outermost) ----------------------------------------------------------------


class SecurityHeadersMiddleware:
    """Stamps the security headers on every `http.response.start`, whoever produced it."""

    def __init__(self, app: ASGIApp, *, hsts: str, docs_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.hsts = hsts.encode("latin-1")
        self.docs_paths = frozenset(docs_paths)

    def _headers(self, headers: Iterable[tuple[bytes, bytes]], *, tls: bool, csp: str) -> list[tuple[bytes, bytes]]:
        out = _strip(headers, _OWNED_HEADERS)
        out += _FIXED_HEADERS
        out.append((_CSP, csp.encode("latin-1")))
        if tls:
            out.append((_HSTS, self.hsts))
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = _arrived_over_tls(scope)
        docs = _route_path(scope) in self.docs_paths
        held: Message | None = None
        chunks: list[bytes] = []
        size = 0

        async def flush(csp: str, last: Message) -> None:
            nonlocal held
            assert held is not None
            start, held = held, None
            await send({**start, "headers": self._headers(start.get("headers", ()), tls=tls, csp=csp)})
            await send({**last, "body": b"".join(chunks)})

        async def send_with_headers(message: Message) -> None:
            nonlocal held, size
            if message["type"] == "http.response.start":
                if docs and message.get("status") == 200 and _is_html(message.get("headers", ())):
                    held = message  # the policy depends on the page's inline scripts: wait for the body
                    return
                message = {**message, "headers": self._headers(message.get("headers", ()), tls=tls, csp=API_CSP)}
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if not message.get("more_body", False):
                    await flush(docs_csp(_INLINE_SCRIPT.findall(b"".join(chunks))), message)
                    return
                if size > _DOCS_BUFFER_LIMIT:
                    await flush(API_CSP, message)
                    return
                return
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_html(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.lower().startswith(b"text/html") for k, v in headers)


def _hsts_value(settings: Settings) -> str:
    value = f"max-age={settings.hsts_max_age_seconds}; includeSubDomains"
    return value + "; preload" if settings.hsts_preload else value


# --- installation --------------------------------------------------------------------------------

def install(app: FastAPI, settings: Settings) -> None:
    """Add the edge middlewares to `app` (call once, after `create_app()`, before it serves).

    Configuration errors (a malformed CORS origin or proxy CIDR) raise here, at startup.
    """
    if app.middleware_stack is not None:
        raise RuntimeError("install() must run before the app serves its first request")
    if getattr(app.state, "edge_http_installed", False):
        raise RuntimeError("the edge middlewares are already installed on this app")
    _check_networks(settings.trusted_proxies, "trusted_proxies")
    _check_networks(settings.cloudflare_ranges, "cloudflare_ranges")
    origins = _allowed_origins(settings.cors_allow_origins)  # validated now, not on the first request

    docs_paths = set()
    if app.openapi_url and app.docs_url:
        docs_paths.add(app.docs_url)
        if app.swagger_ui_oauth2_redirect_url:
            docs_paths.add(app.swagger_ui_oauth2_redirect_url)

    # Innermost user middlewares: inside the correlation id (and everything else create_app added).
    app.user_middleware.append(Middleware(AllowedHostsMiddleware, hosts=settings.allowed_hosts))
    app.user_middleware.append(Middleware(CorsMiddleware, allow_origins=origins))
    app.user_middleware.append(Middleware(ParameterPollutionMiddleware))
    app.user_middleware.append(Middleware(BodyLimitMiddleware, settings=settings))

    # Outside everything, Starlette's ServerErrorMiddleware (the bare 500) and tracing included.
    build_inner: Callable[[], ASGIApp] = app.build_middleware_stack
    hsts = _hsts_value(settings)

    def build_middleware_stack() -> ASGIApp:
        return SecurityHeadersMiddleware(build_inner(), hsts=hsts, docs_paths=docs_paths)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
    app.state.edge_http_installed = True


def add_inner_middleware(app: FastAPI, middleware_class: Any, **options: Any) -> None:
    """Add a middleware just outside the body-size cap: the design's rate-limit / fair-share slot
    (after the parameter-pollution guard, before body validation). Call after `install()`."""
    if app.middleware_stack is not None:
        raise RuntimeError("middleware must be added before the app serves its first request")
    for index, entry in enumerate(app.user_middleware):
        if entry.cls is BodyLimitMiddleware:
            app.user_middleware.insert(index, Middleware(middleware_class, **options))
            return
    raise RuntimeError("install() has not run on this app")
