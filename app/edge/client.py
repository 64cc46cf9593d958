"""Who is on the other end of the connection: address, user agent, correlation id."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from app.audit.service import RequestMeta


def _peer_ip(request: Request) -> str | None:
    # The direct peer for now; trusted-proxy handling belongs to the edge issue.
    try:
        return str(ipaddress.ip_address(request.client.host)) if request.client else None
    except ValueError:
        return None


def request_meta(request: Request) -> RequestMeta:
    return RequestMeta(
        client_ip=_peer_ip(request),
        user_agent=request.headers.get("user-agent"),
        correlation_id=getattr(request.state, "correlation_id", None),
    )


Meta = Annotated[RequestMeta, Depends(request_meta)]
