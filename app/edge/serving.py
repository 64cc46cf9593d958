"""The HTTP server's own limits: what a connection may cost before the app sees a request.

One place for `palisade serve`, `palisade dev` and the benchmarks, so what is measured is what runs.
uvicorn with its h11 protocol, because h11 bounds what it buffers before a request is complete
(the request line and headers together: `h11_max_incomplete_event_size`); uvicorn's faster
httptools parser has no such bound, and accepted 64 MiB of headers. What the server refuses this
way it answers itself, 400 in plain text (the app never sees the request, so it cannot answer
with a problem document). A connection idle between requests is closed after
`timeout_keep_alive`; more than `limit_concurrency` connections and requests in flight get 503.
Not bounded here: how slowly a client may send one request's headers (uvicorn has no header
timeout); the front end does that (nginx's `client_header_timeout` on-prem; on Azure, where the
API has no ingress and its only client is the cloudflared sidecar, Cloudflare's edge).
"""

from __future__ import annotations

from typing import Any

from app.config import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run`: limits, no server banner, no proxy headers, our logging."""
    return {
        "http": "h11",
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_concurrency,
        # The app reads the client address itself (app/edge/client.py): uvicorn must not rewrite it.
        "proxy_headers": False,
        "server_header": False,
        # The app's own logging setup (JSON, scrubbed) takes uvicorn's loggers too.
        "log_config": None,
    }
