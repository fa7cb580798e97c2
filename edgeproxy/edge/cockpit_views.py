"""The cockpit's handlers under ``{debug_path}``: the event trail, the live stream, replay.

Access, security headers and the JSON twins are ``debug.py``'s (same token, same rules).
The stream is Server-Sent Events: every ``STREAM_EVERY_S`` the overview's live part (as
rendered HTML, escaped here, so the page's script only swaps it in) and the trail rows that
arrived since the last message. A stream ends after ``STREAM_MAX_S`` (the browser reconnects
by itself) and at shutdown, so none holds a process open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import orjson
from aiohttp import web

from edgeproxy.cockpit.history import SAMPLE_EVERY_S, MinuteHistory, snapshot
from edgeproxy.cockpit.live import live_data
from edgeproxy.cockpit.pages import live_section, render_entry, render_trail, trail_rows
from edgeproxy.cockpit.trail import Trail
from edgeproxy.delivery.spool import ReplayFilter
from edgeproxy.edge.debug import DebugViews, json_response, secured, wants_json
from edgeproxy.edge.debug_pages import SECURITY_HEADERS, esc, page
from edgeproxy.staticfiles import STATIC_DIR

log = logging.getLogger("edgeproxy.debug")

STREAM_EVERY_S = 2.0
STREAM_MAX_S = 300.0
TRAIL_PAGE_ROWS = 100
SCRIPT = STATIC_DIR / "debug" / "cockpit.js"


class CockpitViews:
    def __init__(self, debug: DebugViews, trail: Trail | None, history: MinuteHistory, registry: Any,
                 wake_delivery: Callable[[], None] | None = None):
        self.debug = debug
        self.trail = trail
        self.history = history
        self.registry = registry
        self.wake_delivery = wake_delivery
        self._closing = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None
        self._script = SCRIPT.read_bytes()

    def routes(self) -> list[web.RouteDef]:
        b = self.debug.base
        return [
            web.get(b + "/events", secured(self.events)),
            web.get(b + "/events/{message_id}", secured(self.event)),
            web.get(b + "/stream", secured(self.stream)),
            web.post(b + "/replay", secured(self.replay)),
            web.get(b + "/cockpit.js", secured(self.script)),
        ]

    # -- the minute history ------------------------------------------------------------------

    async def sample(self) -> dict[str, Any]:
        """Fold the counters and the spool's gauges into the history; returns the live data."""
        now = int(time.time() * 1000)
        stats = await self.debug.spool.stats()
        gauges = {"depth": float(stats.get("depth", 0) + stats.get("in_flight", 0)),
                  "oldest_age_s": float(stats.get("oldest_age_s") or 0)}
        self.history.sample(now, snapshot(self.registry.collect()), gauges)
        return live_data(self.history, now)

    async def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample_forever())

    async def close(self) -> None:
        """Shutdown: end the streams and the sampler."""
        self._closing.set()
        if self._sampler is not None:
            self._sampler.cancel()

    async def _sample_forever(self) -> None:
        while not self._closing.is_set():
            try:
                await self.sample()
            except Exception as exc:  # the spool unreachable for a moment: the next sample catches up
                log.warning("cockpit sample failed: %s", exc)
            await asyncio.sleep(SAMPLE_EVERY_S)

    # -- pages --------------------------------------------------------------------------------

    def _found(self, query: str, after: int = 0) -> list[dict[str, Any]]:
        if self.trail is None:
            return []
        return [e.summary() for e in self.trail.find(query, limit=TRAIL_PAGE_ROWS, after_seq=after)]

    async def events(self, request: web.Request) -> web.Response:
        if not self.debug.allowed(request):
            return self.debug.deny(request)
        query = request.query.get("q", "")[:200]
        data = {"query": query, "size": self.trail.size if self.trail else 0, "kept": len(self.trail or ()),
                "seq": self.trail.last_seq if self.trail else 0, "events": self._found(query)}
        if wants_json(request):
            return json_response(data)
        body = render_trail(self.debug.base, data)
        if self.trail is None:
            body = "<p>The event trail is off (<code>[debug] trail_size = 0</code>).</p>" + body
        return page("event trail", body)

    async def event(self, request: web.Request) -> web.Response:
        if not self.debug.allowed(request):
            return self.debug.deny(request)
        message_id = request.match_info["message_id"][:200]
        entry = self.trail.get(message_id) if self.trail is not None else None
        if entry is None:
            text = (f"message {message_id} is not in this process's trail (it keeps the last "
                    f"{self.trail.size if self.trail else 0} messages; behind nginx another process may hold it). "
                    "Its spooled items are on its device's session page.")
            if wants_json(request):
                return json_response({"error": text}, status=404)
            return page("event not found", f"<p>{esc(text)}</p>", status=404)
        data = entry.as_dict()
        if wants_json(request):
            return json_response(data)
        return page(f"event {message_id}", render_entry(self.debug.base, data))

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(body=self._script, content_type="text/javascript", headers={"Cache-Control": "no-cache"})

    # -- live ---------------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if not self.debug.allowed(request):
            return self.debug.deny(request)
        view = "events" if request.query.get("view") == "events" else "overview"
        query = request.query.get("q", "")[:200]
        try:  # the newest trail row the page shows; without it, the first message only sets the cursor
            after: int | None = int(request.query["after"]) if "after" in request.query else None
        except ValueError:
            after = None
        response = web.StreamResponse(headers={
            **SECURITY_HEADERS, "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each message on at once
        })
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        deadline = time.monotonic() + STREAM_MAX_S
        while not self._closing.is_set() and time.monotonic() < deadline:
            live = await self.sample()
            rows = self._found(query, after) if after is not None else []
            seq = self.trail.last_seq if self.trail else 0
            message = {"seq": seq, "rows": trail_rows(self.debug.base, rows), "count": len(rows)}
            if view == "overview":
                message["live"] = live_section(live)
            after = seq
            try:
                await response.write(b"data: " + orjson.dumps(message) + b"\n\n")
            except (ConnectionResetError, RuntimeError):  # the page went away
                break
            try:
                await asyncio.wait_for(self._closing.wait(), STREAM_EVERY_S)
            except TimeoutError:
                pass
        return response

    # -- act ----------------------------------------------------------------------------------

    async def replay(self, request: web.Request) -> web.Response:
        """``POST {debug}/replay`` with ``message_id`` or ``reason``: ``edgeproxy replay`` here."""
        if not self.debug.allowed(request):
            return self.debug.deny(request)
        given = await self.debug.read_form(request)
        if isinstance(given, web.Response):
            return given
        message_id, reason = (str(given.get(k) or "").strip()[:200] or None for k in ("message_id", "reason"))
        if not (message_id or reason):
            return json_response({"error": "give message_id or reason"}, status=400)
        selection = ReplayFilter(reasons=(reason,) if reason else (), message_ids=(message_id,) if message_id else ())
        count = await self.debug.spool.replay_dead_letters(selection)
        if count and self.wake_delivery is not None:
            self.wake_delivery()
        what = f"message {message_id}" if message_id else f"reason {reason}"
        log.info("/debug replay of %s: %d dead letter(s) queued again", what, count)
        if wants_json(request) or request.content_type == "application/json":
            return json_response({"replayed": count, "message_id": message_id, "reason": reason})
        note = "" if count else " (a dead letter the mapping refused has nothing to send: fix the event and resend it)"
        return page("replayed", f"<p>{count} dead letter(s) of {esc(what)} queued again for delivery{esc(note)}.</p>"
                    f'<p><a href="{esc(self.debug.base)}">back to the overview</a></p>')
