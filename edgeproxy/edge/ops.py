"""Liveness, readiness and Prometheus metrics.

Liveness says the process answers; readiness says it can do its job right now, i.e. the
session store and the spool both answer (a load balancer should stop sending tracking calls
to a process whose spool cannot take them).
"""

from __future__ import annotations

import os
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from edgeproxy.metrics import Metrics

Check = Callable[[], Awaitable[bool]]


def ops_routes(*, healthz: str, readyz: str, metrics_path: str, checks: dict[str, Check], metrics: Metrics,
               refresh: Callable[[], Awaitable[None]] | None = None) -> list[web.RouteDef]:
    async def health(_: web.Request) -> web.Response:
        # The pid says which of several worker processes (`serve --workers N`) answered.
        return web.Response(body=orjson.dumps({"status": "ok", "pid": os.getpid()}), content_type="application/json")

    async def ready(_: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = bool(await check())
            except Exception:  # a failing dependency is "not ready", never a 500
                results[name] = False
        ok = all(results.values())
        body = {"status": "ready" if ok else "not ready", "checks": results}
        return web.Response(status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json")

    async def prometheus(_: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = metrics.content_type
        return resp

    return [web.get(healthz, health), web.get(readyz, ready), web.get(metrics_path, prometheus)]
