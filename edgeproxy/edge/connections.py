"""Connection-level limits aiohttp does not have: open connections per client IP, and a
deadline for a new connection's first request head (a slowloris client trickling header bytes).

``GuardedSite`` is aiohttp's ``TCPSite`` with its protocol factory wrapped: each connection
gets a small delegating protocol that refuses it when its address already holds
``max_per_ip`` connections (addresses in ``[server] trusted_proxies`` are exempt: behind
nginx every connection comes from it) and closes it when no complete request head
(``\\r\\n\\r\\n``) has arrived ``header_timeout`` seconds after it opened. Later requests on a
kept-alive connection are bounded by aiohttp's own keep-alive timer (``idle_timeout``), which
also closes a connection that is idle or sends a head too slowly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any, Callable, cast

from aiohttp import web

log = logging.getLogger("edgeproxy.connections")
HEAD_END = b"\r\n\r\n"


class ConnectionGuard:
    """The protocol factory: counts open connections per IP around aiohttp's own factory."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], *, max_per_ip: int, header_timeout: float,
                 exempt: list[str] | tuple[str, ...] = ()) -> None:
        self.factory = factory
        self.max_per_ip = max_per_ip
        self.header_timeout = header_timeout
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self.open: dict[str, int] = {}
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())

    def is_exempt(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)


class _Guarded(asyncio.Protocol):
    """Delegates every protocol call to aiohttp's RequestHandler, after the guard's checks."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.ip: str | None = None  # counted against the cap (None: exempt, or refused)
        self.head_seen = False
        self.tail = b""
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A TCP server's connection is a stream transport (uvloop's implement Transport's
        # methods without subclassing it, so this is a cast, not an isinstance check).
        transport = cast(asyncio.Transport, base)
        g = self.guard
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else ""
        self.transport = transport
        if not g.is_exempt(ip):
            if g.max_per_ip and g.open.get(ip, 0) >= g.max_per_ip:
                g.refused += 1
                log.warning("refusing a connection from %s: %d already open (server.max_connections_per_ip)",
                            ip, g.open[ip], extra={"client": ip, "reason": "too_many_connections"})
                self.inner = None
                transport.abort()
                return
            g.open[ip] = g.open.get(ip, 0) + 1
            self.ip = ip
        if g.header_timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(g.header_timeout, self._head_overdue)
        self.inner.connection_made(transport)

    def _head_overdue(self) -> None:
        self.timer = None
        if not self.head_seen and self.transport is not None:
            self.guard.timed_out += 1
            log.warning("closing a connection from %s: no complete request head in %.0f s (server.header_timeout)",
                        self.ip or "?", self.guard.header_timeout, extra={"client": self.ip, "reason": "header_timeout"})
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if not self.head_seen:
            if HEAD_END in self.tail + data:
                self.head_seen = True
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
            else:
                self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.ip is not None:
            left = self.guard.open.get(self.ip, 1) - 1
            if left > 0:
                self.guard.open[self.ip] = left
            else:
                self.guard.open.pop(self.ip, None)
            self.ip = None
        self.transport = None
        if self.inner is not None:
            self.inner.connection_lost(exc)


class GuardedSite(web.TCPSite):
    """``TCPSite`` serving through a ``ConnectionGuard``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_per_ip: int, header_timeout: float,
                 exempt: list[str], **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guard_args = (max_per_ip, header_timeout, exempt)
        self.guard: ConnectionGuard | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        max_per_ip, header_timeout, exempt = self._guard_args
        self.guard = ConnectionGuard(server, max_per_ip=max_per_ip, header_timeout=header_timeout, exempt=exempt)
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
