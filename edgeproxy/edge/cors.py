"""CORS for the tracking API.

analytics.js ≥ 1.84 sends ``Authorization`` (and ``X-Retry-Count`` on retries), so every
cross-origin tracking call is preflighted. Any origin may send events (Segment's API accepts
them from anywhere); only configured origins get ``Access-Control-Allow-Credentials``, which a
page needs for the proxy's cookies to travel on cross-origin calls.
"""

from __future__ import annotations

from aiohttp import web

ALLOWED_HEADERS = "Content-Type, Authorization, X-Retry-Count, Content-Encoding"
MAX_AGE = "86400"


def cors_headers(request: web.Request, credential_origins: list[str]) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if not origin:
        return {}
    if origin in credential_origins:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }
    return {"Access-Control-Allow-Origin": "*"}


def preflight(request: web.Request, credential_origins: list[str]) -> web.Response:
    headers = cors_headers(request, credential_origins)
    requested = request.headers.get("Access-Control-Request-Headers")
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            # Echo what the browser asks for (safest), else the headers analytics.js uses.
            "Access-Control-Allow-Headers": _clean(requested) if requested else ALLOWED_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
        }
    )
    return web.Response(status=204, headers=headers)


def _clean(value: str) -> str:
    """Header names only: never reflect anything that could split a header."""
    names = [part.strip() for part in value.split(",")]
    return ", ".join(n for n in names if n and all(c.isalnum() or c in "-_" for c in n)) or ALLOWED_HEADERS
