"""A local Sentry-compatible ingest server: the real SDK sends its envelopes here."""

from __future__ import annotations

import gzip
import json
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk

from app.observability.sentry import init_sentry


@dataclass
class Ingest:
    """What a Sentry server received: decoded envelopes."""

    dsn: str
    envelopes: list[bytes] = field(default_factory=list)

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [
            json.loads(payload)
            for envelope in self.envelopes
            for header, payload in _items(envelope)
            if header.get("type") == kind
        ]


def _items(envelope: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Split an envelope: a header line, then per item a header line and a payload."""
    _, _, rest = envelope.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :].removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


class _IngestHandler(BaseHTTPRequestHandler):
    server: _IngestServer

    def do_POST(self) -> None:
        if not re.fullmatch(r"/api/\d+/envelope/", self.path):
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        encoding = self.headers.get("Content-Encoding", "identity")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # only sent when the SDK has it

            body = brotli.decompress(body)
        self.server.ingest.envelopes.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _IngestServer(ThreadingHTTPServer):
    ingest: Ingest


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    server = _IngestServer(("127.0.0.1", 0), _IngestHandler)
    server.ingest = Ingest(dsn=f"http://public0key@127.0.0.1:{server.server_address[1]}/42")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        init_sentry(dsn=server.ingest.dsn, environment="test", traces_sample_rate=1.0, release="palisade@test")
        yield server.ingest
    finally:
        # No client may outlive the test: close it, then leave a DSN-less SDK behind.
        sentry_sdk.get_client().close()
        sentry_sdk.init(dsn="", default_integrations=False, auto_enabling_integrations=False)
        server.shutdown()
        server.server_close()


