"""Who is on the other end: the client's address (believed only from trusted proxies), user agent,
correlation id.

The peer address is the truth unless the peer is a proxy we were told to trust:
- a configured Cloudflare range may name the client in `CF-Connecting-IP`;
- a configured trusted proxy (the on-prem nginx, the Azure ingress) appends to `X-Forwarded-For`;
  walking that list from the right, the first address that is not itself a trusted proxy is the
  client. Everything to its left was written by the client and is ignored.
Anyone else's forwarding headers are ignored, so a spoofed `X-Forwarded-For` changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request

from app.audit.service import RequestMeta

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(value: str | None) -> IPAddress | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    # An IPv4-mapped IPv6 peer is the IPv4 client it wraps.
    return address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address


@lru_cache(maxsize=32)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def _within(address: IPAddress, networks: Iterable[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def peer_address(request: Request) -> IPAddress | None:
    return _address(request.client.host) if request.client else None


def from_trusted_proxy(request: Request) -> bool:
    """Did this request come straight from a proxy whose forwarding headers we believe?"""
    settings = request.app.state.settings
    peer = peer_address(request)
    return peer is not None and _within(peer, _networks(tuple(settings.trusted_proxies)) + _networks(tuple(settings.cloudflare_ranges)))


def client_address(request: Request) -> IPAddress | None:
    """The client's address, as far as trusted proxies vouch for it."""
    settings = request.app.state.settings
    peer = peer_address(request)
    if peer is None:
        return None
    cloudflare = _networks(tuple(settings.cloudflare_ranges))
    trusted = _networks(tuple(settings.trusted_proxies))
    nearest = peer
    if _within(peer, trusted):
        hops = [_address(part) for header in request.headers.getlist("x-forwarded-for") for part in header.split(",")]
        for hop in reversed(hops):
            if hop is None:
                break  # a malformed entry: believe nothing to its left
            nearest = hop
            if not _within(hop, trusted):
                break
    # Behind Cloudflare (directly, or through our own ingress) Cloudflare names the client.
    if _within(nearest, cloudflare):
        return _address(request.headers.get("cf-connecting-ip")) or nearest
    return nearest


def request_meta(request: Request) -> RequestMeta:
    address = client_address(request)
    return RequestMeta(
        client_ip=str(address) if address else None,
        user_agent=request.headers.get("user-agent"),
        correlation_id=getattr(request.state, "correlation_id", None),
    )


Meta = Annotated[RequestMeta, Depends(request_meta)]
