"""The built-in demo site, served on the catch-all route when ``[origin] url`` is empty.

Why it exists: a newcomer who runs ``edgeproxy serve`` with no configuration should see the
whole loop at once — a page served through the proxy (device cookie set), analytics.js loaded
first-party, a page call, a button that tracks, a form that identifies, and links to
``/debug/me`` and ``/debug`` to watch it arrive. The pages are plain HTML files in
``static/demo/`` (no build step); a few ``{{placeholders}}`` are filled once at startup.

The analytics.js snippet lives here too: the demo pages are its reference use, and the
origin proxy injects the very same snippet into proxied pages (``[origin] inject_snippet``).
"""

from __future__ import annotations

import html
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import quote

import orjson
from aiohttp import hdrs, web

from edgeproxy import staticfiles
from edgeproxy.config import Settings

STATIC_DIR = staticfiles.STATIC_DIR / "demo"

OnHtml = Callable[[web.Request, web.StreamResponse], "Awaitable[None] | None"]


@dataclass(frozen=True)
class _Asset:
    file: str
    content_type: str
    page: bool  # an HTML page: gets the snippet and the on_html call


# The demo's whole URL space, as data.
ROUTES: dict[str, _Asset] = {
    "/": _Asset("index.html", "text/html", True),
    "/shop": _Asset("shop.html", "text/html", True),
    "/about": _Asset("about.html", "text/html", True),
    "/demo.css": _Asset("demo.css", "text/css", False),
    "/demo.js": _Asset("demo.js", "application/javascript", False),
    # The pages link the SVG; /favicon.ico is what browsers ask for on their own (a 404 on
    # every page, counted in /metrics, otherwise). Both answer the SVG with its type.
    "/favicon.svg": _Asset("favicon.svg", "image/svg+xml", False),
    "/favicon.ico": _Asset("favicon.svg", "image/svg+xml", False),
}

_NOT_FOUND = (
    "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>404 Not Found</title>"
    '<link rel="icon" href="/favicon.svg" type="image/svg+xml"><link rel="stylesheet" href="/demo.css"></head>\n<body><main><h1>404 Not Found</h1>'
    '<p>The demo site has no such page. <a href="/">Back to the start</a>.</p></main></body></html>\n'
)


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders; an unknown placeholder is a bug in the page, so it fails loudly."""
    out = template
    for name, value in values.items():
        out = out.replace("{{" + name + "}}", value)
    if "{{" in out and "}}" in out.split("{{", 1)[1]:
        missing = out.split("{{", 1)[1].split("}}", 1)[0]
        raise ValueError(f"static/demo: unknown placeholder {{{{{missing}}}}}")
    return out


def snippet_write_key(settings: Settings) -> str:
    """The write key the snippet loads with: the first configured key, else ``[origin] snippet_write_key``."""
    return settings.segment.write_keys[0] if settings.segment.write_keys else settings.origin.snippet_write_key


def _js(value: str) -> str:
    """A JavaScript string literal safe inside an HTML ``<script>`` element."""
    text = orjson.dumps(value).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_snippet(prefix: str, write_key: str) -> str:
    """Segment's analytics.js snippet (5.2.x), loading the bundle and settings from this proxy.

    ``analytics._cdn`` is built in the browser from ``location`` (scheme and host of the page,
    which this proxy served) plus the prefix: no trust in the ``Host`` header, and a page cached
    by a CDN stays right. The settings route sets ``integrations["Segment.io"].apiHost``, so
    events come back here too.
    """
    methods = (
        '"trackSubmit","trackClick","trackLink","trackForm","pageview","identify","reset","group",'
        '"track","ready","alias","debug","page","screen","once","off","on","addSourceMiddleware",'
        '"addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware","register"'
    )
    return (
        '<script data-edgeproxy="snippet">\n'
        '!function(){var i="analytics",analytics=window[i]=window[i]||[];'
        "if(!analytics.initialize)if(analytics.invoked)window.console&&console.error&&"
        'console.error("Segment snippet included twice.");else{analytics.invoked=!0;'
        f"analytics.methods=[{methods}];"
        "analytics.factory=function(e){return function(){if(window[i].initialized)"
        "return window[i][e].apply(window[i],arguments);var n=Array.prototype.slice.call(arguments);"
        'if(["track","screen","alias","group","page","identify"].indexOf(e)>-1){'
        "var c=document.querySelector(\"link[rel='canonical']\");"
        'n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,'
        "s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);"
        "return analytics}};for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];"
        "analytics[key]=analytics.factory(key)}"
        f'analytics._cdn=location.protocol+"//"+location.host+{_js(prefix)};'
        "analytics.load=function(key,n){var t=document.createElement(\"script\");"
        't.type="text/javascript";t.async=!0;t.setAttribute("data-global-segment-analytics-key",i);'
        't.src=analytics._cdn+"/analytics.js/v1/"+encodeURIComponent(key)+"/analytics.min.js";'
        'var r=document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);'
        "analytics._loadOptions=n};"
        f"analytics._writeKey={_js(write_key)};"
        'analytics.SNIPPET_VERSION="5.2.1";\n'
        f"analytics.load({_js(write_key)});\n"
        "analytics.page();\n"
        "}}();\n"
        "</script>\n"
    )


class DemoSite:
    """Serves the demo pages, rendered once: they depend on settings only, not on the request."""

    def __init__(self, settings: Settings, *, snippet: str, write_key: str, on_html: OnHtml | None = None,
                 static_dir: Path = STATIC_DIR) -> None:
        self.on_html = on_html
        prefix = settings.server.prefix
        values = {
            "snippet": snippet,
            "prefix": html.escape(prefix),
            "debug": html.escape(settings.server.debug_path),
            "write_key": html.escape(write_key),
            "bundle": html.escape(f"{prefix}/analytics.js/v1/{quote(write_key, safe='')}/analytics.min.js"),
        }
        self.bodies: dict[str, bytes] = {}
        for path, asset in ROUTES.items():
            text = (static_dir / asset.file).read_text(encoding="utf-8")
            self.bodies[path] = (render(text, values) if asset.page else text).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPMethodNotAllowed(request.method, [hdrs.METH_GET, hdrs.METH_HEAD])
        path = request.path.rstrip("/") or "/"
        asset = ROUTES.get(path)
        if asset is None:
            return web.Response(status=404, text=_NOT_FOUND, content_type="text/html")
        response = web.Response(
            body=self.bodies[path],
            content_type=asset.content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-store" if asset.page else "public, max-age=300"},
        )
        if asset.page and request.method == hdrs.METH_GET and self.on_html is not None:
            result = self.on_html(request, response)
            if inspect.isawaitable(result):
                await result
        return response
