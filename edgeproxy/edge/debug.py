"""The operator's view: live sessions, one session's events as sent, the spool, counters.

Every view is both an HTML page (no build step, no JavaScript framework) and JSON (``?format=json``
or ``Accept: application/json``), built from the same dict so the two never disagree.
Access: a configured token (``Authorization: Bearer`` or a login form that sets a signed cookie),
compared in constant time and never logged; with no token, loopback clients only.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import os
import socket
import time
from dataclasses import asdict, is_dataclass
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from itsdangerous import BadSignature

from edgeproxy.cockpit.devices import ClientSessions
from edgeproxy.cockpit.pages import devices_table, live_hooks, live_section, trail_table
from edgeproxy.cockpit.trail import Trail
from edgeproxy.config import Settings
from edgeproxy.edge.debug_pages import SECURITY_HEADERS, esc, json_default, page, render_overview, render_session
from edgeproxy.identity import ajs
from edgeproxy.identity.cookies import cookie_values
from edgeproxy.identity.signing import forget_refusal, make_serializer
from edgeproxy.privacy.consent import privacy_signal

LOGIN_COOKIE = "_ep_debug"
LOGIN_MAX_AGE = 12 * 3600
ROWS = 20  # rows per table of the overview

Provider = Callable[..., Awaitable[Any]]


class DebugViews:
    """Handlers for ``{debug_path}``; data comes from callables so this module imports no store."""

    def __init__(self, settings: Settings, signing_keys: list[str], *, store: Any, spool: Any, identity: Any,
                 sink: Any, counters: Callable[[], dict[str, float | int]], privacy_log: Any = None,
                 forget: Provider | None = None, trail: Trail | None = None,
                 live: Callable[[], Awaitable[dict[str, Any]]] | None = None):
        self.settings = settings
        self.base = settings.server.debug_path
        self.token = settings.debug.token
        self.serializer = make_serializer(signing_keys, "edgeproxy.debug-login")  # first key signs
        self.store = store
        self.spool = spool
        self.identity = identity
        self.sink = sink
        self.counters = counters
        self.privacy_log = privacy_log  # edge/privacy_gate.PrivacyLog: events the privacy rules withheld or marked
        self.forget_person = forget  # forget.forget_person bound to this process's store, spool and log
        self.sources = ["default", *(src.name for src in settings.sources)]
        self.started_ms = int(time.time() * 1000)  # what is in memory here (sessions, sink) dates from then
        self.process = {"pid": os.getpid(), "host": socket.gethostname()}  # which one answers, behind nginx
        self.trail = trail  # the cockpit's event trail (None: off)
        self.devices = trail.devices if trail is not None else ClientSessions(0)
        self.live = live  # samples the minute history and returns the overview's live data
        self._csrf_key = hashlib.sha256(b"edgeproxy.debug-csrf\0" + signing_keys[0].encode()).digest()

    def routes(self) -> list[web.RouteDef]:
        b = self.base
        return [
            web.get(b, secured(self.overview)),
            web.get(b + "/", secured(self.overview)),
            web.get(b + "/me", secured(self.me)),
            web.get(b + "/sessions/{device_id}", secured(self.session)),
            web.post(b + "/forget", secured(self.forget)),
            web.get(b + "/login", secured(self.login_form)),
            web.post(b + "/login", secured(self.login)),
        ]

    # -- access -----------------------------------------------------------------------------

    def allowed(self, request: web.Request) -> bool:
        if not self.token:
            try:
                return ipaddress.ip_address(request.remote or "").is_loopback
            except ValueError:
                return False
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(LOGIN_COOKIE)
        if cookie:
            try:
                self.serializer.loads(cookie, max_age=LOGIN_MAX_AGE)
                return True
            except BadSignature as exc:
                forget_refusal(exc)  # else a reference cycle pins this request until the collector runs
                return False
        return False

    def csrf_token(self, request: web.Request) -> str:
        """The token a /debug form must send back: bound to the operator's login (or to
        loopback access), so another site cannot make the operator's browser post a form."""
        basis = request.cookies.get(LOGIN_COOKIE) or "loopback"
        return hmac.new(self._csrf_key, basis.encode(), hashlib.sha256).hexdigest()

    async def read_form(self, request: web.Request) -> dict[str, Any] | web.Response:
        """A POST's fields: JSON (a browser cannot send it cross-site without CORS, which /debug
        never answers), or a form carrying the CSRF token; a refusal says what was wrong."""
        if request.content_type == "application/json":
            try:
                given = await request.json()
            except ValueError:
                return json_response({"error": "the body is not JSON"}, status=400)
            return given if isinstance(given, dict) else json_response({"error": "the body must be a JSON object"}, status=400)
        given = dict(await request.post())
        bearer = request.headers.get("Authorization", "")[:7].lower() == "bearer "  # allowed() checked its token
        if not bearer and not hmac.compare_digest(str(given.get("csrf", "")).encode(), self.csrf_token(request).encode()):
            return page("refused", "<p>This form is stale or did not come from this /debug page (its CSRF token "
                        "is missing or wrong): reload the page and try again.</p>", status=403)
        return given

    def deny(self, request: web.Request) -> web.Response:
        if not self.token:
            return web.Response(status=403, text="/debug is open to loopback clients only; set [debug] token to reach it from elsewhere.\n")
        if wants_json(request):
            return json_response({"error": "a debug token is required (Authorization: Bearer <token>)"}, status=401)
        raise web.HTTPSeeOther(self.base + "/login")

    async def login_form(self, request: web.Request) -> web.Response:
        if not self.token:
            raise web.HTTPSeeOther(self.base)
        body = (
            f'<form method="post" action="{html.escape(self.base)}/login">'
            '<label>Debug token <input type="password" name="token" autofocus></label> '
            "<button>Sign in</button></form>"
        )
        return page("edgeproxy debug: sign in", body)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", ""))
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            return page("edgeproxy debug: sign in", "<p>Wrong token.</p>", status=401)
        response = web.HTTPSeeOther(self.base)
        response.set_cookie(
            LOGIN_COOKIE,
            self.serializer.dumps("operator"),
            max_age=LOGIN_MAX_AGE,
            httponly=True,
            secure=self.settings.sessions.secure_cookies,
            samesite="Strict",
            path=self.base,
        )
        raise response

    # -- views ------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return self.deny(request)
        query = request.query.get("q", "")[:200]
        source = request.query.get("source", "")[:64] or None
        sessions = await self.store.list_sessions(query=query, limit=100)
        live = await self.live() if self.live is not None else None
        # Filtered rows are picked from a longer list, so a quiet source still shows its own.
        fetch = ROWS if source is None else ROWS * 10
        data = {
            "sessions": [_session_row(device_id, state) for device_id, state in sessions],
            "query": query,
            "source": source,
            "spool": await self.spool.stats(),
            "by_target": _of_source(await self.spool.depth_by_target(), source, None),
            "in_flight": _of_source(await self.spool.undelivered("in_flight", limit=fetch), source),
            "retrying": _of_source(await self.spool.undelivered("retrying", limit=fetch), source),
            "recent_responses": _of_source(await self.spool.recent_responses(limit=fetch), source),
            "dead_by_reason": await self.spool.dead_by_reason(),
            "dead_letters": _of_source(await self.spool.dead_letters(limit=fetch), source),
            "sink": list(self.sink)[-ROWS:] if self.sink is not None else None,
            "privacy": self._privacy(source=source),
            "counters": self.counters(),
            "live": live,
            "trail": [e.summary() for e in self.trail.find(query, limit=ROWS, source=source)] if self.trail is not None else None,
            "devices": [d.as_dict() for d in self.devices.recent(query, limit=ROWS * 2, source=source)],
            "process": {**self.process, "started_ms": self.started_ms, "session_store": self.settings.sessions.store,
                        "sink_size": getattr(self.sink, "maxlen", None)},
        }
        if wants_json(request):
            return json_response(data)
        return page("edgeproxy debug", self._cockpit(data) + render_overview(self.base, data, self.sources, self.csrf_token(request)))

    def _cockpit(self, data: dict[str, Any]) -> str:
        """The overview's top: live numbers and charts, the latest events, mobile and server devices."""
        b = esc(self.base)
        seq = self.trail.last_seq if self.trail is not None else 0
        live = f'<div id="live">{live_section(data["live"])}</div>' if data["live"] is not None else ""
        trail = (f'<h2>Latest events (<a href="{b}/events">event trail</a>)</h2>{trail_table(self.base, data["trail"])}'
                 if data["trail"] is not None else "<p>The event trail is off (<code>[debug] trail_size = 0</code>).</p>")
        devices = ("<h2>Mobile and server devices (the session ids their libraries sent)</h2>"
                   + devices_table(self.base, data["devices"]))
        return live_hooks(self.base, "overview", data["query"], seq) + live + trail + devices

    async def session(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return self.deny(request)
        return await self._session_view(request, request.match_info["device_id"][:200])

    async def me(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return self.deny(request)
        header = request.headers.get("Cookie")
        jar = self.identity.read_cookie_header(header)
        # Before consent (cookies_before_consent = false) there is no device cookie: the session
        # is kept under analytics.js's own anonymousId, which it writes as a cookie itself.
        device_id = getattr(jar, "device_id", None) or ajs.browser_anonymous_id(cookie_values(header, ajs.NAMES))
        signal = privacy_signal(request.headers)
        if not device_id:
            data = {"device_id": None, "privacy_signal": signal,
                    "message": "no edgeproxy device cookie and no ajs_anonymous_id on this request"}
            if wants_json(request):
                return json_response(data)
            return page("your session", "<p>This browser has no edgeproxy device cookie and no analytics.js "
                         "anonymousId yet: send an event first.</p>")
        return await self._session_view(request, device_id, privacy_signal=signal)

    async def forget(self, request: web.Request) -> web.Response:
        """``POST {debug}/forget`` with ``user_id`` or ``device_id`` (form or JSON): ``edgeproxy
        forget`` in this process, which also holds a memory store's sessions."""
        if not self.allowed(request):
            return self.deny(request)
        given = await self.read_form(request)
        if isinstance(given, web.Response):
            return given
        user_id, device_id = (str(given.get(k) or "").strip()[:1024] or None for k in ("user_id", "device_id"))
        if self.forget_person is None or not (user_id or device_id):
            return json_response({"error": "give user_id or device_id"}, status=400)
        report = await self.forget_person(user_id=user_id, device_id=device_id)
        if wants_json(request) or request.content_type == "application/json":
            return json_response(report.as_dict())
        return page("forgotten", "<pre>" + esc("\n".join(report.lines())) + "</pre>")

    def _privacy(self, **filters: Any) -> list[dict[str, Any]] | None:
        return self.privacy_log.recent(limit=ROWS * 2, **filters) if self.privacy_log is not None else None

    async def _session_view(self, request: web.Request, device_id: str, **extra: Any) -> web.Response:
        state = await self.store.get(device_id)
        events = await self.spool.events_for_session(device_id, limit=100)
        client = self.devices.get(device_id)
        data = {
            "device_id": device_id,
            "session": _session_row(device_id, state) if state is not None else None,
            "client_sessions": client.as_dict() if client is not None else None,
            "timeout_ms": int(self.settings.sessions.timeout * 1000),
            "consent": getattr(state, "consent", None),
            **extra,
            "events": events,
            "privacy": self._privacy(device_id=device_id),
        }
        if wants_json(request):
            return json_response(data)
        title = f"session {state.session_id} of device {device_id}" if state is not None else f"device {device_id}"
        return page(title, render_session(self.base, data, self.csrf_token(request)))


def secured(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Every /debug answer (pages, JSON, redirects, refusals) with ``SECURITY_HEADERS``."""
    async def secured(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response

    return secured


# -- rendering ----------------------------------------------------------------------------------


def wants_json(request: web.Request) -> bool:
    return request.query.get("format") == "json" or "application/json" in request.headers.get("Accept", "")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data, default=json_default), content_type="application/json")


def _of_source(rows: list[dict[str, Any]], source: str | None, limit: int | None = ROWS) -> list[dict[str, Any]]:
    """The rows of one source (all without a filter), at most ``limit``."""
    return [r for r in rows if source is None or r.get("source", "default") == source][:limit]


def _session_row(device_id: str, state: Any) -> dict[str, Any]:
    row = asdict(state) if is_dataclass(state) and not isinstance(state, type) else dict(state)
    return {"device_id": device_id, **row}


