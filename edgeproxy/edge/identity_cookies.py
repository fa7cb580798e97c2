"""The identity cookies at the edge: on HTML pages, on tracking responses, and ``/reset``.

The rules are the identity layer's (``identity/service.py`` for the signed device and
session cookies, ``identity/ajs.py`` for analytics.js's own); this module only reads the
request's cookies and writes ``Set-Cookie`` headers.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from edgeproxy.edge.cookies_out import set_cookies, shared_cacheable
from edgeproxy.edge.cors import cors_headers, preflight
from edgeproxy.identity import ajs
from edgeproxy.identity.cookies import cookie_values
from edgeproxy.identity.service import IdentityService


def page_cookies(identity: IdentityService, request: web.Request, response: web.StreamResponse) -> None:
    """An HTML page owns its visitor's ids before any script runs: the signed device cookie
    and, with ``ajs_cookies``, analytics.js's ``ajs_anonymous_id`` (the browser's own, else
    the device id) and ``ajs_user_id`` (re-set as the browser sent it). Not on pages a shared
    cache may store: every visitor would get the same ids."""
    if shared_cacheable(response.headers):
        return
    header = request.headers.get("Cookie")
    jar = identity.read_cookie_header(header, session=False)
    if identity.ajs is None:
        set_cookies(response, identity.page_cookies(jar, int(time.time() * 1000)))
        return
    browser = cookie_values(header, ajs.NAMES)
    anonymous_id = ajs.browser_anonymous_id(browser)
    cookies = identity.page_cookies(jar, int(time.time() * 1000), browser_anonymous_id=anonymous_id)
    assert jar.device_id is not None  # page_cookies gives every visitor one
    cookies += identity.ajs.cookies(ajs.page_anonymous_id(anonymous_id, jar.device_id), ajs.browser_user_id(browser))
    set_cookies(response, cookies)


def tracking_cookies(identity: IdentityService, response: web.StreamResponse, anonymous_id: str | None,
                     user_id: str | None) -> None:
    """analytics.js's cookies on a web tracking response, with the ids its last message carried.

    analytics.js re-writes ``ajs_anonymous_id`` from script whenever it reads it (Safari then
    caps it at 7 days from that write); this server write comes after it, so the cookie the
    browser keeps is always a server-set one.
    """
    if identity.ajs is not None:
        set_cookies(response, identity.ajs.cookies(anonymous_id, user_id))


class ResetHandler:
    """``{prefix}/reset`` (GET or POST): expire every identity cookie, the edge's and
    analytics.js's, so ``analytics.reset()`` (a deliberate new anonymousId) is not undone by
    the device cookie on the next event. The session plugin calls it on analytics.js's
    ``reset`` event; a site may also link to it ("forget this browser")."""

    def __init__(self, identity: IdentityService, settings: Any) -> None:
        self.identity = identity
        self.origins = settings.server.cors_origins
        self.expired = ajs.AjsCookies(identity.policy, 0).expired()

    def routes(self, prefix: str) -> list[web.RouteDef]:
        path = prefix.rstrip("/") + "/reset"
        return [web.get(path, self.reset), web.post(path, self.reset), web.options(path, self.options)]

    async def reset(self, request: web.Request) -> web.Response:
        response = web.Response(status=204, headers={"Cache-Control": "no-store", **cors_headers(request, self.origins)})
        set_cookies(response, self.expired)
        return response

    async def options(self, request: web.Request) -> web.Response:
        return preflight(request, self.origins)
