"""The request's database session: the request owns the transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session


def _session(request: Request) -> Iterator[Session]:
    # Commits when the handler returns, rolls back if it raises; both before the response is sent.
    with request.app.state.sessions() as session, session.begin():
        yield session


DbSession = Annotated[Session, Depends(_session, scope="function")]
