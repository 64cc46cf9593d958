"""The streamed receiver at the ASGI level: the cap holds on a body of any length, chunk by chunk.

The test client hands the app a whole body at once, so these tests drive `receive_upload` with an
ASGI `receive` of their own that counts what the app pulled from the wire.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from app.uploads.inspect import Purpose, RawUpload
from app.uploads.router import FRAMING_ALLOWANCE, receive_upload

CAP = 64 * 1024
BOUNDARY = "palisade-test-boundary"
CHUNK = 16 * 1024


def part(*, name: str = "file", filename: bytes | None = b"notes.txt", content_type: str | None = "text/plain",
         extra_headers: Iterable[str] = ()) -> bytes:
    disposition = f'form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    lines = [b"--" + BOUNDARY.encode(), b"Content-Disposition: " + disposition]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}".encode())
    lines += [h.encode() for h in extra_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


END = f"\r\n--{BOUNDARY}--\r\n".encode()


class Wire:
    """An ASGI receive over chunks, counting what was taken."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks: Iterator[bytes] = iter(chunks)
        self.taken = 0

    async def receive(self) -> dict:
        chunk = next(self.chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.taken += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}


def receive(chunks: Iterable[bytes], *, content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
            content_length: int | None = None, purpose: Purpose = Purpose.knowledge) -> tuple[RawUpload, Wire]:
    app = SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(upload_max_bytes=CAP)))
    headers = [(b"content-type", content_type.encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    wire = Wire(chunks)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b"", "app": app}
    return asyncio.run(receive_upload(Request(scope, wire.receive), purpose)), wire


def body(*pieces: bytes) -> list[bytes]:
    data = b"".join(pieces)
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


class TestCap:
    def test_endless_body_stops_at_the_cap(self):
        endless = itertools.chain([part()], itertools.repeat(b"a" * CHUNK))
        upload, wire = receive(endless)
        assert upload.refusal is not None and upload.refusal.status == 413
        assert upload.refusal.detail == f"A knowledge file may be at most {CAP} bytes."
        assert wire.taken <= CAP + FRAMING_ALLOWANCE + CHUNK

    def test_declared_length_over_the_cap_reads_nothing(self):
        upload, wire = receive(itertools.repeat(b"a" * CHUNK), content_length=10 * CAP)
        assert upload.refusal is not None and upload.refusal.status == 413
        assert wire.taken == 0

    def test_one_byte_over(self):
        upload, _ = receive(body(part(), b"a" * (CAP + 1), END))
        assert upload.refusal is not None and upload.refusal.reason == "too_large"

    def test_exactly_the_cap(self):
        upload, _ = receive(body(part(), b"a" * CAP, END))
        assert upload.refusal is None
        assert (upload.filename, upload.declared_type, len(upload.data)) == ("notes.txt", "text/plain", CAP)

    def test_brand_assets_have_their_own_smaller_cap(self):
        app_cap = CAP  # below 2 MiB, so the brand cap is the setting here
        upload, _ = receive(body(part(filename=b"l.png", content_type="image/png"), b"a" * (app_cap + 1), END),
                            purpose=Purpose.brand_asset)
        assert upload.refusal is not None and upload.refusal.detail == f"A brand asset may be at most {app_cap} bytes."


class TestFraming:
    def test_utf8_file_name_and_bytes_as_sent(self):
        upload, _ = receive(body(part(filename="Café – notes.txt".encode()), b"\x00\xffbinary", END))
        assert (upload.filename, upload.data) == ("Café – notes.txt", b"\x00\xffbinary")

    def test_no_declared_type_is_passed_on_as_none(self):
        upload, _ = receive(body(part(content_type=None), b"x", END))
        assert upload.refusal is None and upload.declared_type is None

    @pytest.mark.parametrize(("chunks", "reason"), [
        (body(part(), b"one", b"\r\n", part(filename=b"two.txt"), b"two", END), "malformed_body"),
        (body(part(name="upload"), b"x", END), "malformed_body"),
        (body(part(filename=None), b"x", END), "no_filename"),
        (body(part(filename=b"caf\xe9.txt"), b"x", END), "no_filename"),
        (body(part(), b"no closing boundary"), "malformed_body"),
        (body(part(extra_headers=[f"X-H{i}: v" for i in range(20)]), b"x", END), "malformed_body"),
        (body(b"garbage without any boundary"), "malformed_body"),
    ], ids=["two_parts", "wrong_field", "not_a_file", "non_utf8_name", "truncated", "header_flood", "garbage"])
    def test_refused(self, chunks, reason):
        upload, _ = receive(chunks)
        assert upload.refusal is not None and upload.refusal.reason == reason

    @pytest.mark.parametrize(("content_type", "status"), [
        ("application/octet-stream", 415), ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data", 400), ("multipart/form-data; boundary=" + "b" * 71, 400),
    ])
    def test_request_content_type(self, content_type, status):
        upload, wire = receive(body(part(), b"x", END), content_type=content_type)
        assert upload.refusal is not None and upload.refusal.status == status
        assert wire.taken == 0
