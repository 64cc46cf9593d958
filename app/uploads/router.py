"""HTTP for uploaded files: a streamed, capped multipart receiver, the routes, and safe serving.

The body is never handed to a framework parser that spools it whole (FastAPI's `UploadFile` writes
any size to a temporary file first). `receive_upload` reads the request stream itself, feeds a
streaming multipart parser, and stops at the purpose's cap. It runs after the bearer token is
verified but before the workspace dependency opens the database transaction, so a slow or huge
upload never holds a pooled connection. Whatever it finds wrong is handed on, not raised: the
refusal is answered (and audited in the caller's tenant) only after the caller is known to be a
member of the workspace with the right role, so a non-member learns nothing but 404.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response, status
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app import idempotency
from app.audit.service import Category, record_detached
from app.auth.dependencies import Caller
from app.authz.dependencies import WorkspaceViewer, WorkspaceWriter
from app.authz.scope import WorkspaceScope
from app.db.dependencies import DbSession
from app.edge.http import register_body_limit
from app.uploads import service
from app.uploads.inspect import ALLOWED, Purpose, RawUpload, UploadRefused, max_bytes, too_large
from app.uploads.schemas import FilePage, FileRead

router = APIRouter(prefix="/tenants/{tenant_id}/workspaces/{workspace_id}/files", tags=["files"])

FIELD = "file"
# Multipart framing (boundaries, the part's headers) allowed on top of the file itself.
FRAMING_ALLOWANCE = 16 * 1024
# Where `app.main` mounts the API router. The edge's global body cap (`max_body_bytes`) is lifted to
# the upload cap for these routes only; should the mount point ever move, the rule stops matching
# and uploads fall back to the (smaller) global cap: it fails closed. Our own cap below holds
# whatever the edge lets through.
API_PREFIX = "/api/v1"
register_body_limit(API_PREFIX + router.prefix, "upload_max_bytes", overhead_bytes=FRAMING_ALLOWANCE)
_BOUNDARY = re.compile(rb"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")  # RFC 2046 bchars
_MAX_PART_HEADERS = 8
_MAX_HEADER_BYTES = 4096

_MEDIA_TYPES = {t.media_type: t for types in ALLOWED.values() for t in types}
# Served with every file: never sniffed, never run, never cached, never embedded cross-origin.
_SAFE_SERVING = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "string", "format": "binary"}},
                    # The reader takes exactly this one part; anything else is refused.
                    "additionalProperties": False,
                }
            }
        },
    }
}


def _refused(refusal: UploadRefused) -> RawUpload:
    return RawUpload(filename=None, declared_type=None, data=b"", refusal=refusal)


def _malformed(detail: str) -> RawUpload:
    return _refused(UploadRefused(detail, reason="malformed_body"))


class _Part:
    """Collects the single file part from the streaming parser, within the cap."""

    def __init__(self, *, purpose: Purpose, limit: int) -> None:
        self.purpose, self.limit = purpose, limit
        self.parts = 0
        self.headers: dict[bytes, bytes] = {}
        self.field = bytearray()
        self.value = bytearray()
        self.filename: str | None = None
        self.declared_type: str | None = None
        self.data = bytearray()
        self.ended = False
        self.refusal: UploadRefused | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.part_begin, "on_header_field": self.header_field,
            "on_header_value": self.header_value, "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished, "on_part_data": self.part_data, "on_end": self.end,
        }

    def refuse(self, refusal: UploadRefused) -> None:
        self.refusal = self.refusal or refusal

    def part_begin(self) -> None:
        self.parts += 1
        self.headers = {}
        if self.parts > 1:
            self.refuse(UploadRefused(f"Send exactly one part: the file, in a field named '{FIELD}'.", reason="malformed_body"))

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[bytes(self.field).strip().lower()] = bytes(self.value).strip()
        self.field, self.value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        disposition, options = parse_options_header(self.headers.get(b"content-disposition"))
        if disposition != b"form-data" or options.get(b"name") != FIELD.encode():
            self.refuse(UploadRefused(f"Send the file in a form field named '{FIELD}'.", reason="malformed_body"))
            return
        if b"filename" not in options:
            self.refuse(UploadRefused(f"The field '{FIELD}' must carry a file, with a file name.", reason="no_filename"))
            return
        try:
            # Header bytes arrive as sent; browsers send the name as raw UTF-8.
            self.filename = options[b"filename"].decode("utf-8")
        except UnicodeDecodeError:
            self.refuse(UploadRefused("The file name is not valid UTF-8.", reason="no_filename"))
            return
        declared = self.headers.get(b"content-type")
        self.declared_type = declared.decode("latin-1") if declared else None

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.refusal is not None:
            return
        if len(self.data) + (end - start) > self.limit:
            self.refuse(too_large(self.purpose, self.limit))
            return
        self.data += data[start:end]

    def end(self) -> None:
        self.ended = True


async def receive_upload(request: Request, purpose: Annotated[Purpose, Query()]) -> RawUpload:
    """The request's one file part, read in chunks and never past the purpose's cap."""
    limit = max_bytes(purpose, request.app.state.settings.upload_max_bytes)
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        return _refused(UploadRefused(f"Send the file as multipart/form-data, in a field named '{FIELD}'.",
                                      reason="not_multipart", status=415))
    boundary = options.get(b"boundary", b"")
    if not _BOUNDARY.match(boundary):
        return _malformed("The multipart boundary is missing or not valid.")
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > limit + FRAMING_ALLOWANCE:
        return _refused(too_large(purpose, limit))  # refused without reading a byte

    part = _Part(purpose=purpose, limit=limit)
    parser = MultipartParser(boundary, part.callbacks(), max_header_count=_MAX_PART_HEADERS,
                             max_header_size=_MAX_HEADER_BYTES)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FRAMING_ALLOWANCE:
                return _refused(too_large(purpose, limit))
            parser.write(chunk)
            if part.refusal is not None:
                return _refused(part.refusal)
        parser.finalize()
    except FormParserError:
        return _malformed("The multipart body is not valid.")
    if part.refusal is not None:
        return _refused(part.refusal)
    if not part.ended or part.parts != 1:
        return _malformed(f"The multipart body is incomplete; send one file in a field named '{FIELD}'.")
    return RawUpload(filename=part.filename, declared_type=part.declared_type, data=bytes(part.data))


ReceivedUpload = Annotated[RawUpload, Depends(receive_upload)]


async def idempotent_upload(request: Request, session: DbSession, caller: Caller, upload: ReceivedUpload,
                            idempotency_key: idempotency.KeyHeader = None) -> None:
    """`Idempotency-Key` for an upload: the same file (name, declared type, content) is the same request."""
    body = [(upload.filename or "").encode(), (upload.declared_type or "").encode(), hashlib.sha256(upload.data).digest()]
    await idempotency.claim(request, session, caller, idempotency_key, body)


IdempotentUpload = Annotated[None, Depends(idempotent_upload)]


def _record_refusal(request: Request, scope: WorkspaceScope, purpose: Purpose, exc: UploadRefused) -> None:
    # The request's transaction rolls back with the refusal, so this goes in one of its own. No
    # chain lock is held by the request at this point: nothing was audited in it yet.
    record_detached(
        request.app.state.sessions, tenant_id=scope.tenant_id, actor=scope.actor(), meta=scope.meta,
        category=Category.content_change, action="file.upload", outcome="refused", workspace_id=scope.workspace_id,
        target_type="file", details={"purpose": purpose.value, "reason": exc.reason, "status": exc.status,
                                     "detail": exc.detail},
    )


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback name and the exact UTF-8 one (RFC 8187)."""
    # Accents dropped (é → e), anything else outside a safe ASCII set becomes "_".
    unaccented = "".join(ch for ch in unicodedata.normalize("NFKD", filename) if unicodedata.category(ch) != "Mn")
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", unaccented).strip(" .") or "file"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("", response_model=FilePage)
def list_files(
    scope: WorkspaceViewer,
    purpose: Purpose | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> FilePage:
    """Metadata, newest first; pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = service.list_files(scope, limit=limit, cursor=cursor, purpose=purpose)
    return FilePage(items=[FileRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=FileRead, openapi_extra=_MULTIPART_BODY)
def upload_file(request: Request, purpose: Annotated[Purpose, Query()], upload: ReceivedUpload, scope: WorkspaceWriter,
                _: IdempotentUpload) -> FileRead:
    """One file in the multipart field `file`. Knowledge files need member or above; brand assets admin or above.

    Stored only when the extension, the declared Content-Type and the content agree on a type the
    purpose allows, and the content passes that type's checks; SVG is stored as rebuilt from
    allow-lists. `content_type`, `size` and `sha256` describe what was stored.
    """
    try:
        stored, _ = service.store_upload(scope, purpose=purpose, upload=upload)
    except UploadRefused as exc:
        _record_refusal(request, scope, purpose, exc)
        raise
    return FileRead.model_validate(stored)


@router.get("/{file_id}", response_model=FileRead)
def get_file(file_id: uuid.UUID, scope: WorkspaceViewer) -> FileRead:
    return FileRead.model_validate(service.get_file(scope, file_id))


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses={200: {"description": "The stored bytes, as the detected type.", "content": {"application/octet-stream": {}}}},
)
def download_file(file_id: uuid.UUID, scope: WorkspaceViewer) -> Response:
    """The stored bytes. Raster images inline, everything else as an attachment; never sniffed or run."""
    stored = service.read_file(scope, file_id)
    file_type = _MEDIA_TYPES.get(stored.content_type)
    media_type = file_type.served_type if file_type else "application/octet-stream"
    disposition = "inline" if file_type and file_type.inline else "attachment"
    headers = {**_SAFE_SERVING, "Content-Disposition": content_disposition(disposition, stored.filename)}
    return Response(content=stored.content, media_type=media_type, headers=headers)


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_file(file_id: uuid.UUID, scope: WorkspaceWriter) -> None:
    service.delete_file(scope, file_id)
