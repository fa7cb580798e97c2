"""A flood from one client address: 429 with Retry-After for that address only."""

from __future__ import annotations

import orjson

from edgeproxy.app import create_app
from edgeproxy.edge.flood import FloodGuard
from test_ingest import make_settings, track


def test_guard_allows_the_burst_then_the_rate():
    guard = FloodGuard(rate=10, burst=5)
    assert [guard.retry_after("a", 0.0) for _ in range(5)] == [0.0] * 5
    assert guard.retry_after("a", 0.0) > 0  # the 6th at once is refused...
    assert guard.retry_after("b", 0.0) == 0.0  # ...another address is unaffected
    assert guard.retry_after("a", 0.1) == 0.0  # one interval later there is room for one more
    assert guard.retry_after("a", 0.1) > 0


def test_guard_off_and_bounded():
    assert FloodGuard(rate=0, burst=1).retry_after("a", 0.0) == 0.0
    guard = FloodGuard(rate=1, burst=1, max_addresses=3)
    for n in range(10):
        guard.retry_after(f"ip-{n}", 0.0)
    assert len(guard._tat) == 3


async def test_flood_gets_429_with_retry_after(tmp_path, aiohttp_client):
    c = await aiohttp_client(create_app(make_settings(tmp_path, server__ip_rate_limit=1.0, server__ip_burst=3)))
    statuses = []
    for n in range(5):
        resp = await c.post("/_e/v1/t", data=orjson.dumps(track(messageId=f"f-{n}")))
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429, 429]
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["code"] == "rate_limited"
    metrics = await (await c.get("/metrics")).text()
    assert 'edgeproxy_events_rejected_total{reason="rate_limited"} 2.0' in metrics
