"""`Idempotency-Key` on creating POSTs: a retry returns the original response and creates nothing.

Why (issue 15): a create that committed while its response was lost was duplicated by the
client's retry. With `Idempotency-Key: <16-255 visible ASCII characters, e.g. a random UUID>`:

- The first request claims the key in its own transaction: the claim row (`idempotency_keys`,
  migration 0009) commits or rolls back together with what the request creates. A request that
  fails (any 4xx/5xx) leaves no claim, so retrying it runs it again.
- A retry with the same key and the same request (method, path, query, content type and body)
  gets the original status and body back, with `Idempotent-Replayed: true`, and creates nothing.
- The same key with a different request is 422. A retry that arrives while the original's
  response is still being stored (between its commit and the store, a few milliseconds) gets 409
  with `Retry-After: 1`; a concurrent duplicate waits for the original's transaction first (the
  claim's unique key), bounded by the database's lock_timeout (then 503).
- Keys are per tenant and per caller (issuer and subject): nobody else's key can ever match.
  Vendor staff's tenant creations are keyed under the platform tenant. Keys expire after
  `PALISADE_IDEMPOTENCY_KEY_HOURS` (24); an expired key may be reused, for a new request.

What is stored: never the key. HKDF-SHA256 over the key (with the tenant and caller as context)
derives the row's id, a key for an HMAC-SHA256 of the request, and an AES-256-GCM key that seals
the response (AAD: the tenant and the row's id). A reader of the table without the Idempotency-Key learns neither the response
(which may hold a one-time invitation token) nor the request; that is as strong as the key the
client chose, hence the 16-character minimum (send a random UUID).

Limit: if the process dies between the create's commit and storing its response, a retry gets
409 until the key expires (look the resource up instead); nothing is created twice.
Uses `cryptography` (HKDF, HMAC, AES-GCM), as the envelope encryption does.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import problems
from app.audit.chain import PLATFORM_TENANT
from app.auth.dependencies import Caller
from app.auth.principal import Principal
from app.db.dependencies import DbSession
from app.db.session import DbContext, apply_context

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
_STATE = "idempotency"
_REPLAYED_HEADERS = ("content-type", "location")
_PRUNE_EVERY = 600.0  # seconds between one tenant's prunes, per process
_PRUNE_BATCH = 200


class KeyMismatch(Exception):
    """The key was used for a different request."""


class ResponsePending(Exception):
    """The key's request committed; its response is not stored (yet)."""


class Replay(Exception):
    """The key's request completed: answer with its response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__("replay")
        self.status, self.headers, self.body = status, headers, body


@dataclass(frozen=True)
class _Keys:
    """What one Idempotency-Key derives, for one tenant and caller."""

    digest: str  # the row's id
    mac_key: bytes  # for the request's fingerprint
    enc_key: bytes  # for the stored response

    @classmethod
    def derive(cls, key: str, tenant_id: uuid.UUID, principal: Principal) -> _Keys:
        context = b"\0".join(p.encode("utf-8", "surrogatepass") for p in (str(tenant_id), principal.issuer, principal.subject))
        material = HKDF(algorithm=hashes.SHA256(), length=96, salt=None,
                        info=b"palisade idempotency v1\0" + context).derive(key.encode("ascii"))
        return cls(digest=material[:32].hex(), mac_key=material[32:64], enc_key=material[64:])

    def fingerprint(self, parts: list[bytes]) -> str:
        mac = hmac.HMAC(self.mac_key, hashes.SHA256())
        for part in parts:
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.finalize().hex()

    def seal(self, tenant_id: uuid.UUID, status: int, headers: dict[str, str], body: bytes) -> bytes:
        head = "\n".join([str(status), *(f"{k}:{v}" for k, v in headers.items())]).encode("latin-1")
        plain = len(head).to_bytes(4, "big") + head + body
        nonce = os.urandom(12)
        return nonce + AESGCM(self.enc_key).encrypt(nonce, plain, self._aad(tenant_id))

    def open(self, tenant_id: uuid.UUID, sealed: bytes) -> tuple[int, dict[str, str], bytes]:
        plain = AESGCM(self.enc_key).decrypt(sealed[:12], sealed[12:], self._aad(tenant_id))
        size = int.from_bytes(plain[:4], "big")
        status, *lines = plain[4:4 + size].decode("latin-1").split("\n")
        headers = dict(line.split(":", 1) for line in lines)
        return int(status), headers, plain[4 + size:]

    def _aad(self, tenant_id: uuid.UUID) -> bytes:
        return f"idempotency_keys|{tenant_id}|{self.digest}".encode()


@dataclass(frozen=True)
class Claim:
    """A key this request holds: its response is stored before the last bytes are sent."""

    tenant_id: uuid.UUID
    keys: _Keys


_CLAIM = text(
    "insert into idempotency_keys as k (tenant_id, key_digest, caller_issuer, caller_subject, fingerprint, expires_at)"
    " values (:tenant_id, :digest, :issuer, :subject, :fingerprint, now() + make_interval(hours => :hours))"
    " on conflict (tenant_id, key_digest) do update"
    "   set fingerprint = excluded.fingerprint, response = null, created_at = now(), expires_at = excluded.expires_at"
    "   where k.expires_at <= now()"
    " returning true"
)
_FIND = text("select fingerprint, response from idempotency_keys where tenant_id = :tenant_id and key_digest = :digest")
_STORE = text("update idempotency_keys set response = :response where tenant_id = :tenant_id and key_digest = :digest")
_PRUNE = text(
    "delete from idempotency_keys where tenant_id = :tenant_id and ctid = any (array("
    " select ctid from idempotency_keys where tenant_id = :tenant_id and expires_at <= now() limit :batch))"
)

_pruned: dict[uuid.UUID, float] = {}
_pruned_lock = threading.Lock()


def _due_for_prune(tenant_id: uuid.UUID) -> bool:
    now = time.monotonic()
    with _pruned_lock:
        if now - _pruned.get(tenant_id, -_PRUNE_EVERY) < _PRUNE_EVERY:
            return False
        if len(_pruned) > 10_000:
            _pruned.clear()
        _pruned[tenant_id] = now
        return True


def _claim(session: Session, claim: Claim, principal: Principal, fingerprint: str, hours: int) -> None:
    """Claim the key in the request's transaction, or raise what a retry is answered with."""
    params = {"tenant_id": claim.tenant_id, "digest": claim.keys.digest}
    if _due_for_prune(claim.tenant_id):
        session.execute(_PRUNE, {"tenant_id": claim.tenant_id, "batch": _PRUNE_BATCH})
    claimed = session.execute(_CLAIM, {**params, "issuer": principal.issuer, "subject": principal.subject,
                                       "fingerprint": fingerprint, "hours": hours}).first()
    if claimed is not None:
        return
    row = session.execute(_FIND, params).one()
    if not secrets.compare_digest(row.fingerprint, fingerprint):
        raise KeyMismatch()
    if row.response is None:
        raise ResponsePending()
    raise Replay(*claim.keys.open(claim.tenant_id, row.response))


KeyHeader = Annotated[str | None, Header(
    alias=HEADER, min_length=16, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="Makes this create safe to retry: a retry with the same key and request returns the original "
                "response (with `Idempotent-Replayed: true`) and creates nothing; the same key with another "
                "request is 422. 16-255 visible ASCII characters; send a random UUID. Kept 24 hours.")]


async def claim(request: Request, session: Session, caller: Principal, key: str | None, body: list[bytes]) -> None:
    """Claim `key` for this request in the request's transaction (or raise what a retry is
    answered with). Call it after the route's access check, which set the tenant context. `body`:
    the request's content as the route received it; method, path, query and content type are added."""
    if key is None:
        return
    scope = getattr(request.state, "authz_scope", None)
    tenant_id = scope.tenant_id if scope is not None else PLATFORM_TENANT
    held = Claim(tenant_id, _Keys.derive(key, tenant_id, caller))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fingerprint = held.keys.fingerprint([request.method.encode(), request.url.path.encode(), request.url.query.encode(),
                                         content_type.encode(), *body])
    hours = request.app.state.settings.idempotency_key_hours

    def in_transaction() -> None:
        if scope is None:  # no tenant route (vendor staff creating a tenant): the platform's keys
            apply_context(session, DbContext(tenant_id=PLATFORM_TENANT))
        _claim(session, held, caller, fingerprint, hours)

    await run_in_threadpool(in_transaction)
    request.state.idempotency = held


async def idempotent(request: Request, session: DbSession, caller: Caller, idempotency_key: KeyHeader = None) -> None:
    """The dependency of every creating POST with a JSON body; declared last in the route's
    parameters, so the route's access check has run first."""
    await claim(request, session, caller, idempotency_key, [await request.body()])


Idempotent = Annotated[None, Depends(idempotent)]


def _store(app: FastAPI, claim: Claim, status: int, headers: dict[str, str], body: bytes) -> None:
    with app.state.sessions() as session, session.begin():
        apply_context(session, DbContext(tenant_id=claim.tenant_id))
        session.execute(_STORE, {"tenant_id": claim.tenant_id, "digest": claim.keys.digest,
                                 "response": claim.keys.seal(claim.tenant_id, status, headers, body)})


class IdempotencyMiddleware:
    """Stores the response of a request that claimed a key, before its last bytes are sent (2xx
    only: anything else rolled the claim back with the request's work)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status, headers, chunks = 0, {}, []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            claim: Claim | None = state.get(_STATE)
            if claim is not None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])
                               if k.decode("latin-1").lower() in _REPLAYED_HEADERS}
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False) and 200 <= status < 300:
                        # Stored before the last bytes go out: a client that loses the connection
                        # now finds the response on its retry.
                        await run_in_threadpool(_store, scope["app"], claim, status, headers, b"".join(chunks))
            await send(message)

        await self.app(scope, receive, capture)


def install(app: FastAPI) -> None:
    """The middleware (innermost: call after the edge's install) and what a retry is answered with."""
    app.user_middleware.append(Middleware(IdempotencyMiddleware))

    @app.exception_handler(Replay)
    async def _replay(request: Request, exc: Replay) -> Response:
        return Response(content=exc.body, status_code=exc.status, headers={**exc.headers, REPLAYED: "true"})

    @app.exception_handler(KeyMismatch)
    async def _mismatch(request: Request, exc: KeyMismatch) -> Response:
        # Shaped like every other 422 (the OpenAPI document's ValidationProblem): the field, named.
        return problems.problem(422, detail=f"This {HEADER} was used for a different request.",
                                errors=[{"loc": ["header", HEADER], "msg": "used for a different request",
                                         "type": "idempotency_key_reused"}], errors_total=1)

    @app.exception_handler(ResponsePending)
    async def _pending(request: Request, exc: ResponsePending) -> Response:
        return problems.problem(409, detail=f"The request with this {HEADER} was processed; its response is not "
                                            "available yet. Retry shortly, or look the resource up.",
                                headers={"Retry-After": "1"})
