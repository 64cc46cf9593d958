"""Domain errors raised below the HTTP layer; `app.problems` turns them into RFC 9457 responses."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    title = "Bad Request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail


class NotFound(DomainError):
    """Also what a caller sees for another tenant's row: existence never leaks."""

    status = 404
    title = "Not Found"


class Forbidden(DomainError):
    status = 403
    title = "Forbidden"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class Unauthenticated(DomainError):
    status = 401
    title = "Unauthorized"


class WouldWait(Exception):
    """A check asked not to wait (`wait=False`) would have had to wait for I/O to answer (e.g. a
    JWKS fetch in flight): the caller asks again where waiting is fine (a worker thread)."""
