"""First-party CDN surfaces: analytics.js settings, the session plugin, analytics.js itself.

Why first-party: ad blockers block ``cdn.segment.com``, and with it Segment's session
plugin, so events lose ``session_id``. Serving the settings, the plugin and the library
from the site's own origin under a neutral prefix (``/_e``) keeps the whole boot path on
a host the blockers do not list, and lets the settings point the tracking API back here.

Every file name that can be served comes from a table (the plugin's content hash built at
startup, the listing of ``cdn.analytics_js_dir`` taken at startup, or a name checked
against ``segment.WRITE_KEY_RE`` before it is used in an upstream URL), never from joining request
text onto a filesystem path: path traversal has nothing to work with.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from edgeproxy import segment
from edgeproxy.config import Settings
from edgeproxy.edge.cdn_library import MAX_UPSTREAM_FILES, SAFE_NAME, SERVABLE_SUFFIXES, LibrarySource, UpstreamError
from edgeproxy.staticfiles import STATIC_DIR

PLUGIN_FILE = "edgeproxy-session.js"
# window[PLUGIN_LIBRARY_NAME] is what the plugin file defines; the settings name it.
PLUGIN_LIBRARY_NAME = "edgeproxySessionPlugin"
# Host (and port) as it may appear in a URL we write into JSON and JavaScript.
SAFE_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?\Z")
HASHED_NAME = re.compile(r"\.[0-9a-f]{16,}\.js(?:\.map)?$")

IMMUTABLE = "public, max-age=31536000, immutable"
SETTINGS_CACHE = "public, max-age=60"
LIBRARY_CACHE = "public, max-age=300"
# The settings and analytics.min.js embed the public host and scheme.
VARY_HOST = "Accept-Encoding, Host, X-Forwarded-Host, X-Forwarded-Proto, Forwarded"
MAX_VARIANTS = 64  # (host, write key) variants of analytics.min.js kept compressed
# The literal inside analytics.js's standalone build that Segment's CDN replaces with the write key.
WRITE_KEY_PLACEHOLDER = b"__WRITE_KEY__"


@dataclass(frozen=True)
class Asset:
    """One servable body, compressed once, with its validator."""

    body: bytes
    gzipped: bytes
    etag: str  # quoted, without the "-gz" suffix of the compressed variant
    content_type: str

    @classmethod
    def of(cls, body: bytes, content_type: str, gzipped: bytes | None = None) -> "Asset":
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, gzipped if gzipped is not None else gzip.compress(body, 9, mtime=0), f'"{digest}"', content_type)

    def respond(self, request: web.Request, cache_control: str, vary: str = "Accept-Encoding") -> web.Response:
        """200 (gzip when accepted) or 304 when the client's ETag matches either variant."""
        use_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        etag = self.etag[:-1] + '-gz"' if use_gzip else self.etag
        headers = {"Cache-Control": cache_control, "ETag": etag, "Vary": vary, "Access-Control-Allow-Origin": "*"}
        if etag_matches(request.headers.get("If-None-Match", ""), self.etag):
            return web.Response(status=304, headers=headers)
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        body = self.gzipped if use_gzip else self.body
        return web.Response(body=body, headers=headers, content_type=self.content_type, charset="utf-8" if self.content_type.endswith("javascript") else None)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``q=0`` refuses it)."""
    for item in header.split(","):
        token, _, params = item.strip().partition(";")
        if token.strip().lower() not in {"gzip", "*"}:
            continue
        match = re.search(r"q\s*=\s*([0-9.]*)", params)
        if match is None:
            return True
        try:
            return float(match.group(1)) > 0
        except ValueError:
            return False
    return False


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match against both encodings of one representation (weak comparison)."""
    if header.strip() == "*":
        return True
    base = etag.strip('"')
    for tag in header.split(","):
        tag = tag.strip().removeprefix("W/").strip('"')
        if tag in {base, base + "-gz"}:
            return True
    return False


def build_settings(*, write_key: str, api_host: str, protocol: str, plugin_url: str, session_length_ms: int,
                   reset_url: str | None = None, batching: tuple[int, int] | None = None) -> dict[str, Any]:
    """The analytics.js 2.0 settings JSON, shaped as Segment's CDN serves it.

    ``apiHost`` and ``metrics.host`` point back at this proxy so nothing reaches
    api.segment.io (metrics are also sampled at 0). ``Actions Amplitude`` stays in
    ``integrations`` because the mobile session plugins switch off without it; its
    ``componentTypes: []`` makes analytics.js load no classic destination for it. No
    ``plan`` is sent, so analytics.js needs no schema-filter chunk. ``resetUrl`` tells the
    session plugin where ``analytics.reset()`` expires the edge's identity cookies.
    ``batching`` (size, timeout in ms) switches analytics.js to its batching delivery
    strategy: one ``/v1/b`` request per ``size`` events or ``timeout``, and a keepalive flush
    at page hide, instead of one request per event.
    """
    segment_io: dict[str, Any] = {
        "apiKey": write_key,
        "apiHost": api_host,
        "protocol": protocol,
        "unbundledIntegrations": [],
        "addBundledMetadata": True,
        "maybeBundledConfigIds": {},
        "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
        "retryQueue": True,
    }
    if batching is not None:
        size, timeout_ms = batching
        segment_io["deliveryStrategy"] = {"strategy": "batching", "config": {"size": size, "timeout": timeout_ms}}
    return {
        "integrations": {
            "Segment.io": segment_io,
            "Actions Amplitude": {"versionSettings": {"componentTypes": []}},
        },
        "enabledMiddleware": {},
        "middlewareSettings": {},
        "metrics": {"sampleRate": 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [
            {
                "name": "Amplitude (Actions)",
                "creationName": "Actions Amplitude",
                "libraryName": PLUGIN_LIBRARY_NAME,
                "url": plugin_url,
                "settings": {
                    "versionSettings": {"componentTypes": []},
                    **({"resetUrl": reset_url} if reset_url else {}),
                    "subscriptions": [
                        {
                            "id": "edgeproxy-session",
                            "name": "Browser Session Tracking",
                            "enabled": True,
                            "partnerAction": "sessionId",
                            "subscribe": 'type = "track" or type = "identify" or type = "group" or type = "page" or type = "alias"',
                            "mapping": {"sessionLength": session_length_ms},
                        }
                    ],
                },
            }
        ],
    }


def substitute_write_key(body: bytes, write_key: str) -> bytes:
    """Put the write key where Segment's CDN puts it: every ``__WRITE_KEY__`` in the bundle.

    The standalone build starts with ``window.analyticsWriteKey="__WRITE_KEY__"`` and prefers
    that value to ``analytics._writeKey`` and to the script-src guess; its own "was it
    substituted?" check spells the placeholder as a join, so a plain text replacement of every
    occurrence is exactly what the CDN does. Only local copies need it (an upstream CDN already
    did it); ``write_key`` matched ``segment.WRITE_KEY_RE``, so it is safe inside a JavaScript string.
    """
    return body.replace(WRITE_KEY_PLACEHOLDER, write_key.encode())


def cdn_prelude(base_url: str) -> bytes:
    """Prepended to analytics.min.js: make chunks and settings come from this proxy.

    analytics.js only auto-detects its CDN from an ``https://…/analytics.js/v1/`` script
    src, so on plain http (or any other path) it would fall back to cdn.segment.com. A
    ``_cdn`` the page set itself wins. The Segment Edge SDK does the same.
    """
    return f"window.analytics&&(window.analytics._cdn=window.analytics._cdn||{json.dumps(base_url)});\n".encode()


def json_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json")


def public_base(request: web.Request, prefix: str) -> tuple[str, str, str] | None:
    """(scheme, host, "<host><prefix>") as the browser sees this proxy; None for a bad Host.

    ``request.host``/``scheme`` already honour trusted X-Forwarded-* (aiohttp-remotes).
    """
    host = request.host or ""
    if not SAFE_HOST.match(host):
        return None
    return request.scheme, host, f"{host}{prefix}"


class CdnHandlers:
    """The four routes; state is built once at startup."""

    def __init__(self, settings: Settings, static_dir: Path) -> None:
        self.prefix = settings.server.prefix.rstrip("/")
        from edgeproxy.sources import SourceTable

        self.write_keys = SourceTable(settings).all_write_keys  # every source's (empty: any key)
        self.session_length_ms = int(settings.sessions.timeout * 1000)
        cdn = settings.cdn
        self.batching = (cdn.browser_batch_size, int(cdn.browser_batch_timeout * 1000)) if cdn.browser_batching else None
        plugin = Asset.of((static_dir / PLUGIN_FILE).read_bytes(), "application/javascript")
        self.plugin_hash = plugin.etag.strip('"')[:20]
        self.plugins = {f"{self.plugin_hash}.js": plugin}
        self.library = LibrarySource(settings.cdn.analytics_js_dir, settings.cdn.upstream)
        self._variants: OrderedDict[tuple[str, str, str], Asset] = OrderedDict()
        self._bundles: dict[str, Asset] = {}

    def _key_problem(self, write_key: str) -> web.Response | None:
        if not segment.valid_write_key(write_key):
            return json_error(400, f"invalid write key: a write key is {segment.WRITE_KEY_RULE}")
        if self.write_keys and write_key not in self.write_keys:
            return json_error(404, f"unknown write key {write_key!r}: not in segment.write_keys or any [[sources]] write_keys")
        return None

    async def settings(self, request: web.Request) -> web.Response:
        write_key = request.match_info["write_key"]
        problem = self._key_problem(write_key)
        if problem is not None:
            return problem
        base = public_base(request, self.prefix)
        if base is None:
            return json_error(400, "the Host header is not a valid host[:port]")
        scheme, _, host_prefix = base
        body = build_settings(
            write_key=write_key,
            api_host=f"{host_prefix}/v1",
            protocol=scheme,
            plugin_url=f"{scheme}://{host_prefix}/p/{self.plugin_hash}.js",
            session_length_ms=self.session_length_ms,
            reset_url=f"{scheme}://{host_prefix}/reset",
            batching=self.batching,
        )
        headers = {"Cache-Control": SETTINGS_CACHE, "Vary": VARY_HOST, "Access-Control-Allow-Origin": "*"}
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    async def plugin(self, request: web.Request) -> web.Response:
        asset = self.plugins.get(request.match_info["file"])
        if asset is None:
            return json_error(404, "no such plugin file (plugin names change with their content; reload the settings)")
        return asset.respond(request, IMMUTABLE)

    async def analytics_min_js(self, request: web.Request) -> web.Response:
        write_key = request.match_info["write_key"]
        problem = self._key_problem(write_key)
        if problem is not None:
            return problem
        base = public_base(request, self.prefix)
        if base is None:
            return json_error(400, "the Host header is not a valid host[:port]")
        scheme, host, host_prefix = base
        key = (scheme, host, write_key)
        asset = self._variants.get(key)
        if asset is None:
            body = await self._guard(lambda: self.library.standalone(write_key))
            if isinstance(body, web.Response):
                return body
            if body is None:
                return json_error(404, "analytics.js not found (standalone.js missing from cdn.analytics_js_dir, or upstream 404)")
            if self.library.is_local:
                body = substitute_write_key(body, write_key)
            asset = Asset.of(cdn_prelude(f"{scheme}://{host_prefix}") + body, "application/javascript")
            self._variants[key] = asset
            while len(self._variants) > MAX_VARIANTS:
                self._variants.popitem(last=False)
        else:
            self._variants.move_to_end(key)
        return asset.respond(request, LIBRARY_CACHE, VARY_HOST)

    async def bundle(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if not SAFE_NAME.match(name) or ".." in name or Path(name).suffix not in SERVABLE_SUFFIXES:
            return json_error(404, "no such bundle file")
        asset = self._bundles.get(name)
        if asset is None:
            body = await self._guard(lambda: self.library.bundle(name))
            if isinstance(body, web.Response):
                return body
            if body is None:
                return json_error(404, f"no such bundle file {name!r}")
            content_type = SERVABLE_SUFFIXES[Path(name).suffix]
            asset = Asset.of(body, content_type, self.library.precompressed(name) if self.library.is_local else None)
            if self.library.is_local or len(self._bundles) < MAX_UPSTREAM_FILES:
                self._bundles[name] = asset
        return asset.respond(request, IMMUTABLE if HASHED_NAME.search(name) else LIBRARY_CACHE)

    @staticmethod
    async def _guard(get: Callable[[], Awaitable[bytes | None]]) -> bytes | None | web.Response:
        try:
            return await get()
        except UpstreamError as exc:
            return json_error(502, str(exc))


CDN_KEY = web.AppKey("edgeproxy_cdn", CdnHandlers)


def setup_cdn(app: web.Application, settings: Settings, *, static_dir: Path | None = None) -> None:
    """Add the CDN routes under ``settings.server.prefix``; read the plugin now (fail early)."""
    handlers = CdnHandlers(settings, static_dir or STATIC_DIR)
    app[CDN_KEY] = handlers
    p = handlers.prefix
    app.router.add_get(p + "/v1/projects/{write_key}/settings", handlers.settings)
    app.router.add_get(p + "/p/{file}", handlers.plugin)
    app.router.add_get(p + "/analytics.js/v1/{write_key}/analytics.min.js", handlers.analytics_min_js)
    app.router.add_get(p + "/analytics-next/bundles/{file}", handlers.bundle)

    async def close(_: web.Application) -> None:
        await handlers.library.close()

    app.on_cleanup.append(close)
