"""analytics.js's own identity cookies, set from the server (pure rules, no I/O).

analytics.js keeps its anonymousId in ``ajs_anonymous_id`` (and the user id in
``ajs_user_id``), as a cookie and in localStorage, and a cookie wins a disagreement when it
reads them. Written by script, Safari caps that storage at 7 days; written by the server
(``Set-Cookie`` from the site's own origin) it lives its ``Max-Age``. So the edge sets them
itself: on an HTML page (before analytics.js runs, so it adopts the value at init) and on
every web tracking response (analytics.js re-writes the cookie from script whenever it reads
the id, which would restart Safari's cap; the response's server write comes after it).

The values, in the rules' order:

- a valid ``ajs_anonymous_id`` the browser sends is kept: re-set with the same value, never
  replaced on a page (visitors known before edgeproxy keep their identity);
- otherwise the edge device id (the signed HttpOnly cookie, the source of truth), so a new
  browser, or one whose script storage Safari wiped, gets ``anonymousId == device_id``;
- a browser with an ``ajs_anonymous_id`` but no device cookie gets that id as its
  (provisional) device id, so the two agree from the first page.

Format: what analytics.js itself writes (js-cookie, a string as is, percent-encoded like
``encodeURIComponent`` but keeping the characters js-cookie keeps). Read: also the JSON-quoted
form (``%22id%22``) that analytics.js classic wrote and analytics.js still reads.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import orjson

from edgeproxy.identity.cookies import (
    READABLE_LAST_ACCESS_COOKIE,
    READABLE_SESSION_COOKIE,
    CookiePolicy,
    CookieSpec,
    valid_device_id,
)

ANONYMOUS_ID_COOKIE = "ajs_anonymous_id"
USER_ID_COOKIE = "ajs_user_id"
NAMES = (ANONYMOUS_ID_COOKIE, USER_ID_COOKIE)
MAX_USER_ID = 1024  # longer ids are not set as a cookie (a browser keeps ~4 KB per cookie)
# js-cookie's encoder: encodeURIComponent, then these characters put back as they were.
_JS_COOKIE_SAFE = "!~*'()#$&+/:<=>?@[]^`{|}"


def encode(value: str) -> str:
    """A cookie value as analytics.js (js-cookie) writes a string."""
    return quote(value, safe=_JS_COOKIE_SAFE)


def decode(raw: str | None) -> str | None:
    """A cookie value as analytics.js reads it: percent-decoded, a JSON string unquoted."""
    if not raw:
        return None
    value = unquote(raw)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            parsed: Any = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, str) and parsed else None
    return value


def browser_anonymous_id(cookies: dict[str, str]) -> str | None:
    """The browser's ``ajs_anonymous_id``, when it is a usable device id."""
    value = decode(cookies.get(ANONYMOUS_ID_COOKIE))
    return value if valid_device_id(value) else None


def browser_user_id(cookies: dict[str, str]) -> str | None:
    value = decode(cookies.get(USER_ID_COOKIE))
    return value if value and len(value) <= MAX_USER_ID else None


def page_anonymous_id(browser_id: str | None, device_id: str) -> str:
    """The ``ajs_anonymous_id`` an HTML page sets: the browser's own, else the edge device id."""
    return browser_id or device_id


class AjsCookies:
    """The ``ajs_*`` cookies with the identity cookies' domain and security, and their lifetime."""

    def __init__(self, policy: CookiePolicy, max_age: int) -> None:
        self.policy = policy
        self.max_age = max_age

    def _spec(self, name: str, value: str, max_age: int) -> CookieSpec:
        return CookieSpec(name, value, max_age, http_only=False, secure=self.policy.secure, domain=self.policy.domain)

    def cookies(self, anonymous_id: Any, user_id: Any) -> list[CookieSpec]:
        """The cookies for these ids; an id that is not a usable string is left out."""
        out = []
        if valid_device_id(anonymous_id):
            out.append(self._spec(ANONYMOUS_ID_COOKIE, encode(anonymous_id), self.max_age))
        if isinstance(user_id, str) and user_id.strip() and len(user_id) <= MAX_USER_ID:
            out.append(self._spec(USER_ID_COOKIE, encode(user_id), self.max_age))
        return out

    def expired(self) -> list[CookieSpec]:
        """Every identity cookie edgeproxy sets, expired (``Max-Age=0``): a deliberate reset."""
        p = self.policy
        names = (p.device_cookie, p.session_cookie, READABLE_SESSION_COOKIE, READABLE_LAST_ACCESS_COOKIE, *NAMES)
        return [CookieSpec(name, "", 0, http_only=name in (p.device_cookie, p.session_cookie), secure=p.secure,
                           domain=p.domain) for name in names]
