"""The Segment tracking API: single messages and batches in, 200 only once spooled.

One request flows one way: read and size-check the body, parse, authenticate, then per
message normalize (``segment``), resolve identity (``identity``), map (``mapping``), and
finally one durable append of everything to the spool. Only after that append returns does
the client get its 200; if the spool cannot take the events it gets a 503 with
``Retry-After`` and keeps them (analytics.js and the mobile libraries retry 5xx).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import web

from edgeproxy import segment
from edgeproxy.cockpit.trail import Trail
from edgeproxy.config import Settings
from edgeproxy.delivery.queue import DeliveryQueue
from edgeproxy.delivery.records import DeadLetter, SpoolItem, SpoolUnavailable
from edgeproxy.edge.cookies_out import set_cookies
from edgeproxy.edge.identity_cookies import tracking_cookies
from edgeproxy.edge.cors import cors_headers, preflight
from edgeproxy.edge.flood import FloodGuard, retry_after_header
from edgeproxy.edge.privacy_gate import PrivacyGate
from edgeproxy.edge.tracking_body import check_message_size, read_body, tracking_error, tracking_json
from edgeproxy.identity.ajs import AjsCookies
from edgeproxy.identity.service import IdentityResult, IdentityService
from edgeproxy.identity.session_events import session_message
from edgeproxy.identity.sessions import client_session_value, parse_session_id
from edgeproxy.identity.store import StoreUnavailable
from edgeproxy.mapping import Mapper
from edgeproxy.metrics import Metrics
from edgeproxy.pipeline import Route, build_routes, default_device_id, relay_record, spool_records
from edgeproxy.privacy.policy import ALLOW, EXPIRE_COOKIES, SET_COOKIES, Verdict
from edgeproxy.sources import SourceTable

log = logging.getLogger("edgeproxy.ingest")

RETRY_AFTER_SECONDS = 5
_NO_ENVELOPE = segment.Envelope()  # what a single message's request contributes (frozen: one serves all)


@dataclass
class IngestContext:
    """Everything the ingest handlers need, built once by the app."""

    settings: Settings
    identity: IdentityService
    mapper: Mapper
    spool: DeliveryQueue
    metrics: Metrics
    wake_delivery: Callable[[], None] | None = None  # nudges the delivery worker after an append
    sources: SourceTable | None = None  # None: the settings' own (``mapper`` is the default source's)
    privacy: PrivacyGate | None = None  # None: one with a per-process secret (tests)
    trail: Trail | None = None  # the cockpit's event trail (None: ``debug.trail_size = 0``)


@dataclass(slots=True)
class Accepted:
    """One accepted message's spool records, kept together so a bad one can be rejected alone."""

    index: int
    type: str
    items: list[SpoolItem]
    dead: list[DeadLetter]
    msg: dict[str, Any]
    device_id: str | None
    verdict: Verdict
    identity: IdentityResult
    session_id: int | None


class IngestHandlers:
    """aiohttp handlers for ``{prefix}/v1/*`` tracking calls."""

    def __init__(self, ctx: IngestContext):
        self.ctx = ctx
        self.flood = FloodGuard(ctx.settings.server.ip_rate_limit, ctx.settings.server.ip_burst)
        self.accepting = True
        self.sources = ctx.sources or SourceTable(ctx.settings)
        self.source_routes = build_routes(self.sources, ctx.mapper)
        self.gate = ctx.privacy or PrivacyGate(ctx.metrics, os.urandom(32))
        self.expired = AjsCookies(ctx.identity.policy, 0).expired()  # a consent revoked: every identity cookie

    def stop_accepting(self) -> None:
        """Shutdown has begun: answer 503 + Retry-After from now on.

        Why not keep accepting until the spool closes: the delivery worker is flushing within
        the grace period, and an event taken now would only wait in the spool for the next
        start; the client (analytics.js, the mobile libraries) keeps it and retries another
        process instead. Requests already being handled still complete with their 200.
        """
        self.accepting = False

    def routes(self, prefix: str) -> list[web.AbstractRouteDef]:
        """One plain route per path (``/v1/t``, ``/v1/track``, …, ``/v1/b``): aiohttp finds a
        plain path in a dict, where one route matching ``{kind:t|track|…}`` ran a regular
        expression per call (~4 % of a single-event call's CPU)."""
        handlers = {kind: self.batch for kind in segment.BATCH_PATHS}
        handlers.update({kind: functools.partial(self.single, path_type) for kind, path_type in segment.PATH_TYPES.items()})
        routes: list[web.AbstractRouteDef] = []
        for kind, handler in sorted(handlers.items()):  # a path's two methods in a row: one resource
            routes += (web.post(f"{prefix}/v1/{kind}", handler), web.options(f"{prefix}/v1/{kind}", self.options))
        return routes

    async def options(self, request: web.Request) -> web.StreamResponse:
        return preflight(request, self.ctx.settings.server.cors_origins)

    async def single(self, path_type: str, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, path_type)

    async def batch(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, None)

    async def _handle(self, request: web.Request, path_type: str | None) -> web.StreamResponse:
        """``path_type``: the single message's type its path names (``/v1/t``: track), or None
        for a batch."""
        wait = self.flood.retry_after(request.remote or "", time.monotonic())
        response: web.StreamResponse
        if not self.accepting:
            response = self._unavailable("shutting down", 0, message="shutting down; retry")
            response.force_close()  # this process is leaving: let the client reconnect elsewhere
        elif wait:
            self.ctx.metrics.events_rejected_by("rate_limited").inc()
            response = tracking_json(
                429,
                {"success": False, "message": f"too many requests from this address; retry in {wait:.1f} s",
                 "code": "rate_limited"},
                headers={"Retry-After": retry_after_header(wait)},
            )
        else:
            response = await self._process(request, path_type)
        response.headers.update(cors_headers(request, self.ctx.settings.server.cors_origins))
        return response

    async def _process(self, request: web.Request, path_type: str | None) -> web.StreamResponse:
        ctx = self.ctx
        batch = path_type is None
        limit = segment.MAX_BATCH_BYTES if batch else segment.MAX_MESSAGE_BYTES
        body = await read_body(request, limit, ctx.settings.server.body_timeout, ctx.metrics)
        if isinstance(body, web.Response):
            return body
        try:
            write_key = segment.resolve_write_key(body, request.headers.get("Authorization"), [])
        except segment.Rejected as exc:
            ctx.metrics.events_rejected_by("write_key").inc()
            return tracking_error(400, exc.message, code=exc.code)
        source = self.sources.for_write_key(write_key)
        if source is None:
            ctx.metrics.events_rejected_by("write_key").inc()
            return tracking_error(401, "unknown write key", code="unauthorized")
        route = self.source_routes[source.name]

        received = datetime.now(timezone.utc)
        if batch:
            raws = body.get("batch")
            if not isinstance(raws, list):
                ctx.metrics.events_rejected_by("invalid_batch").inc()
                return tracking_error(400, "batch: must be an array of messages")
            if len(raws) > segment.MAX_BATCH_MESSAGES:
                ctx.metrics.events_rejected_by("too_many").inc(len(raws))
                return tracking_error(400, f"batch: {len(raws)} messages, at most {segment.MAX_BATCH_MESSAGES} per batch")
            envelope = segment.Envelope(
                sent_at=body.get("sentAt"),
                context=body.get("context") if isinstance(body.get("context"), dict) else None,
                integrations=body.get("integrations") if isinstance(body.get("integrations"), dict) else None,
            )
        else:
            raws = [body]
            envelope = _NO_ENVELOPE

        jar = ctx.identity.read_cookie_header(request.headers.get("Cookie"))
        now_ms = int(received.timestamp() * 1000)
        accepted: list[Accepted] = []
        rejected: list[dict[str, Any]] = []
        web_seen = False
        web_ids: tuple[Any, Any] = (None, None)  # the last web message's (anonymousId, userId), for ajs cookies
        web_cookies = SET_COOKIES  # what the last web message's consent allows (privacy.policy)
        for index, raw in enumerate(raws):
            try:
                if batch:
                    check_message_size(raw)
                msg = segment.normalize(raw, path_type=path_type, received=received, envelope=envelope)
                _fill_ip(msg, request.remote)
                verdict = self.gate.verdict(route.source.privacy, msg, request.headers)
                result = await ctx.identity.process(msg, jar, now_ms, None if verdict is ALLOW else verdict.consent)
                if not segment.has_identity(msg, result.device_id):
                    raise segment.Rejected("userId", "the message needs a userId, an anonymousId or context.device.id")
            except segment.Rejected as exc:
                ctx.metrics.events_rejected_by(exc.field).inc()
                rejected.append({"index": index, **exc.as_dict()})
                if ctx.trail is not None:
                    ctx.trail.rejected(route.name, raw, f"{exc.field}: {exc.message}", now_ms)
                continue
            except StoreUnavailable as exc:
                return self._unavailable(f"session store unavailable: {exc}", len(raws))
            if result.web:
                web_seen = True
                if result.device_id == jar.device_id:  # the cookies are this browser's, not another visitor's
                    web_ids = (msg.get("anonymousId"), msg.get("userId"))
                    web_cookies = verdict.cookies
            if result.started:
                ctx.metrics.sessions_started.inc()
            if result.mismatch:
                ctx.metrics.session_mismatches.inc()
            accepted.append(self._map(route, write_key, index, msg, result, now_ms, verdict))

        trail = ctx.trail
        if trail is not None:  # before the append: the worker may send the items before it returns
            for record in accepted:
                trail.record(route.name, record.msg, record.identity, record.items, record.dead,
                             _outcome(record.verdict), now_ms, record.session_id)
        try:
            accepted = await self._commit(accepted, rejected)
        except SpoolUnavailable as exc:
            if trail is not None:
                for record in accepted:
                    trail.mark(record.msg.get("messageId"), "not accepted: the spool was unavailable (503, the client retries)")
            return self._unavailable(f"spool unavailable: {exc}", len(accepted))
        # One increment per message type, not per message: the same totals for a batch of 20.
        by_type: dict[str, int] = {}
        for record in accepted:
            by_type[record.type] = by_type.get(record.type, 0) + 1
            self.gate.record(route.name, record.msg, record.device_id, record.verdict)
        for mtype, count in by_type.items():
            ctx.metrics.events_accepted_by(route.name, mtype).inc(count)

        if rejected and not accepted:
            first = rejected[0]
            response = tracking_error(400, f"{first['field']}: {first['message']}", rejected=rejected)
        elif rejected:
            response = tracking_json(200, {"success": True, "accepted": len(accepted), "rejected": rejected})
        else:
            response = tracking_json(200, {"success": True})
        if web_cookies == EXPIRE_COOKIES:
            set_cookies(response, self.expired)
        elif web_cookies == SET_COOKIES:
            if web_seen or jar.has_edge_cookies:
                set_cookies(response, ctx.identity.response_cookies(jar, now_ms))
            if web_seen:
                tracking_cookies(ctx.identity, response, *web_ids)
        return response

    async def _commit(self, accepted: list[Accepted], rejected: list[dict[str, Any]]) -> list[Accepted]:
        """One durable append for the whole request; returns what was stored.

        A message the JSON encoder cannot store (nested deeper than orjson's 254 levels, which
        the parser allows) fails the append with ValueError: then each message is stored on its
        own so only the offender is rejected. Hostile input only, so the slow path is fine.
        """
        if not accepted:
            return accepted
        spool = self.ctx.spool
        try:
            await spool.append([i for a in accepted for i in a.items], [d for a in accepted for d in a.dead])
            stored = accepted
        except ValueError:
            stored = []
            for record in accepted:
                try:
                    await spool.append(record.items, record.dead)
                    stored.append(record)
                except ValueError as exc:
                    self.ctx.metrics.events_rejected_by("message").inc()
                    if self.ctx.trail is not None:
                        self.ctx.trail.mark(record.msg.get("messageId"), f"rejected: message: cannot be stored: {exc}")
                    rejected.append({"index": record.index, "field": "message", "message": f"cannot be stored: {exc}"})
            rejected.sort(key=lambda r: r["index"])
        if self.ctx.wake_delivery is not None:
            self.ctx.wake_delivery()
        return stored

    def _unavailable(self, reason: str, count: int, message: str = "temporarily unable to queue events; retry") -> web.Response:
        """503 + Retry-After: the client keeps the events and retries; nothing was acknowledged."""
        if self.accepting:
            log.error("answering 503: %s", reason)
        self.ctx.metrics.events_rejected_by("unavailable").inc(count)
        return tracking_json(
            503,
            {"success": False, "message": message, "code": "unavailable"},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def _map(self, route: Route, write_key: str, index: int, msg: dict[str, Any], result: IdentityResult,
             now_ms: int, verdict: Verdict) -> Accepted:
        """Map one message (and, when configured, its session end/start events) to spool records,
        and keep the message itself for the source's Segment relay (the session events are
        edgeproxy's own, for Amplitude: Segment never saw them from the client).

        The privacy verdict governs Amplitude only: a withheld message is mapped to nothing (no
        item, no dead letter), an anonymous one is mapped from its anonymised copy. The relay
        gets the message as the client sent it (Segment enforces consent for its destinations)."""
        if result.session is not None:
            session_id: int | None = result.session.session_id
        else:
            session_id = parse_session_id(client_session_value(msg)[1])
        messages: list[tuple[dict[str, Any], int | None]] = [(msg, session_id)]
        sessions = self.ctx.settings.sessions
        key = result.device_id or default_device_id(msg)
        if sessions.session_events and result.started and key is not None and result.session is not None:
            start = session_message("start", sessions.session_start_event, key, result.session)
            messages.insert(0, (start, result.session.session_id))
            if result.ended is not None:
                end = session_message("end", sessions.session_end_event, key, result.ended)
                messages.insert(0, (end, result.ended.session_id))
        accepted = Accepted(index, msg["type"], [], [], msg, key, verdict, result, session_id)
        if route.mapper is not None and verdict.deliver:
            for message, sid in messages:
                device_id = result.device_id
                if verdict.anonymous:
                    message, device_id = self.gate.anonymous(message, key, sid, now_ms)
                items, dead = spool_records(route.mapper, message, device_id=device_id, session_id=sid,
                                            received_ms=now_ms, source=route.name)
                accepted.items.extend(items)
                accepted.dead.extend(dead)
                if dead:
                    self.ctx.metrics.mapping_refused.inc()
        if route.relays:
            accepted.items.append(relay_record(msg, write_key=write_key, device_id=result.device_id,
                                               session_id=session_id, received_ms=now_ms, source=route.name))
        return accepted


def _outcome(verdict: Verdict) -> str:
    """What the privacy rules made of an accepted message, for the trail."""
    if not verdict.deliver:
        return f"withheld from Amplitude: {verdict.reason}"
    return "anonymised" if verdict.anonymous else "accepted"


def _fill_ip(msg: dict[str, Any], remote: str | None) -> None:
    """Segment fills ``context.ip`` for client-side events; a server library's IP is not the user's."""
    if not remote or segment.library_name(msg) in segment.SERVER_LIBRARIES:
        return
    context = msg.setdefault("context", {})
    if context is None:
        context = msg["context"] = {}
    if not context.get("ip"):
        context["ip"] = remote
