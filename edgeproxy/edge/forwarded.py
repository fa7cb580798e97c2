"""Client IP, scheme and host from X-Forwarded-* headers, only when a trusted proxy sent them.

aiohttp-remotes' ``XForwardedFiltered`` picks the right address out of the header but does not
check who sent the header; a client talking to us directly could name any IP. So the headers are
honoured only when the TCP peer itself is in ``server.trusted_proxies`` (nginx, a load balancer).
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp_remotes import XForwardedFiltered

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def forwarded_middleware(trusted: list[str]):
    networks = [ipaddress.ip_network(t, strict=False) for t in trusted]
    filtered = XForwardedFiltered({str(n) for n in networks})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        try:
            peer_ip = ipaddress.ip_address(peer[0]) if peer else None
        except ValueError:
            peer_ip = None
        if peer_ip is not None and any(peer_ip in n for n in networks):
            return await filtered.middleware(request, handler)
        return await handler(request)

    return middleware
