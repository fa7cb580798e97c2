"""create_app(settings): the one place where the components are wired together.

Order of routes matters: edgeproxy's own routes (tracking API, CDN, debug, ops) first, the
catch-all reverse proxy to the origin (or the demo site) last.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web

from edgeproxy import compiled, segment
from edgeproxy.cockpit.history import MinuteHistory
from edgeproxy.cockpit.trail import open_trail
from edgeproxy.config import Settings
from edgeproxy.delivery.queue import DeliveryQueue, describe, open_queue
from edgeproxy.delivery.targets import build_targets
from edgeproxy.delivery.worker import DeliveryWorker
from edgeproxy.edge.cdn import setup_cdn
from edgeproxy.edge.cockpit_views import CockpitViews
from edgeproxy.edge.debug import DebugViews
from edgeproxy.edge.forwarded import forwarded_middleware
from edgeproxy.edge.identity_cookies import ResetHandler, page_cookies
from edgeproxy.edge.ingest import IngestContext, IngestHandlers
from edgeproxy.edge.ops import ops_routes
from edgeproxy.edge.origin import setup_origin
from edgeproxy.edge.privacy_gate import PrivacyGate
from edgeproxy.forget import forget_person
from edgeproxy.identity.cookies import load_signing_keys
from edgeproxy.identity.service import IdentityService
from edgeproxy.identity.store import open_store
from edgeproxy.lifecycle import delivered_so_far, log_stopped, log_stopping
from edgeproxy.logs import access_timing
from edgeproxy.mapping import Mapper
from edgeproxy.metrics import Metrics
from edgeproxy.privacy.anonymous import anonymous_secret
from edgeproxy.session_sweep import SessionSweeper
from edgeproxy.sources import SourceTable

log = logging.getLogger("edgeproxy")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SPOOL = web.AppKey("spool", DeliveryQueue)
WORKER = web.AppKey("worker", DeliveryWorker)
IDENTITY = web.AppKey("identity", IdentityService)

# Room above Segment's 500 KB batch limit so oversize bodies get Segment's 400, not aiohttp's 413.
CLIENT_MAX_SIZE = segment.MAX_BATCH_BYTES + 64 * 1024


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    middlewares = [_count_requests(metrics)]
    if settings.server.trusted_proxies:
        middlewares.insert(0, forwarded_middleware(settings.server.trusted_proxies))
    if settings.server.access_log:
        middlewares.insert(0, access_timing)
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=middlewares)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    signing_keys = load_signing_keys(settings)
    store = open_store(settings)
    spool = open_queue(settings, metrics)
    identity = IdentityService(settings, store, signing_keys)
    sources = SourceTable(settings)
    # The server never refuses events for settings the reference checks but that do not affect sending
    # (secret_key is only for Amplitude's GDPR API); `check-config` reports real problems.
    mapper = Mapper(settings.amplitude.as_mapping_config(), strict_settings=False)
    trail = open_trail(settings.debug.trail_size)
    worker = DeliveryWorker(spool, settings, metrics, targets=build_targets(settings, sources), trail=trail)
    sweeper = SessionSweeper(store, mapper, spool, settings, wake=worker.wake) if settings.sessions.session_events else None

    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[SPOOL] = spool
    app[WORKER] = worker
    app[IDENTITY] = identity

    prefix = settings.server.prefix
    privacy = PrivacyGate(metrics, anonymous_secret(signing_keys[0]))
    ingest = IngestHandlers(IngestContext(settings, identity, mapper, spool, metrics, wake_delivery=worker.wake,
                                          sources=sources, privacy=privacy, trail=trail))
    app.add_routes(ingest.routes(prefix))
    setup_cdn(app, settings)

    async def refresh_metrics() -> None:
        stats = await spool.stats()
        metrics.spool_depth.set(stats.get("depth", 0))

    app.add_routes(
        ops_routes(
            healthz=settings.server.healthz_path,
            readyz=settings.server.readyz_path,
            metrics_path=settings.server.metrics_path,
            checks={"session_store": store.ping, "spool": spool.ping},
            metrics=metrics,
            refresh=refresh_metrics,
        )
    )
    debug = DebugViews(
        settings,
        signing_keys,
        store=store,
        spool=spool,
        identity=identity,
        sink=worker.sink if any(t.sink for t in worker.targets.values()) else None,
        counters=lambda: _counters(metrics),
        privacy_log=privacy.log,
        forget=lambda **person: forget_person(**person, store=store, spool=spool, sources=sources,
                                              privacy_log=privacy.log),
        trail=trail,
        live=lambda: cockpit.sample(),
    )
    cockpit = CockpitViews(debug, trail, MinuteHistory(), metrics.registry, wake_delivery=worker.wake)
    app.add_routes(cockpit.routes())
    app.add_routes(debug.routes())

    app.add_routes(ResetHandler(identity, settings).routes(prefix))
    # cookies_before_consent = false: an HTML page sets no identifier cookie; the first event
    # that carries consent does (edge/ingest.py, privacy/policy.py).
    setup_origin(app, settings, on_html=(lambda request, response: page_cookies(identity, request, response))
                 if settings.privacy.cookies_before_consent else None)

    async def start(_: web.Application) -> None:
        await spool.open()
        await worker.start()
        await cockpit.start()
        if sweeper is not None:
            await sweeper.start()
        log.info(
            "edgeproxy ready: prefix %s, sessions %s, spool %s, delivery %s; hot path %s",
            prefix,
            "memory" if settings.sessions.store == "memory" else "redis",
            describe(settings),
            ", ".join(f"{t.name}{' -> local sink (no api_key)' if t.sink else ''}" for t in worker.targets.values())
            or "none (amplitude.enabled = false and no relay_url)",
            compiled.status(),
        )

    async def stop(_: web.Application) -> None:
        if sweeper is not None:
            await sweeper.stop()
        before = delivered_so_far(metrics)
        await worker.stop(settings.server.shutdown_grace)
        await log_stopped(spool, store, delivered=delivered_so_far(metrics) - before,
                          memory_store=settings.sessions.store == "memory")
        await spool.close()
        await store.close()

    async def stop_accepting(_: web.Application) -> None:
        ingest.stop_accepting()  # SIGTERM: 503 on ingest while the worker flushes (on_cleanup)
        await cockpit.close()  # live /debug streams end
        log_stopping(settings.server.shutdown_grace)

    app.on_startup.append(start)
    app.on_shutdown.append(stop_accepting)
    app.on_cleanup.append(stop)
    return app


def _count_requests(metrics: Metrics) -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.requests_by(route, str(exc.status)).inc()
            raise
        except Exception:
            metrics.requests_by(route, "500").inc()
            raise
        metrics.requests_by(route, str(response.status)).inc()
        return response

    return middleware


def _counters(metrics: Metrics) -> dict[str, float | int]:
    """Flat view of the Prometheus counters for /debug."""
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                value = int(sample.value) if float(sample.value).is_integer() else sample.value  # counts read as counts
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = value
    return out
