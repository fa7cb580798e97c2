"""Session start/end events (off by default): on rotation, on a new session, and by the idle sweep."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import orjson
from test_ingest import API_KEY, make_settings, track, wait_for

from edgeproxy.app import create_app
from edgeproxy.identity.session_events import session_message
from edgeproxy.identity.sessions import SessionState
from edgeproxy.identity.store import TouchRequest
from edgeproxy.segment import format_iso

HOUR_MS = 3600_000


def iso(ms: int) -> str:
    return format_iso(datetime.fromtimestamp(ms / 1000, timezone.utc))


def test_session_message_shape_and_stable_id():
    state = SessionState(session_id=1_700_000_000_000, last_event_ms=1_700_000_600_000, event_count=4,
                         user_id="u-1", first_seen=1_700_000_000_000, library="analytics.js", user_agent="UA")
    end = session_message("end", "session_end", "dev-1", state)
    assert end["type"] == "track" and end["event"] == "session_end"
    assert end["timestamp"] == "2023-11-14T22:23:20.000Z"  # the session's last event
    assert end["integrations"]["Actions Amplitude"]["session_id"] == state.session_id
    assert end["properties"] == {"session_id": state.session_id, "event_count": 4, "duration_ms": 600_000}
    assert end["userId"] == "u-1" and end["anonymousId"] == "dev-1"
    assert session_message("end", "session_end", "dev-1", state)["messageId"] == end["messageId"]
    start = session_message("start", "session_start", "dev-1", state)
    assert start["timestamp"] == "2023-11-14T22:13:20.000Z" and start["messageId"] != end["messageId"]


async def test_start_and_end_events_around_a_rotation(tmp_path, aiohttp_client, amp):
    settings = make_settings(tmp_path, amplitude__api_key=API_KEY, amplitude__endpoint_url=amp.base_url,
                             sessions__session_events=True)
    c = await aiohttp_client(create_app(settings))
    t0 = (int(time.time() * 1000) // 1000) * 1000 - 2 * HOUR_MS
    t1 = t0 + HOUR_MS  # an hour later: past the 30-minute timeout
    for n, t in enumerate((t0, t1)):
        body = track(messageId=f"rot-{n}", timestamp=iso(t), sentAt=None)
        del body["sentAt"]
        assert (await c.post("/_e/v1/t", data=orjson.dumps(body))).status == 200
    await wait_for(lambda: len(amp.ingested("httpapi")) == 5)
    events = amp.ingested("httpapi")
    assert [e["event_type"] for e in events] == ["session_start", "Signup Clicked", "session_end", "session_start", "Signup Clicked"]
    assert [e["session_id"] for e in events] == [t0, t0, t0, t1, t1]
    assert [e["time"] for e in events] == [t0, t0, t0, t1, t1]
    assert {e["device_id"] for e in events} == {"anon-0001-aaaa"}


async def test_off_by_default(tmp_path, aiohttp_client, amp):
    settings = make_settings(tmp_path, amplitude__api_key=API_KEY, amplitude__endpoint_url=amp.base_url)
    c = await aiohttp_client(create_app(settings))
    assert (await c.post("/_e/v1/t", data=orjson.dumps(track()))).status == 200
    await wait_for(lambda: len(amp.ingested("httpapi")) == 1)
    assert amp.ingested("httpapi")[0]["event_type"] == "Signup Clicked"


async def test_idle_sweep_ends_the_session_of_a_visitor_who_left(tmp_path, aiohttp_client, amp):
    settings = make_settings(tmp_path, amplitude__api_key=API_KEY, amplitude__endpoint_url=amp.base_url,
                             sessions__session_events=True, sessions__timeout=0.5)
    c = await aiohttp_client(create_app(settings))
    body = track(messageId="left-1")
    del body["timestamp"], body["sentAt"]  # event time = now
    assert (await c.post("/_e/v1/t", data=orjson.dumps(body))).status == 200
    await wait_for(lambda: [e["event_type"] for e in amp.ingested("httpapi")][-1:] == ["session_end"], timeout=15)
    events = amp.ingested("httpapi")
    assert [e["event_type"] for e in events] == ["session_start", "Signup Clicked", "session_end"]
    assert events[2]["session_id"] == events[1]["session_id"]
    assert events[2]["event_properties"]["event_count"] == 1
    # Claimed once: later sweeps do not end it again, and it is no longer a live session.
    await asyncio.sleep(1.0)
    assert [e["event_type"] for e in amp.ingested("httpapi")].count("session_end") == 1
    live = await (await c.get("/debug?format=json")).json()
    assert live["sessions"] == []


async def test_two_sweepers_on_one_redis_end_each_session_once(shared_redis, unique_prefix, monkeypatch):
    """Every process runs a sweeper; the store's atomic claim makes the cluster emit one end each."""
    from edgeproxy.config import Settings
    from edgeproxy.delivery.redis_queue import RedisQueue
    from edgeproxy.identity.redis_store import RedisSessionStore
    from edgeproxy.mapping import Mapper
    from edgeproxy import session_sweep
    from edgeproxy.session_sweep import SessionSweeper

    monkeypatch.setattr(session_sweep, "CLAIM_LIMIT", 20)  # many small claims, so the sweepers interleave

    settings = Settings()
    settings.sessions.session_events = True
    settings.sessions.timeout = 60.0
    t0 = int(time.time() * 1000) - 120_000  # idle for two minutes: past the timeout, inside the store's ttl
    mapper = Mapper(settings.amplitude.as_mapping_config(), strict_settings=False)
    handles = []
    for _ in range(2):  # two processes: their own connections to the store and to the queue
        store = RedisSessionStore.from_url(shared_redis, timeout_ms=60_000, prefix=unique_prefix)
        queue = RedisQueue.from_url(shared_redis, prefix=unique_prefix)
        await queue.open()
        handles.append((store, queue, SessionSweeper(store, mapper, queue, settings)))
    try:
        devices = [f"left-{i}" for i in range(300)]
        for i, device in enumerate(devices):
            _, state, _ = await handles[0][0].touch(device, TouchRequest(t0 + i, 60_000))
            assert state == SessionState(t0 + i, t0 + i, 1, None, t0 + i)
        rounds = [sweeper.run_once() for _ in range(3) for _, _, sweeper in handles]
        ended = await asyncio.gather(*rounds)
        assert sum(ended) == 300
        assert all(n > 0 for n in ended[:2]), f"both sweepers took part: {ended}"
        queued = await handles[0][1].stats()
        assert queued["depth"] == 300
        groups = await handles[0][1].due_groups()
        items = await handles[0][1].claim(groups[0].group_key, limit=1000, max_bytes=10**7)
        assert sorted(c.device_id for c in items) == sorted(devices)  # one end event per session
        assert {c.item["event_type"] for c in items} == {"session_end"}
    finally:
        for store, queue, _ in handles:
            await queue.close()
            await store.close()
