"""Turn the identity layer's cookie descriptions into Set-Cookie headers."""

from __future__ import annotations

from typing import Any, Iterable

from aiohttp import web


def set_cookies(response: web.StreamResponse, cookies: Iterable[Any]) -> None:
    """Apply CookieSpec-like objects (name, value, max_age, http_only, secure, same_site, domain, path)."""
    for c in cookies:
        kwargs: dict[str, Any] = {
            "path": getattr(c, "path", "/") or "/",
            "httponly": bool(getattr(c, "http_only", False)),
            "secure": bool(getattr(c, "secure", False)),
            "samesite": getattr(c, "same_site", "Lax") or "Lax",
        }
        max_age = getattr(c, "max_age", None)
        if max_age is not None:
            kwargs["max_age"] = int(max_age)
        domain = getattr(c, "domain", None)
        if domain:
            kwargs["domain"] = domain
        response.set_cookie(c.name, c.value, **kwargs)
