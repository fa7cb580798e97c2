"""Identity for one Segment message: device id resolution and the server-owned session.

The edge calls ``read_cookies`` once per request, ``process`` once per message (the
jar is updated in place, so the next message of the same batch sees the same device and
session), then ``response_cookies`` to refresh the cookies. I/O happens only through the
session store; the rules are ``sessions.touch`` and ``sessions.reconcile``.

Decisions beyond SPEC section 3, each with its reason:

- Event time is the (already skew-corrected) ``timestamp``, clamped to ``now_ms``: an event
  cannot happen after it was received, and a far-future time would otherwise keep a
  session alive forever. Missing or unparseable times (or before 2001) use ``now_ms``.
- ``-1`` (Amplitude's out-of-session marker): left untouched on non-web events; on web
  events the server's id replaces it without counting a mismatch (the client claimed no
  session), and it is never adopted.
- ``integrations["Actions Amplitude"] = false`` (or ``All: false`` without that key) is an
  opt-out of the destination: no session id is written (the session is still touched,
  the visitor was active).
- A device id issued on an HTML page before any event is *provisional*: the first event's
  ``anonymousId`` replaces it, so a new browser still gets ``device_id == anonymousId``
  (what Segment would send) while the first page view already owns a cookie.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from edgeproxy.identity.ajs import AjsCookies
from edgeproxy.identity.cookies import (
    READABLE_LAST_ACCESS_COOKIE,
    READABLE_SESSION_COOKIE,
    CookieCodec,
    CookiePolicy,
    CookieSpec,
    cookie_values,
    load_signing_keys,
    valid_device_id,
)
from edgeproxy.identity.sessions import (
    MIN_EPOCH_MS,
    SessionState,
    adoptable_claim,
    claim_mismatches,
    duration_text,
    client_session_claim,
    client_session_value,
    is_web,
    may_stamp,
    reconcile,
    stamp_session_id,
)
from edgeproxy.identity.store import SessionStore, TouchRequest, open_store
from edgeproxy.segment import library_name

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SHARED_STRINGS = 10_000  # distinct user agents kept as one object each (see _shared)
DEVICE_COOKIE_REFRESH_MS = 86_400_000  # a device cookie older than a day is re-signed (its Max-Age renewed)
_ONE_MS = timedelta(milliseconds=1)
# What a stored session keeps of each string (its ids are bounded by segment.MAX_ID_LENGTH):
# with these, a session costs at most ~3.6 KB of strings whatever a client sends.
MAX_USER_AGENT = 512
MAX_LIBRARY_NAME = 100


@dataclass
class CookieIdentity:
    """What the request's cookies proved, updated as the request's messages are processed."""

    device_id: str | None = None
    session: SessionState | None = None
    provisional: bool = False  # issued on a page before any event: the first anonymousId replaces it
    has_edge_cookies: bool = False  # the request carried a valid device cookie (its events are web)
    # What the request's device cookie said and when it was signed: re-sent only if that changed or aged.
    cookie_device: tuple[str, bool] | None = None
    cookie_signed_at: int = 0
    # The anonymousId of the request's first web message: the jar's device is that browser's.
    # A message of the same request with another anonymousId is another visitor (a server
    # forwarding several browsers' events, analytics.reset() between two queued events).
    bound_anonymous_id: str | None = None


@dataclass(slots=True)
class IdentityResult:
    device_id: str | None  # the Amplitude device_id (None for non-web: the mapping's default applies)
    session: SessionState | None
    started: bool  # a new session began
    mismatch: bool  # a client session id differed from the server's and was replaced
    web: bool
    # The stored session this event ended by rotating it (idle past the timeout), for the
    # session-end event. Only a session the store still held counts: one the store no longer
    # has was already ended by the idle sweep (or lost with a restart), so no duplicate.
    ended: SessionState | None = None
    # The decision, in words, for the cockpit's event trail: where the device id came from and
    # what became of the session (constants but for a rotation's idle gap).
    device_from: str = ""
    session_how: str = ""


# Where a device id came from (IdentityResult.device_from).
FROM_CONTEXT = "context.device.id (sent by the client)"
FROM_COOKIE = "the device cookie"
FROM_ADOPTED = "anonymousId, adopted in place of the page's provisional id"
FROM_ANONYMOUS = "anonymousId (no device cookie yet)"
FROM_BATCH = "an earlier message of this request"
FROM_OTHER = "anonymousId: another visitor than the request's cookies"
FROM_NEW = "new (no cookie, no anonymousId)"
FROM_DEFAULT = "not web: Segment's default (context.device.id, else anonymousId)"
# What became of the session (IdentityResult.session_how), but for a rotation.
SESSION_STARTED = "started"
SESSION_ADOPTED = "started with the plugin's session id (adopted)"
SESSION_CONTINUED = "continued"
SESSION_REPLACED = "continued; the client's different session id was replaced"
SESSION_CLIENT = "the library's own session id"
SESSION_NONE = "no session id"
SESSION_OPTED_OUT = "touched; no session id written (Actions Amplitude disabled for this event)"


def session_how(old: SessionState | None, new: SessionState, started: bool, adopt: int | None, t_ms: int) -> str:
    """``IdentityResult.session_how`` for a touched session (the mismatch case is the caller's)."""
    if not started:
        return SESSION_CONTINUED
    if old is not None and old.session_id != new.session_id:
        return f"rotated after {duration_text(t_ms - old.last_event_ms)} idle (was {old.session_id})"
    return SESSION_ADOPTED if adopt is not None and new.session_id == adopt else SESSION_STARTED


def event_time_ms(message: Mapping[str, Any], now_ms: int) -> int:
    """The message's ``timestamp`` in epoch ms, clamped to ``now_ms``; ``now_ms`` if unusable."""
    value = message.get("timestamp")
    if not isinstance(value, str) or len(value) > 64:
        return now_ms
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return now_ms
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        t_ms = (parsed - _EPOCH) // _ONE_MS
    except OverflowError:
        return now_ms
    if t_ms < MIN_EPOCH_MS:
        return now_ms
    return min(t_ms, now_ms)



def _context_device_id(message: Mapping[str, Any]) -> str | None:
    context = message.get("context")
    if isinstance(context, dict):
        device = context.get("device")
        if isinstance(device, dict):
            value = device.get("id")
            if isinstance(value, str) and value.strip():
                return value
    return None


def _non_blank(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _user_agent(message: Mapping[str, Any]) -> str | None:
    context = message.get("context")
    if isinstance(context, dict) and isinstance(context.get("userAgent"), str):
        return context["userAgent"][:MAX_USER_AGENT]
    return None


def _bounded(text: str | None, limit: int) -> str | None:
    return text[:limit] if text is not None else None


class IdentityService:
    def __init__(
        self,
        settings: Any,
        store: SessionStore,
        signing_keys: list[str],
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.policy = CookiePolicy.from_settings(settings)
        self._cookie_names = frozenset({self.policy.device_cookie, self.policy.session_cookie})
        self._strings: dict[str, str] = {}
        self.codec = CookieCodec(signing_keys, max_age_s=settings.sessions.device_cookie_max_age, clock=clock)
        self.timeout_ms = int(settings.sessions.timeout * 1000)
        self.stamp_non_web = bool(settings.sessions.stamp_non_web)
        # analytics.js's own identity cookies, set by the edge too (``ajs.py``); None: off.
        self.ajs = AjsCookies(self.policy, int(settings.sessions.ajs_cookie_max_age)) if settings.sessions.ajs_cookies else None

    @classmethod
    def from_settings(cls, settings: Any) -> IdentityService:
        """The service with the configured store and signing keys (or the kept key file)."""
        return cls(settings, open_store(settings), load_signing_keys(settings))

    def read_cookies(self, cookies: Mapping[str, str], *, session: bool = True) -> CookieIdentity:
        """Verify the request's cookies; anything invalid reads as absent.

        ``session=False`` reads the device cookie alone, for an HTML page (``page_cookies``
        looks at nothing else): verifying a session cookie the page never uses cost a
        signature check per page view, ~10 µs.
        """
        device = self.codec.load_device_signed(cookies.get(self.policy.device_cookie))
        if device is None:
            return CookieIdentity()
        device_id, provisional, signed_at = device
        state = self.codec.load_session(cookies.get(self.policy.session_cookie), device_id) if session else None
        return CookieIdentity(device_id=device_id, session=state, provisional=provisional, has_edge_cookies=True,
                              cookie_device=(device_id, provisional), cookie_signed_at=signed_at)

    def read_cookie_header(self, header: str | None, *, session: bool = True) -> CookieIdentity:
        """``read_cookies`` from a raw ``Cookie`` header, looking only at our two cookies."""
        return self.read_cookies(cookie_values(header, self._cookie_names), session=session)

    async def process(self, message: dict[str, Any], jar: CookieIdentity, now_ms: int,
                      consent: str | None = None) -> IdentityResult:
        """Resolve the device, touch its session and stamp the message (see module doc).
        ``consent``: the event's consent state, kept with the session for /debug."""
        t_ms = event_time_ms(message, now_ms)
        if is_web(message, jar.has_edge_cookies):
            return await self._web(message, jar, t_ms, consent)
        return await self._non_web(message, t_ms, consent)

    async def _web(self, message: dict[str, Any], jar: CookieIdentity, t_ms: int, consent: str | None) -> IdentityResult:
        # Everything up to the store call is synchronous, so concurrent calls sharing a jar
        # (one batch, gathered) agree on one device id.
        anonymous_id = message.get("anonymousId")
        anonymous_id = anonymous_id if valid_device_id(anonymous_id) else None
        if anonymous_id is not None:
            if jar.bound_anonymous_id is None:
                jar.bound_anonymous_id = anonymous_id
            elif anonymous_id != jar.bound_anonymous_id and anonymous_id != jar.device_id:
                # Another browser than the request's cookies belong to: its own ids and session;
                # the jar (and the response's cookies) stay the first visitor's.
                context_id = _context_device_id(message)
                return await self._stamped(context_id or anonymous_id, message, t_ms, None, consent,
                                           FROM_CONTEXT if context_id else FROM_OTHER)
        adopted = False
        if jar.provisional:
            if anonymous_id is not None:
                jar.device_id = anonymous_id
                adopted = True
            jar.provisional = False
        context_id = _context_device_id(message)
        if context_id:
            device_id, device_from = context_id, FROM_CONTEXT
        elif jar.device_id:
            device_id = jar.device_id
            device_from = FROM_ADOPTED if adopted else FROM_COOKIE if jar.has_edge_cookies else FROM_BATCH
        elif anonymous_id:
            device_id, device_from = anonymous_id, FROM_ANONYMOUS
        else:
            device_id, device_from = str(uuid.uuid4()), FROM_NEW
        if jar.device_id is None:
            jar.device_id = device_id if valid_device_id(device_id) else str(uuid.uuid4())

        carried = jar.session if device_id == jar.device_id else None
        result = await self._stamped(device_id, message, t_ms, carried, consent, device_from)
        if device_id == jar.device_id:
            jar.session = reconcile(jar.session, result.session)
        return result

    async def _stamped(self, device_id: str, message: dict[str, Any], t_ms: int, carried: SessionState | None,
                       consent: str | None, device_from: str) -> IdentityResult:
        """Touch ``device_id``'s session and stamp its id on the web message."""
        present, claimed = client_session_claim(message)  # read once: nothing below changes it before the stamp
        adopt = adoptable_claim(present, claimed)
        old, new, started, ended = await self._touch(device_id, message, t_ms, carried, adopt, consent)
        mismatch = False
        how = session_how(old or carried, new, started, adopt, t_ms)  # a restarted memory store: the cookie's
        if may_stamp(message):
            mismatch = claim_mismatches(present, claimed, new.session_id)
            stamp_session_id(message, new.session_id)
            if mismatch and not started:
                how = SESSION_REPLACED
        else:
            how = SESSION_OPTED_OUT
        return IdentityResult(device_id=device_id, session=new, started=started, mismatch=mismatch, web=True, ended=ended,
                              device_from=device_from, session_how=how)

    async def _non_web(self, message: dict[str, Any], t_ms: int, consent: str | None) -> IdentityResult:
        """Left alone unless ``stamp_non_web`` and no session id is present.

        The stamped session is keyed like a web one (``context.device.id``, else
        ``anonymousId``), so a backend event sent with the browser's anonymousId joins the
        browser's session.
        """
        present, _ = client_session_value(message)
        key = _context_device_id(message) or _non_blank(message.get("anonymousId"))
        if present or not self.stamp_non_web or key is None or not may_stamp(message):
            return IdentityResult(device_id=None, session=None, started=False, mismatch=False, web=False,
                                  device_from=FROM_DEFAULT, session_how=SESSION_CLIENT if present else SESSION_NONE)
        old, new, started, ended = await self._touch(key, message, t_ms, None, None, consent)
        stamp_session_id(message, new.session_id)
        return IdentityResult(device_id=None, session=new, started=started, mismatch=False, web=False, ended=ended,
                              device_from=FROM_DEFAULT,
                              session_how="stamped (sessions.stamp_non_web): " + session_how(old, new, started, None, t_ms))

    def _shared(self, text: str | None) -> str | None:
        """One string object per distinct user agent or library name.

        Every stored session keeps its visitor's user agent; parsed from each request, equal
        strings would each take ~200 bytes, while most visitors share a few dozen.
        """
        if text is None:
            return None
        shared = self._strings.get(text)
        if shared is None:
            if len(self._strings) >= SHARED_STRINGS:
                self._strings.clear()
            shared = self._strings[text] = text
        return shared

    async def _touch(
        self,
        key: str,
        message: Mapping[str, Any],
        t_ms: int,
        carried: SessionState | None,
        adopt: int | None,
        consent: str | None = None,
    ) -> tuple[SessionState | None, SessionState, bool, SessionState | None]:
        """(the state before, the state after, started, the session this event ended)."""
        user_id = _non_blank(message.get("userId"))
        library = self._shared(_bounded(library_name(message), MAX_LIBRARY_NAME))
        user_agent = self._shared(_user_agent(message))
        request = TouchRequest(t_ms, self.timeout_ms, carried=carried, adopt_session_id=adopt, user_id=user_id,
                               library=library, user_agent=user_agent, consent=consent)
        old, new, started = await self.store.touch(key, request)
        ended = old if started and old is not None and old.session_id != new.session_id else None
        return old, new, started, ended

    def response_cookies(self, jar: CookieIdentity, now_ms: int) -> list[CookieSpec]:
        """Cookies for a tracking response: device, session and the readable pair.

        The readable pair is not issued for a session already over at ``now_ms`` (the page's
        next event starts a new one; the plugin must not stamp the old id). The device cookie
        is re-sent when it changed or was signed more than ``DEVICE_COOKIE_REFRESH_MS`` ago
        (which renews its Max-Age): re-signing an unchanged cookie on every call would cost a
        signature and a header per event for nothing.
        """
        if jar.device_id is None:
            return []
        policy = self.policy
        cookies = []
        if self._device_cookie_due(jar, now_ms):
            cookies.append(policy.signed(policy.device_cookie, self.codec.dump_device(jar.device_id, provisional=jar.provisional)))
        session = jar.session
        if session is not None:
            # Signed even when already over: late events of that session (a queue flushed after
            # going offline) must find it after a restart, not start it a second time.
            cookies.append(policy.signed(policy.session_cookie, self.codec.dump_session(jar.device_id, session)))
            if now_ms - session.last_event_ms <= self.timeout_ms:
                cookies.append(policy.readable(READABLE_SESSION_COOKIE, session.session_id))
                cookies.append(policy.readable(READABLE_LAST_ACCESS_COOKIE, session.last_event_ms))
        return cookies

    def page_cookies(self, jar: CookieIdentity, now_ms: int, browser_anonymous_id: str | None = None) -> list[CookieSpec]:
        """The device cookie for an HTML page response, so the first page view owns an id
        (re-sent on later pages under the same rule as ``response_cookies``).

        No session is touched (a page load is not an event). A visitor without a cookie gets
        a provisional id: the anonymousId analytics.js already keeps (``ajs_anonymous_id``),
        so the two agree from the first page, else a new one. (``now_ms`` keeps the
        signature parallel to ``response_cookies``.)
        """
        if jar.device_id is None:
            jar.device_id = browser_anonymous_id or str(uuid.uuid4())
            jar.provisional = True
        if not self._device_cookie_due(jar, now_ms):
            return []
        return [self.policy.signed(self.policy.device_cookie, self.codec.dump_device(jar.device_id, provisional=jar.provisional))]

    @staticmethod
    def _device_cookie_due(jar: CookieIdentity, now_ms: int) -> bool:
        """The device cookie must be (re-)sent: new, changed, or signed over a day ago."""
        return jar.cookie_device != (jar.device_id, jar.provisional) or now_ms - jar.cookie_signed_at * 1000 >= DEVICE_COOKIE_REFRESH_MS
