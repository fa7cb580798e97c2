"""The website behind the proxy (SPEC section 7): a streaming reverse proxy as one catch-all route.

Why a proxy at all: the visitor's very first page view must come through edgeproxy, so the
device cookie is set by the server before any script runs (Safari caps script-written
cookies; a server-set, same-site cookie is not capped). Everything that is not one of
edgeproxy's own routes ends up here.

Choices worth knowing:

* Bodies stream both ways (``request.content`` is handed to the client request as an async
  iterator; the answer is relayed chunk by chunk). The one exception is snippet injection,
  which needs the page: only HTML up to ``INJECT_MAX_BYTES``, identity or gzip encoded
  (the rules are ``edge.inject``).
* The ``Host`` header sent upstream is the origin's own host (from ``[origin] url``), because
  name-based virtual hosts and TLS SNI on the origin expect their own name; the host the
  visitor asked for travels in ``X-Forwarded-Host``.
* ``X-Forwarded-For``: the chain received from a trusted proxy (``[server] trusted_proxies``)
  plus the address of the peer that connected to us; from anyone else the client's own
  ``X-Forwarded-For`` is dropped (it is unverifiable) and the header is just the client IP.
* One shared ``ClientSession`` per app: no cookie jar (it would mix visitors), no automatic
  decompression (bytes pass through unchanged, so ``Content-Length`` stays right), no
  redirect following (the browser must see the origin's redirects), no auto headers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edgeproxy.config import Settings
from edgeproxy.edge.demo import DemoSite, OnHtml, render_snippet, snippet_write_key
from edgeproxy.edge.inject import INJECT_MAX_BYTES, injectable_status, media_type, rewrite_body
from edgeproxy.edge.websocket_relay import relay_websockets
from edgeproxy.logs import client_error

log = logging.getLogger("edgeproxy.origin")

# RFC 9110 section 7.6.1 plus the de-facto ones; any header named in Connection is added per message.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
        "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade",
    )
)
# Request headers we replace or that only make sense on the hop they arrived on.
_REQUEST_DROP = frozenset(
    {"host", "expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)
# The WebSocket handshake is redone by the client library on the upstream hop.
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)

_CHUNK = 64 * 1024
_THREAD_OVER = 256 * 1024  # rewrite bigger pages off the event loop


# ---------------------------------------------------------------- headers and URLs


def hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """The fixed hop-by-hop set plus every header the message names in ``Connection``."""
    named = {
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, ())
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named


def _is_proxy_header(name: str) -> bool:
    """``Proxy:`` (no dash) is never a real header and is how httpoxy reaches an origin's CGI
    ``HTTP_PROXY``; the Proxy-* hop-by-hop ones are in ``HOP_BY_HOP``. Any other ``Proxy-…``
    header is end-to-end (RFC 9110 7.6.1) and goes through."""
    return name.lower() == "proxy"


def request_headers(
    headers: CIMultiDictProxy[str],
    *,
    client_ip: str,
    peer_trusted: bool,
    scheme: str,
    host: str,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones kept (repeats too), X-Forwarded-* set."""
    drop = hop_by_hop(headers) | _REQUEST_DROP | (_WS_HANDSHAKE if websocket else frozenset())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop and not _is_proxy_header(name):
            out.add(name, value)
    chain = [v.strip() for v in headers.getall("X-Forwarded-For", ()) if v.strip()] if peer_trusted else []
    out["X-Forwarded-For"] = ", ".join([*chain, client_ip])
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = host
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers to send back: everything end-to-end, multi-valued ones (Set-Cookie) intact."""
    drop = hop_by_hop(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop and not _is_proxy_header(name):
            out.add(name, value)
    return out


def upstream_url(origin: str, raw_path: str) -> URL:
    """The origin's base (which may carry a path) joined with the request's raw path and query."""
    base = origin.rstrip("/")
    return URL(base + (raw_path if raw_path.startswith("/") else "/" + raw_path), encoded=True)


# ---------------------------------------------------------------- plain error pages


def error_page(status: int) -> web.Response:
    """A small HTML page for origin failures (and a stalled upload); never a traceback."""
    titles = {408: "Request Timeout", 502: "Bad Gateway", 504: "Gateway Timeout"}
    texts = {
        408: "The request's body did not arrive in time (server.body_timeout).",
        502: "The website behind this proxy could not be reached. Please try again in a moment.",
        504: "The website behind this proxy took too long to answer. Please try again in a moment.",
    }
    title = f"{status} {titles.get(status, 'Error')}"
    body = (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title></head>\n"
        f"<body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem\">"
        f"<h1>{title}</h1><p>{texts.get(status, 'The website behind this proxy failed.')}</p></body></html>\n"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- the proxy


async def _call(on_html: OnHtml | None, request: web.Request, response: web.StreamResponse) -> None:
    if on_html is not None:
        result = on_html(request, response)
        if inspect.isawaitable(result):
            await result


async def _read_capped(content: aiohttp.StreamReader, cap: int) -> tuple[bytes, bool]:
    """Up to ``cap`` bytes; True when that was the whole body."""
    parts: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await content.read(min(_CHUNK, cap + 1 - size))
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), False


class _TimedBody:
    """A request body streamed upstream, each read bounded by ``server.body_timeout``: a client
    trickling its upload would otherwise hold a connection here and one to the origin."""

    def __init__(self, content: Any, idle: float) -> None:
        self.content = content
        self.idle = idle
        self.timed_out = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self.idle):
                    chunk = await self.content.readany()
            except TimeoutError:
                self.timed_out = True
                raise
            if not chunk:
                return
            yield chunk


class OriginProxy:
    """The catch-all handler plus the ``ClientSession`` it owns for the app's lifetime."""

    def __init__(self, settings: Settings, on_html: OnHtml | None = None) -> None:
        self.origin = settings.origin.url
        self.timeout = settings.origin.timeout
        self.body_timeout = settings.server.body_timeout
        self.on_html = on_html
        self.inject = settings.origin.inject_snippet
        self.snippet = render_snippet(settings.server.prefix, snippet_write_key(settings)).encode()
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in settings.server.trusted_proxies]
        # Parsing the peer's address was ~2% of a proxied page's CPU, and the peers are few (the
        # nginx in front, or a bounded set of visitors): remember the answer per address.
        self._trusted = functools.lru_cache(maxsize=4096)(self._peer_trusted)
        self.session: aiohttp.ClientSession | None = None

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """``app.cleanup_ctx`` entry: one session, opened on startup, closed on cleanup."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
            trust_env=False,
        )
        try:
            yield
        finally:
            await self.session.close()
            self.session = None

    def _forward_headers(self, request: web.Request, websocket: bool = False) -> CIMultiDict[str]:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = peer[0] if isinstance(peer, tuple) and peer else (request.remote or "")
        return request_headers(
            request.headers,
            client_ip=peer_ip,
            peer_trusted=self._trusted(peer_ip),
            scheme=request.scheme,
            host=request.host,
            websocket=websocket,
        )

    def _peer_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if (
            request.method == hdrs.METH_GET
            and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        ):
            return await self._websocket(request)
        assert self.session is not None, "setup_origin's cleanup_ctx did not run"
        url = upstream_url(self.origin, request.raw_path)
        headers = self._forward_headers(request)
        body = _TimedBody(request.content, self.body_timeout) if request.body_exists else None
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body.chunks() if body else None, allow_redirects=False
            )
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            if body is not None and body.timed_out:  # the client's upload stalled, not the origin
                client_error(log, "body_timeout", request.remote, f"no body data for {self.body_timeout:g} s")
                response = error_page(408)
                response.force_close()
                return response
            return self._failed(request, 504 if isinstance(exc, asyncio.TimeoutError) else 502, exc)
        async with upstream:
            return await self._relay(request, upstream)

    def _failed(self, request: web.Request, status: int, exc: BaseException) -> web.Response:
        log.warning(
            "origin %s for %s %s: %s",
            "timed out" if status == 504 else "failed",
            request.method, request.path, type(exc).__name__ + (f": {exc}" if str(exc) else ""),
        )
        return error_page(status)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(response_headers(upstream.headers))
        media, charset = media_type(upstream.headers.get(hdrs.CONTENT_TYPE, ""))
        is_page = request.method == hdrs.METH_GET and media == "text/html"
        prefix = b""
        try:
            if is_page and self._may_inject(upstream, charset):
                body, whole = await _read_capped(upstream.content, INJECT_MAX_BYTES)
                encoding = upstream.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
                new = None
                if whole:
                    if len(body) > _THREAD_OVER:
                        new = await asyncio.to_thread(rewrite_body, body, encoding, self.snippet)
                    else:
                        new = rewrite_body(body, encoding, self.snippet)
                if new is not None:
                    response.headers.popall(hdrs.ETAG, None)
                    response.headers.popall("Content-MD5", None)
                    response.content_length = len(new)
                    await _call(self.on_html, request, response)
                    await response.prepare(request)
                    await response.write(new)
                    await response.write_eof()
                    return response
                prefix = body  # not rewritten: send what was read, then stream the rest
            if is_page:
                await _call(self.on_html, request, response)
            await response.prepare(request)
            if prefix:
                await response.write(prefix)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError) and response.prepared:
                log.debug("client went away during %s %s", request.method, request.path)
                return response  # writing to the visitor failed: nothing left to tell anyone
            if not response.prepared:
                return self._failed(request, 504 if isinstance(exc, asyncio.TimeoutError) else 502, exc)
            # Headers are out: the only honest signal left is to cut the connection, so the
            # client sees a truncated response rather than a complete-looking one.
            log.warning("origin broke off %s %s mid-body: %s", request.method, request.path, type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _may_inject(self, upstream: aiohttp.ClientResponse, charset: str) -> bool:
        if not self.inject or not injectable_status(upstream.status):
            return False
        encoding = upstream.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        if encoding not in ("", "identity", "gzip") or charset.startswith(("utf-16", "utf-32")):
            return False
        length = upstream.content_length
        return length is None or length <= INJECT_MAX_BYTES

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Connect upstream first (so a refusal is a plain HTTP answer), then relay both ways."""
        assert self.session is not None
        url = upstream_url(self.origin, request.raw_path)
        protocols = [
            p.strip()
            for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
            for p in value.split(",")
            if p.strip()
        ]
        try:
            upstream = await self.session.ws_connect(
                url,
                headers=self._forward_headers(request, websocket=True),
                protocols=protocols,
                autoclose=True,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if 400 <= exc.status < 600:
                log.info("origin refused WebSocket %s: %s", request.path, exc.status)
                return web.Response(status=exc.status, text=f"{exc.status} {exc.message}\n")
            return self._failed(request, 502, exc)
        except asyncio.TimeoutError as exc:
            return self._failed(request, 504, exc)
        except aiohttp.ClientError as exc:
            return self._failed(request, 502, exc)
        async with upstream:
            client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoclose=True)
            await client.prepare(request)
            await relay_websockets(client, upstream)
        return client


# ---------------------------------------------------------------- wiring


def setup_origin(app: web.Application, settings: Settings, *, on_html: OnHtml | None = None) -> None:
    """Add the catch-all route (all methods, ``/{tail:.*}``): the origin, or the demo site.

    Call it after every other route is added, so edgeproxy's own routes win. ``on_html`` is
    called (and awaited if it returns an awaitable) with each GET HTML response before its
    headers are sent: the place to set the device cookie.
    """
    if settings.origin.url:
        proxy = OriginProxy(settings, on_html)
        app.cleanup_ctx.append(proxy.lifespan)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
    else:
        write_key = snippet_write_key(settings)
        snippet = render_snippet(settings.server.prefix, write_key)
        site = DemoSite(settings, snippet=snippet, write_key=write_key, on_html=on_html)
        app.router.add_route("*", "/{tail:.*}", site.handle)


__all__ = [
    "HOP_BY_HOP",
    "OriginProxy",
    "error_page",
    "render_snippet",
    "request_headers",
    "response_headers",
    "setup_origin",
    "snippet_write_key",
    "upstream_url",
]
