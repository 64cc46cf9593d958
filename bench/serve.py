"""The app servers the HTTP benchmarks load: `python -m bench.serve CONFIG.json` (started by `bench.harness`).

Two kinds, served the same way: uvicorn, one process, with the server options `palisade serve`
uses (`app.edge.serving.server_options`: h11 with its header bound, keep-alive and concurrency
limits), access log off:

- `secured`: the real app, `app.main.create_app(Settings(**config["settings"]))`, every layer on.
- `bare`: one FastAPI route at the same path running the project's documents query
  (`app.knowledge.repository.latest_query`) with an explicit `WHERE tenant_id = …` as the admin role
  (which bypasses RLS), in one transaction on an engine from the project's `make_engine`, answering
  the same `DocumentPage` model. No authentication, no middleware, no rate limit, no RBAC.

The config is JSON: `kind`, `port`, then `settings` (secured) or `database_url` (bare), and
optionally `gc_log`, a file that gets one line per garbage collection of 5 ms or more.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Query

from app.config import Settings
from app.db.pagination import encode_cursor
from app.db.session import make_engine, make_session_factory
from app.edge.serving import server_options
from app.knowledge import repository as repo
from app.knowledge.models import Document
from app.knowledge.schemas import DocumentPage, DocumentRead
from app.main import create_app

DOCUMENTS_PATH = "/api/v1/tenants/{tenant_id}/workspaces/{workspace_id}/documents"


def bare_app(database_url: str, *, pool_size: int = 10) -> FastAPI:
    """The comparison: the same query and response model, tenant filtered in application code."""
    engine = make_engine(database_url, pool_size=pool_size)
    sessions = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/live")
    def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(DOCUMENTS_PATH, response_model=DocumentPage)
    def list_documents(tenant_id: uuid.UUID, workspace_id: uuid.UUID,
                       limit: Annotated[int, Query(ge=1, le=100)] = 50) -> DocumentPage:
        # As `knowledge.service.list_documents`: one row more than the page tells whether a next page exists.
        query = repo.latest_query(workspace_id=workspace_id, limit=limit + 1).where(Document.tenant_id == tenant_id)
        with sessions() as session, session.begin():
            docs = session.scalars(query).all()
        page = docs[:limit]
        return DocumentPage(items=[DocumentRead.model_validate(d) for d in page],
                            next_cursor=encode_cursor(page[-1]) if len(docs) > limit else None)

    return app


def build(config: dict[str, Any]) -> FastAPI:
    if config["kind"] == "secured":
        return create_app(Settings(_env_file=None, **config["settings"]))  # type: ignore[call-arg]
    if config["kind"] == "bare":
        return bare_app(config["database_url"], pool_size=config.get("pool_size", 10))
    raise ValueError(f"unknown server kind {config['kind']!r}")


def record_gc_pauses(path: Path, threshold: float = 0.005) -> None:
    """Append each garbage collection of at least `threshold` seconds to `path` (JSON lines:
    CLOCK_MONOTONIC end, generation, seconds), through the interpreter's public `gc.callbacks`."""
    started: dict[str, float] = {}
    out = path.open("a", buffering=1)

    def callback(phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            started["at"] = now
        elif "at" in started and now - started["at"] >= threshold:
            out.write(json.dumps({"at": now, "generation": info["generation"], "seconds": now - started["at"]}) + "\n")

    gc.callbacks.append(callback)


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[0]).read_text())
    if config.get("gc_log"):
        record_gc_pauses(Path(config["gc_log"]))
    options = server_options(Settings(_env_file=None, **config.get("settings", {})))  # type: ignore[call-arg]
    options.pop("log_config")  # the benchmark keeps uvicorn's quiet default logging
    uvicorn.run(build(config), host="127.0.0.1", port=int(config["port"]), workers=None, log_level="warning",
                access_log=False, lifespan="on", **options)


if __name__ == "__main__":
    main(sys.argv[1:])
