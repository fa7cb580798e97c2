"""Helpers for the Chromium tests: a small origin website and a record of what the browser saw.

Why a separate website rather than the built-in demo: a site owner puts edgeproxy in front of
*their* site, so the tests need an origin the proxy knows nothing about. Its pages carry no
analytics code at all; edgeproxy injects the snippet (``[origin] inject_snippet``), which is
the drop-in case. The site also serves what a reverse proxy most easily gets wrong: a
WebSocket, a response held open half-way (buffering would stall it), and a large body.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

HELD_FIRST = "first chunk, the rest is held back\n"
HELD_REST = "and here is the rest\n"
BIG_BYTES = 16 * 1024 * 1024  # served as bytes(i % 256), in 64 KB writes
HELD_LIMIT = 20.0  # seconds the held response waits for /release at most

PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title></head>
<body><h1>{title}</h1>
<button id=buy onclick="analytics.track('Buy Clicked', {{page: '{title}'}})">Buy</button>
<p><a href="/">Home</a> <a href="/second">Second</a> <a href="/shop">Shop</a></p>
</body></html>
"""
TITLES = {"/": "Home", "/second": "Second", "/shop": "Shop"}

# Segment's published snippet (5.2.0) as a site owner has it, with one edit: the bundle's URL
# points at the proxy's prefix instead of https://cdn.segment.com. Nothing else is told
# about the proxy: analytics.min.js itself makes the chunks, settings and plugin first-party.
OWN_SNIPPET_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Own snippet</title>
<script>
!function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)if(analytics.invoked)window.console&&console.error&&console.error("Segment snippet included twice.");else{analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick","trackLink","trackForm","pageview","identify","reset","group","track","ready","alias","debug","page","screen","once","off","on","addSourceMiddleware","addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware","register"];analytics.factory=function(e){return function(){if(window[i].initialized)return window[i][e].apply(window[i],arguments);var n=Array.prototype.slice.call(arguments);if(["track","screen","alias","group","page","identify"].indexOf(e)>-1){var c=document.querySelector("link[rel='canonical']");n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);return analytics}};for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];analytics[key]=analytics.factory(key)}analytics.load=function(key,n){var t=document.createElement("script");t.type="text/javascript";t.async=!0;t.setAttribute("data-global-segment-analytics-key",i);t.src="/_e/analytics.js/v1/" + key + "/analytics.min.js";var r=document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);analytics._loadOptions=n};analytics._writeKey="WRITE_KEY";;analytics.SNIPPET_VERSION="5.2.0";
analytics.load("WRITE_KEY");
analytics.page();
}}();
</script></head>
<body><h1>Own snippet</h1>
<button id=buy onclick="analytics.track('Buy Clicked', {page: 'Own snippet'})">Buy</button>
</body></html>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SeenRequest:
    """One request of the origin: what edgeproxy forwarded."""

    method: str
    path: str
    headers: dict[str, str]


class LocalServer:
    """An aiohttp app of the test's own on 127.0.0.1, at a free port: ``app()`` says what it serves."""

    url = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class OriginSite(LocalServer):
    """The website behind the proxy, on 127.0.0.1 at a port of its own."""

    def __init__(self, write_key: str = "") -> None:
        self.write_key = write_key  # for the page that carries its own snippet
        self.requests: list[SeenRequest] = []
        self.release = asyncio.Event()
        self.held_finished = False

    def app(self) -> web.Application:
        app = web.Application()
        for path in TITLES:
            app.router.add_get(path, self._page)
        app.router.add_get("/own", self._own)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/held", self._held)
        app.router.add_get("/release", self._release)
        app.router.add_get("/big", self._big)
        return app

    def _record(self, request: web.Request) -> None:
        self.requests.append(SeenRequest(request.method, request.path_qs, dict(request.headers)))

    async def _page(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(text=PAGE.format(title=TITLES[request.path]), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _own(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(text=OWN_SNIPPET_PAGE.replace("WRITE_KEY", self.write_key), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self._record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    async def _held(self, request: web.Request) -> web.StreamResponse:
        """Sends a first chunk, then waits for /release: a buffering proxy would deliver nothing."""
        self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/plain", "Cache-Control": "no-store"})
        await response.prepare(request)
        await response.write(HELD_FIRST.encode())
        await asyncio.wait_for(self.release.wait(), HELD_LIMIT)
        await response.write(HELD_REST.encode())
        self.held_finished = True
        await response.write_eof()
        return response

    async def _release(self, request: web.Request) -> web.Response:
        self._record(request)
        self.release.set()
        return web.Response(text="released", headers={"Cache-Control": "no-store"})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"})
        response.content_length = BIG_BYTES
        await response.prepare(request)
        block = bytes(range(256)) * 256  # 64 KB, so every write starts at a multiple of 256
        for _ in range(BIG_BYTES // len(block)):
            await response.write(block)
        await response.write_eof()
        return response


class FakeSegmentCdn(LocalServer):
    """A local stand-in for cdn.segment.com serving npm's dist/umd as the real CDN lays it out.

    Like the real one it substitutes the write key into analytics.min.js. ``failing`` makes it
    answer 503; ``hits`` counts requests per path, to show the proxy fetches each file once.
    """

    def __init__(self, umd: Path) -> None:
        self.umd = umd
        self.failing = False
        self.hits: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/analytics.js/v1/{key}/analytics.min.js", self._library)
        app.router.add_get("/analytics-next/bundles/{file}", self._bundle)
        return app

    async def _library(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if self.failing:
            return web.Response(status=503, text="upstream trouble")
        body = (self.umd / "standalone.js").read_text().replace("__WRITE_KEY__", request.match_info["key"])
        return web.Response(text=body, content_type="application/javascript")

    async def _bundle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        path = self.umd / request.match_info["file"]
        if self.failing or path.parent != self.umd or not path.is_file():
            return web.Response(status=503 if self.failing else 404)
        return web.Response(body=path.read_bytes(), content_type="application/javascript")


@dataclass
class BrowserLog:
    """What Chromium requested (with statuses or failures) and the tracking calls it sent.

    Attached to a browser context, so every page and tab of that context is recorded.
    """

    responses: list[tuple[str, str, int]] = field(default_factory=list)
    # (method, url, error, answered): a navigation also cancels the unread body of a request
    # the server already answered (analytics.js never reads tracking responses); such a
    # request shows up here with answered=True.
    failures: list[tuple[str, str, str, bool]] = field(default_factory=list)
    tracking: list[dict[str, Any]] = field(default_factory=list)  # request bodies of POST {prefix}/v1/*
    _answered: set[Any] = field(default_factory=set)

    def attach(self, context: Any, prefix: str = "/_e") -> None:
        def on_request(request: Any) -> None:
            if request.method == "POST" and f"{prefix}/v1/" in request.url and request.post_data:
                self.tracking.append(json.loads(request.post_data))

        def on_response(response: Any) -> None:
            self._answered.add(response.request)
            self.responses.append((response.request.method, response.url, response.status))

        def on_failed(request: Any) -> None:
            self.failures.append((request.method, request.url, request.failure or "failed", request in self._answered))

        context.on("request", on_request)
        context.on("response", on_response)
        context.on("requestfailed", on_failed)

    def urls(self) -> list[str]:
        return [url for _, url, _ in self.responses] + [url for _, url, _, _ in self.failures]

    def unanswered(self) -> list[tuple[str, str, str]]:
        """Requests that failed before any answer (blocked, refused, reset)."""
        return [(method, url, error) for method, url, error, answered in self.failures if not answered]

    def tracked_once(self) -> dict[str, dict[str, Any]]:
        """Tracking calls by messageId: analytics.js re-sends calls a navigation cut off."""
        return {body["messageId"]: body for body in self.tracking}


def client_session_id(body: dict[str, Any]) -> Any:
    """The session id the page itself put on a tracking call (the plugin's), or None."""
    amplitude = (body.get("integrations") or {}).get("Actions Amplitude")
    return amplitude.get("session_id") if isinstance(amplitude, dict) else None


def format_cookies(cookies: list[dict[str, Any]], now: float) -> list[str]:
    """One line per cookie with its flags, as Chromium stores it (expiry as days from now)."""
    lines = [f"{'name':34} {'domain':22} {'path':5} {'HttpOnly':8} {'Secure':6} {'SameSite':8} expires"]
    for c in sorted(cookies, key=lambda c: (c["name"], c["domain"])):
        expires = "session" if c["expires"] < 0 else f"in {(c['expires'] - now) / 86400:.1f} days"
        lines.append(f"{c['name']:34} {c['domain']:22} {c['path']:5} {str(c['httpOnly']):8} "
                     f"{str(c['secure']):6} {c['sameSite']:8} {expires}")
    return lines
