"""The operator's view: live sessions, one session's events as sent, the spool, counters.

Every view is both an HTML page (no build step, no JavaScript framework) and JSON (``?format=json``
or ``Accept: application/json``), built from the same dict so the two never disagree.
Access: a configured token (``Authorization: Bearer`` or a login form that sets a signed cookie),
compared in constant time and never logged; with no token, loopback clients only.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from itsdangerous import BadSignature

from edgeproxy.config import Settings
from edgeproxy.identity import ajs
from edgeproxy.identity.cookies import cookie_values, forget_refusal, make_serializer
from edgeproxy.privacy.consent import privacy_signal

LOGIN_COOKIE = "_ep_debug"
LOGIN_MAX_AGE = 12 * 3600
ROWS = 20  # rows per table of the overview

Provider = Callable[..., Awaitable[Any]]


class DebugViews:
    """Handlers for ``{debug_path}``; data comes from callables so this module imports no store."""

    def __init__(self, settings: Settings, signing_keys: list[str], *, store: Any, spool: Any, identity: Any,
                 sink: Any, counters: Callable[[], dict[str, float]], privacy_log: Any = None,
                 forget: Provider | None = None):
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

    def routes(self) -> list[web.RouteDef]:
        b = self.base
        return [
            web.get(b, self.overview),
            web.get(b + "/", self.overview),
            web.get(b + "/me", self.me),
            web.get(b + "/sessions/{device_id}", self.session),
            web.post(b + "/forget", self.forget),
            web.get(b + "/login", self.login_form),
            web.post(b + "/login", self.login),
        ]

    # -- access -----------------------------------------------------------------------------

    def _allowed(self, request: web.Request) -> bool:
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

    def _deny(self, request: web.Request) -> web.Response:
        if not self.token:
            return web.Response(status=403, text="/debug is open to loopback clients only; set [debug] token to reach it from elsewhere.\n")
        if _wants_json(request):
            return _json({"error": "a debug token is required (Authorization: Bearer <token>)"}, status=401)
        raise web.HTTPSeeOther(self.base + "/login")

    async def login_form(self, request: web.Request) -> web.Response:
        if not self.token:
            raise web.HTTPSeeOther(self.base)
        body = (
            f'<form method="post" action="{html.escape(self.base)}/login">'
            '<label>Debug token <input type="password" name="token" autofocus></label> '
            "<button>Sign in</button></form>"
        )
        return _page("edgeproxy debug: sign in", body)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", ""))
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            return _page("edgeproxy debug: sign in", "<p>Wrong token.</p>", status=401)
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
        if not self._allowed(request):
            return self._deny(request)
        query = request.query.get("q", "")[:200]
        source = request.query.get("source", "")[:64] or None
        sessions = await self.store.list_sessions(query=query, limit=100)
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
        }
        if _wants_json(request):
            return _json(data)
        return _page("edgeproxy debug", _render_overview(self.base, data, self.sources))

    async def session(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._deny(request)
        return await self._session_view(request, request.match_info["device_id"][:200])

    async def me(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._deny(request)
        header = request.headers.get("Cookie")
        jar = self.identity.read_cookie_header(header)
        # Before consent (cookies_before_consent = false) there is no device cookie: the session
        # is kept under analytics.js's own anonymousId, which it writes as a cookie itself.
        device_id = getattr(jar, "device_id", None) or ajs.browser_anonymous_id(cookie_values(header, ajs.NAMES))
        signal = privacy_signal(request.headers)
        if not device_id:
            data = {"device_id": None, "privacy_signal": signal,
                    "message": "no edgeproxy device cookie and no ajs_anonymous_id on this request"}
            if _wants_json(request):
                return _json(data)
            return _page("your session", "<p>This browser has no edgeproxy device cookie and no analytics.js "
                         "anonymousId yet: send an event first.</p>")
        return await self._session_view(request, device_id, privacy_signal=signal)

    async def forget(self, request: web.Request) -> web.Response:
        """``POST {debug}/forget`` with ``user_id`` or ``device_id`` (form or JSON): ``edgeproxy
        forget`` in this process, which also holds a memory store's sessions."""
        if not self._allowed(request):
            return self._deny(request)
        if request.content_type == "application/json":
            try:
                given = await request.json()
            except ValueError:
                return _json({"error": "the body is not JSON"}, status=400)
        else:
            given = dict(await request.post())
        user_id, device_id = (str(given.get(k) or "").strip()[:1024] or None for k in ("user_id", "device_id"))
        if self.forget_person is None or not (user_id or device_id):
            return _json({"error": "give user_id or device_id"}, status=400)
        report = await self.forget_person(user_id=user_id, device_id=device_id)
        if _wants_json(request) or request.content_type == "application/json":
            return _json(report.as_dict())
        return _page("forgotten", "<pre>" + _e("\n".join(report.lines())) + "</pre>")

    def _privacy(self, **filters: Any) -> list[dict[str, Any]] | None:
        return self.privacy_log.recent(limit=ROWS * 2, **filters) if self.privacy_log is not None else None

    async def _session_view(self, request: web.Request, device_id: str, **extra: Any) -> web.Response:
        state = await self.store.get(device_id)
        events = await self.spool.events_for_session(device_id, limit=100)
        data = {
            "device_id": device_id,
            "session": _session_row(device_id, state) if state is not None else None,
            "consent": getattr(state, "consent", None),
            **extra,
            "events": events,
            "privacy": self._privacy(device_id=device_id),
        }
        if _wants_json(request):
            return _json(data)
        return _page(f"session {device_id}", _render_session(self.base, data))


# -- rendering ----------------------------------------------------------------------------------


def _wants_json(request: web.Request) -> bool:
    return request.query.get("format") == "json" or "application/json" in request.headers.get("Accept", "")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data, default=_default), content_type="application/json")


def _default(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _of_source(rows: list[dict[str, Any]], source: str | None, limit: int | None = ROWS) -> list[dict[str, Any]]:
    """The rows of one source (all without a filter), at most ``limit``."""
    return [r for r in rows if source is None or r.get("source", "default") == source][:limit]


def _session_row(device_id: str, state: Any) -> dict[str, Any]:
    row = asdict(state) if is_dataclass(state) else dict(state)
    return {"device_id": device_id, **row}


def _iso(ms: Any) -> str:
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return ""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}code,pre{font:12px/1.3 ui-monospace,monospace}pre{white-space:pre-wrap;margin:0;max-width:60rem}
.state-delivered{color:#17702a}.state-dead{color:#a11}.state-pending,.state-retrying,.state-in_flight{color:#8a5a00}
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body or '<tr><td colspan=%d>none</td></tr>' % len(headers)}</table>"


def _render_overview(base: str, data: dict[str, Any], sources: list[str]) -> str:
    b = _e(base)
    options = "".join(f'<option value="{_e(n)}"{" selected" if n == data["source"] else ""}>{_e(n)}</option>'
                      for n in sources)
    parts = [
        f'<p><a href="{b}/me">my session</a> · <a href="{b}?format=json">JSON</a></p>',
        f'<form method="post" action="{b}/forget">Forget a person: <input name="user_id" placeholder="user id"> '
        'or <input name="device_id" placeholder="device id"> <button>Forget</button></form>',
        f'<form method="get" action="{b}"><input name="q" value="{_e(data["query"])}" '
        'placeholder="device or user id"> <button>Search</button></form>',
        f'<form method="get" action="{b}">Deliveries of source <select name="source"><option value="">all</option>'
        f'{options}</select> <button>Filter</button></form>',
        "<h2>Live sessions</h2>",
        _table(
            ["device id", "user id", "session id", "start", "last event", "events", "consent", "library", "user agent"],
            [
                [
                    f'<a href="{b}/sessions/{_e(s["device_id"])}"><code>{_e(s["device_id"])}</code></a>',
                    _e(s.get("user_id")),
                    f"<code>{_e(s.get('session_id'))}</code>",
                    _e(_iso(s.get("session_id"))),
                    _e(_iso(s.get("last_event_ms"))),
                    _e(s.get("event_count")),
                    _e(s.get("consent") or ""),
                    _e(s.get("library")),
                    _e((s.get("user_agent") or "")[:80]),
                ]
                for s in data["sessions"]
            ],
        ),
        "<h2>Spool</h2>",
        _table(["", ""], [[_e(k), _e(v)] for k, v in data["spool"].items()]),
        _table(["target", "source", "pending", "dead"],
               [[_e(r["target"]), _e(r["source"]), _e(r["pending"]), _e(r["dead"])] for r in data["by_target"]]),
        "<h2>In flight</h2>",
        _undelivered_table(data["in_flight"]),
        "<h2>Retrying</h2>",
        _undelivered_table(data["retrying"]),
        "<h2>Recent upstream responses</h2>",
        _table(
            ["time", "target", "source", "endpoint", "status", "items", "body"],
            [[_e(_iso(r.get("time_ms") or r.get("time"))), *_where(r), _e(r.get("endpoint")), _e(r.get("status")),
              _e(r.get("items")), f"<code>{_e(str(r.get('body', ''))[:200])}</code>"] for r in data["recent_responses"]],
        ),
        "<h2>Dead letters</h2>",
        _table(["reason", "count"], [[f"<code>{_e(code)}</code>", _e(n)] for code, n in data["dead_by_reason"].items()]),
        _table(
            ["message id", "target", "source", "reason code", "reason", "device id"],
            [[f"<code>{_e(d.get('message_id'))}</code>", *_where(d), f"<code>{_e(d.get('reason_code'))}</code>", _e(d.get("reason")),
              _e(d.get("device_id"))] for d in data["dead_letters"]],
        ),
    ]
    if data["sink"] is not None:
        parts += [
            "<h2>Local sink (no Amplitude api_key configured: the requests Amplitude would get)</h2>",
            _table(["request"], [[f"<pre>{_e(orjson.dumps(r, default=_default, option=orjson.OPT_INDENT_2).decode())}</pre>"] for r in reversed(data["sink"])]),
        ]
    parts += ["<h2>Privacy decisions (this process: withheld, anonymised, bots)</h2>", _privacy_table(data["privacy"])]
    parts += ["<h2>Counters</h2>", _table(["", ""], [[_e(k), _e(v)] for k, v in sorted(data["counters"].items())])]
    return "".join(parts)


def _where(row: dict[str, Any]) -> list[str]:
    """The target and source cells of a delivery row."""
    return [_e(row.get("target", "amplitude")), _e(row.get("source", "default"))]


def _undelivered_table(rows: list[dict[str, Any]]) -> str:
    """Events in flight or waiting to be retried, with why and when."""
    return _table(
        ["message id", "target", "source", "endpoint", "device id", "attempts", "next attempt", "last error"],
        [[f"<code>{_e(r.get('message_id'))}</code>", *_where(r), _e(r.get("endpoint")), _e(r.get("device_id")), _e(r.get("attempts")),
          _e(_iso(r.get("next_attempt_ms"))), _e(r.get("last_error"))] for r in rows],
    )


def _render_session(base: str, data: dict[str, Any]) -> str:
    b = _e(base)
    s = data["session"]
    summary = (
        _table(["", ""], [[_e(k), _e(_iso(v) if k in {"session_id", "last_event_ms", "first_seen"} else v)] for k, v in s.items()])
        if s else "<p>No live session for this device (expired, or held by another process's memory).</p>"
    )
    events = _table(
        ["received", "target", "source", "endpoint", "state", "attempts", "last error", "as sent"],
        [
            [
                _e(_iso(ev.get("received_ms"))),
                *_where(ev),
                _e(ev.get("endpoint")),
                f'<span class="state-{_e(ev.get("state"))}">{_e(ev.get("state"))}</span>',
                _e(ev.get("attempts")),
                _e(ev.get("last_error")),
                f"<pre>{_e(orjson.dumps(ev.get('item'), option=orjson.OPT_INDENT_2).decode())}</pre>",
            ]
            for ev in data["events"]
        ],
    )
    privacy = ""
    if "privacy_signal" in data:
        privacy = (f'<p>Consent state: <b>{_e(data["consent"] or "none recorded")}</b> · this request '
                   f'{"sends" if data["privacy_signal"] else "does not send"} Sec-GPC / DNT</p>')
    return (f'<p><a href="{b}">all sessions</a></p>{privacy}{summary}<h2>Recent events</h2>{events}'
            f'<h2>Privacy decisions</h2>{_privacy_table(data["privacy"])}')


def _privacy_table(rows: list[dict[str, Any]] | None) -> str:
    """Events the privacy rules did not deliver (and why), anonymised, or marked as bots."""
    if rows is None:
        return "<p>not recorded</p>"
    return _table(
        ["time", "source", "message id", "type", "event", "device id", "outcome", "reason", "consent", "bot"],
        [[_e(_iso(r["at_ms"])), _e(r["source"]), f"<code>{_e(r['message_id'])}</code>", _e(r["type"]), _e(r["event"]),
          _e(r["device_id"]), f'<span class="privacy-{_e(r["outcome"])}">{_e(r["outcome"])}</span>', _e(r["reason"] or ""),
          _e(r["consent"]), _e(r["bot"] or "")] for r in rows],
    )
