"""Turn the identity layer's cookie descriptions into Set-Cookie headers."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

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


_MAX_AGE = re.compile(r"^(?:s-)?max-age\s*=\s*\"?(\d+)")


def shared_cacheable(headers: Mapping[str, str]) -> bool:
    """Whether a CDN or other shared cache may store this response (RFC 9111, section 3).

    A device cookie on such a page would be cached with it and handed to every visitor the
    cache serves, all sharing one device id. Such pages get no cookie; the first tracking
    call sets it instead. Explicit freshness (``public``, ``s-maxage``, ``max-age`` > 0,
    ``Expires``) without ``private``/``no-store`` counts as cacheable; a page without any
    is left alone by shared caches in practice, so it gets the cookie.
    """
    directives = [d.strip().lower() for d in headers.get("Cache-Control", "").split(",") if d.strip()]
    if any(d in ("private", "no-store") or d.startswith("private=") for d in directives):
        return False
    if "public" in directives or any(d.startswith("s-maxage") for d in directives):
        return True
    for d in directives:
        match = _MAX_AGE.match(d)
        if match and int(match.group(1)) > 0:
            return True
    return not directives and "Expires" in headers
