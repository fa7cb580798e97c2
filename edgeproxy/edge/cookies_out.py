"""Turn the identity layer's cookie descriptions into Set-Cookie headers."""

from __future__ import annotations

from typing import Iterable

from aiohttp import web

from edgeproxy.identity.cookies import CookieSpec


def set_cookies(response: web.StreamResponse, cookies: Iterable[CookieSpec]) -> None:
    """Add one Set-Cookie header per cookie.

    Written directly rather than through ``response.set_cookie`` (http.cookies' Morsel), which
    costs more than the signing on this per-request path; the values are URL-safe base64 or
    digits, so no quoting is ever needed.
    """
    for cookie in cookies:
        response.headers.add("Set-Cookie", cookie.header_value())
