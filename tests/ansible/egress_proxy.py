"""The test host's only way out: an HTTP proxy that forwards to allow-listed hosts and refuses the rest.

Plain HTTP requests (absolute-form, as apt sends them through a proxy) go to port 80 of an allowed
host, one request per connection; CONNECT tunnels go to port 443 of an allowed host. Everything else
gets 403 and is recorded in `refused`, so a test can show what the host tried to reach.
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import threading
from urllib.parse import urlsplit

HOP_BY_HOP = {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"te", b"upgrade"}
MAX_HEADER_BYTES = 64 * 1024


class EgressProxy:
    def __init__(self, address: str, port: int, allowed_hosts: set[str]) -> None:
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.forwarded: list[str] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 120

            def handle(self) -> None:
                proxy._handle(self)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((address, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="egress-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EgressProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _record(self, allowed: bool, what: str) -> None:
        with self._lock:
            (self.forwarded if allowed else self.refused).append(what)

    def _handle(self, handler: socketserver.StreamRequestHandler) -> None:
        request_line = handler.rfile.readline(8192)
        if not request_line:
            return
        headers: list[bytes] = []
        size = 0
        while True:
            line = handler.rfile.readline(8192)
            size += len(line)
            if not line or line in (b"\r\n", b"\n") or size > MAX_HEADER_BYTES:
                break
            headers.append(line)
        try:
            method, target, _version = request_line.decode("latin-1").split()
        except ValueError:
            handler.wfile.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            self._tunnel(handler, host.strip("[]").lower(), int(port or 0))
        else:
            self._forward(handler, method, target, headers)

    def _refuse(self, handler: socketserver.StreamRequestHandler, what: str) -> None:
        self._record(False, what)
        handler.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _tunnel(self, handler: socketserver.StreamRequestHandler, host: str, port: int) -> None:
        what = f"CONNECT {host}:{port}"
        if host not in self.allowed_hosts or port != 443:
            self._refuse(handler, what)
            return
        try:
            upstream = socket.create_connection((host, port), timeout=30)
        except OSError:
            handler.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self._record(True, what)
        handler.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        handler.wfile.flush()
        # The client speaks only after the 200, so nothing of its TLS stream sits in rfile's buffer.
        _relay(handler.connection, upstream)

    def _forward(self, handler: socketserver.StreamRequestHandler, method: str, target: str, headers: list[bytes]) -> None:
        url = urlsplit(target)
        host = (url.hostname or "").lower()
        what = f"{method} {target}"
        if url.scheme != "http" or host not in self.allowed_hosts or (url.port or 80) != 80:
            self._refuse(handler, what)
            return
        try:
            upstream = socket.create_connection((host, 80), timeout=60)
        except OSError:
            handler.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self._record(True, what)
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        kept = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP]
        length = 0
        for h in kept:
            name, _, value = h.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + b"".join(kept) + b"Connection: close\r\n\r\n"
        with upstream:
            upstream.sendall(head)
            if length:
                upstream.sendall(handler.rfile.read(length))
            while chunk := upstream.recv(65536):
                handler.wfile.write(chunk)
        handler.wfile.flush()


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    with upstream:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in sel.select(timeout=300):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
